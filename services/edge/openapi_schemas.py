"""The schemas of the OpenAPI document (services.edge.openapi) that no pydantic model gives: proto
messages as json_format reads and writes them, derived from their descriptors; compact schemas of
the bodies that the edge checks in part and passes on; the answers and errors.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from services.pb.metering.v1 import metering_pb2

REF = "#/components/schemas/{model}"
JSON = "application/json"
SSE = "text/event-stream"

_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}
_INT32 = (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_UINT32)


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def obj(
    properties: dict[str, Any], required: tuple[str, ...] = (), *, closed: bool = False
) -> dict[str, Any]:
    """An object schema; `closed` when the server refuses properties it does not name."""
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    if closed:
        out["additionalProperties"] = False
    return out


def list_of(item: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """OpenAI's list envelope, `{"object": "list", "data": [...]}`."""
    props = {"object": {"const": "list"}, "data": {"type": "array", "items": item}, **extra}
    return obj(props, ("object", "data"))


# Protobuf messages as JSON (json_format, proto field names) ----------------------------------


def proto_name(desc: Descriptor) -> str:
    """A message's component name: its full name without the `sluice.` root, so that messages
    of the same name in two services (`auth.v1.Quota`, `metering.v1.Quota`) stay apart."""
    return desc.full_name.removeprefix("sluice.")


def _field_schema(field: FieldDescriptor, components: dict[str, Any]) -> dict[str, Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value = field.message_type.fields_by_name["value"]
        return {"type": "object", "additionalProperties": _value_schema(value, components)}
    schema = _value_schema(field, components)
    return {"type": "array", "items": schema} if field.is_repeated else schema


def _value_schema(field: FieldDescriptor, components: dict[str, Any]) -> dict[str, Any]:
    cpp = field.cpp_type
    if cpp == FieldDescriptor.CPPTYPE_MESSAGE:
        return proto_ref(field.message_type, components)
    if cpp == FieldDescriptor.CPPTYPE_ENUM:
        return {"type": "string", "enum": [v.name for v in field.enum_type.values]}
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return {"type": "boolean"}
    if cpp in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return {"type": "number"}
    if cpp in _INT_RANGES:
        low, high = _INT_RANGES[cpp]
        number = {"type": "integer", "minimum": low, "maximum": high}
        if cpp in _INT32:
            return number
        # json_format writes a 64-bit integer that a double cannot hold exactly as a string,
        # and reads either.
        return {"anyOf": [number, {"type": "string", "pattern": "^-?[0-9]+$"}]}
    if field.type == FieldDescriptor.TYPE_BYTES:
        return {"type": "string", "contentEncoding": "base64"}
    return {"type": "string"}


def proto_schema(
    desc: Descriptor, components: dict[str, Any], omit: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A message as json_format reads and writes it with proto field names: every field
    optional, no other property (parsing refuses unknown fields; printing adds none)."""
    props = {f.name: _field_schema(f, components) for f in desc.fields if f.name not in omit}
    return obj(props, closed=True)


def proto_ref(desc: Descriptor, components: dict[str, Any]) -> dict[str, str]:
    """A `$ref` to the message's component, added (with the messages it holds) when missing."""
    name = proto_name(desc)
    if name not in components:
        components[name] = {}  # a placeholder first: messages may refer to themselves
        components[name] = proto_schema(desc, components)
    return ref(name)


# Request bodies with no pydantic model ------------------------------------------------------

_TEXT = {"type": "string", "minLength": 1}
_MESSAGES = {"type": "array", "minItems": 1, "items": {"type": "object"}}

# Chat for `openai/<model>` and `anthropic/<model>`: forwarded (or translated) whole, the
# provider validates what the edge does not need.
UPSTREAM_CHAT = obj(
    {
        "model": {"type": "string", "pattern": "^(openai|anthropic)/.+"},
        "messages": _MESSAGES,
        "max_tokens": nullable({"type": "integer", "minimum": 1}),
        "max_completion_tokens": nullable({"type": "integer", "minimum": 1}),
        "stream": nullable({"type": "boolean"}),
    },
    ("model", "messages"),
)

_TOKENS = {"type": "array", "items": {"type": "integer", "minimum": 0}}
EMBEDDINGS = obj(
    {
        "model": {**_TEXT, "description": "openai/<embedding model>"},
        "input": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}},
                _TOKENS,
                {"type": "array", "items": _TOKENS},
            ]
        },
        "encoding_format": {"type": "string", "enum": ["float", "base64"]},
        "dimensions": {"type": "integer", "minimum": 1},
        "user": {"type": "string"},
    },
    ("model", "input"),
)

# The fields the Responses route checks itself (services.edge.openai.responses_translate);
# openai/<model> takes the rest of OpenAI's fields, hosted models refuse them by name.
RESPONSES = obj(
    {
        "model": _TEXT,
        "input": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
        "instructions": nullable({"type": "string"}),
        "max_output_tokens": nullable({"type": "integer", "minimum": 1}),
        "temperature": nullable({"type": "number", "minimum": 0, "maximum": 2}),
        "top_p": nullable({"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
        "tools": {"type": "array", "items": {"type": "object"}},
        "tool_choice": {"anyOf": [{"enum": ["none", "auto", "required"]}, {"type": "object"}]},
        "parallel_tool_calls": nullable({"type": "boolean"}),
        "text": {"type": "object"},
        "reasoning": nullable({"type": "object"}),
        "stream": nullable({"type": "boolean"}),
        "stream_options": nullable({"type": "object"}),
        "store": nullable({"type": "boolean"}),
        "previous_response_id": nullable({"type": "string", "pattern": "^resp_"}),
        "metadata": nullable(
            {
                "type": "object",
                "maxProperties": 16,
                "propertyNames": {"maxLength": 64},
                "additionalProperties": {"type": "string", "maxLength": 512},
            }
        ),
        "user": nullable({"type": "string"}),
        "safety_identifier": nullable({"type": "string"}),
    },
    ("model", "input"),
)

# Anthropic's Messages API: the edge checks model, max_tokens and messages; the rest is the
# provider's.
MESSAGES = obj(
    {
        "model": {**_TEXT, "description": "anthropic/claude-... or claude-..."},
        "max_tokens": {"type": "integer", "minimum": 1},
        "messages": _MESSAGES,
        "system": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
        "stream": {"type": "boolean"},
    },
    ("model", "max_tokens", "messages"),
)
COUNT_TOKENS = obj({"model": _TEXT, "messages": _MESSAGES}, ("model", "messages"))

# Admin bodies that are not one proto message (services.edge.admin).
ORG_CREATE = obj({"name": _TEXT, "plan": {"type": "string"}}, ("name",))
PROJECT_CREATE = obj(
    {"org": _TEXT, "name": _TEXT, "quota": ref("metering.v1.Quota")}, ("org", "name")
)
POLICY_UPDATE = obj({"plan": {"type": "string"}, "quota": ref("metering.v1.Quota")})


# Answers -------------------------------------------------------------------------------------

_ID = {"type": "string"}
_INT = {"type": "integer"}
ANSWERS: dict[str, dict[str, Any]] = {
    "ChatCompletion": obj(
        {
            "id": _ID,
            "object": {"const": "chat.completion"},
            "created": _INT,
            "model": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object"}},
            "usage": {"type": "object"},
        },
        ("id", "object", "created", "model", "choices"),
    ),
    "Completion": obj(
        {
            "id": _ID,
            "object": {"const": "text_completion"},
            "created": _INT,
            "model": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object"}},
            "usage": {"type": "object"},
        },
        ("id", "object", "created", "model", "choices"),
    ),
    "EmbeddingList": list_of({"type": "object"}, model={"type": "string"}),
    "Response": obj(
        {
            "id": {"type": "string", "pattern": "^resp_"},
            "object": {"const": "response"},
            "status": {"type": "string"},
            "output": {"type": "array", "items": {"type": "object"}},
        },
        ("id", "object"),
    ),
    "ResponseDeleted": obj(
        {"id": _ID, "object": {"type": "string"}, "deleted": {"type": "boolean"}},
        ("id", "deleted"),
    ),
    "Message": obj(
        {"id": _ID, "type": {"const": "message"}, "content": {"type": "array"}},
        ("id", "type", "content"),
    ),
    "TokenCount": obj({"input_tokens": _INT}, ("input_tokens",)),
    "Model": obj(
        {
            "id": _ID,
            "object": {"const": "model"},
            "created": _INT,
            "owned_by": {"type": "string"},
        },
        ("id", "object", "created", "owned_by"),
    ),
    "Health": obj({"status": {"type": "string"}}, ("status",)),
    "Readiness": obj(
        {
            "status": {"enum": ["ready", "not_ready", "draining"]},
            "services": {"type": "object", "additionalProperties": {"type": "string"}},
            "engines": {},
        },
        ("status", "services"),
    ),
    "Error": obj(
        {
            "error": obj(
                {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
                ("message", "type", "param", "code"),
            )
        },
        ("error",),
    ),
    "AnthropicError": obj(
        {
            "type": {"const": "error"},
            "error": obj(
                {"type": {"type": "string"}, "message": {"type": "string"}}, ("type", "message")
            ),
        },
        ("type", "error"),
    ),
}


def with_policy(desc: Descriptor, components: dict[str, Any]) -> dict[str, Any]:
    """An org or project as the admin API shows it: the message and its metering policy."""
    schema = proto_schema(desc, components)
    schema["properties"]["policy"] = proto_ref(metering_pb2.Policy.DESCRIPTOR, components)
    return schema


# One server-sent event, as OpenAPI 3.2 describes the items of an event stream.
SSE_EVENT = obj(
    {
        "event": {"type": "string"},
        "data": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer", "minimum": 0},
    },
    ("data",),
)
