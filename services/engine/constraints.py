"""Grammar-constrained decoding with llguidance: response formats compiled to grammars, one
matcher per constrained sequence, and each step's token masks for all constrained rows of a batch
computed together, on a worker thread while ONNX Runtime computes the step.

JSON is generated compactly with the separators `", "` and `": "` (the layout `json.dumps`
writes), never with free whitespace: a small model sampled at temperature 1 would otherwise
wander into runs of spaces and newlines. Properties come in the order of the schema's
`properties`. `strict` closes every object schema that does not say otherwise
(`additionalProperties: false`), so no property beyond the schema's can appear; members of
`allOf` are left open, since closing each part would forbid the other parts' properties.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import llguidance
import llguidance.numpy
import numpy as np

from services.common.errors import InvalidArgument

log = logging.getLogger(__name__)

# llguidance's JSON layout options ("x-guidance" in a schema).
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_OBJECT: dict[str, Any] = {"type": "object"}

# Keys whose value is one subschema, a list of them, or a map of name -> subschema.
_ONE = ("items", "additionalProperties", "not", "contains", "if", "then", "else")
_LIST = ("anyOf", "oneOf", "prefixItems")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def parse_schema(text: str, param: str) -> dict[str, Any]:
    """A JSON Schema given as JSON text; an empty text is any JSON object."""
    if not text.strip():
        return dict(ANY_OBJECT)
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{param} is not valid JSON: {exc}", param=param) from None
    if not isinstance(schema, dict):
        raise InvalidArgument(f"{param} must be a JSON Schema object", param=param)
    return schema


def closed(schema: Any) -> Any:
    """A copy of `schema` in which every object schema without `additionalProperties` (or
    `patternProperties`) forbids properties beyond its own."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _ONE:
            out[key] = closed(value)
        elif key in _LIST and isinstance(value, list):
            out[key] = [closed(v) for v in value]
        elif key in _MAP and isinstance(value, dict):
            out[key] = {name: closed(v) for name, v in value.items()}
        else:
            out[key] = value
    kind = schema.get("type")
    is_object = kind == "object" or (isinstance(kind, list) and "object" in kind)
    if (is_object or "properties" in schema) and not (
        "additionalProperties" in schema or "patternProperties" in schema
    ):
        out["additionalProperties"] = False
    return out


def json_schema(schema: dict[str, Any], strict: bool) -> dict[str, Any]:
    """The schema as llguidance compiles it: closed when strict, with the compact layout."""
    out = closed(schema) if strict else dict(schema)
    out["x-guidance"] = dict(JSON_LAYOUT)
    return out


def json_grammar(schema: dict[str, Any], strict: bool) -> str:
    """An llguidance grammar for one JSON value of `schema`."""
    return str(
        llguidance.LLMatcher.grammar_from_json_schema(json.dumps(json_schema(schema, strict)))
    )


def lark_grammar(text: str) -> str:
    return str(llguidance.LLMatcher.grammar_from_lark(text))


class Grammars:
    """One model's grammar compiler: its llguidance tokenizer and the grammars compiled lately.

    Compiling can take milliseconds for a large schema; clients tend to send the same schema
    again, so compiled matchers are kept (by grammar text) and each request gets a copy.
    """

    def __init__(self, tokenizer: llguidance.LLTokenizer, cache_size: int = 64) -> None:
        self.tokenizer = tokenizer
        self.cache_size = cache_size
        self._cache: collections.OrderedDict[str, llguidance.LLMatcher] = collections.OrderedDict()
        self._lock = threading.Lock()

    def matcher(self, grammar: str, param: str) -> llguidance.LLMatcher:
        """A fresh matcher for `grammar`; a grammar that does not compile is an InvalidArgument
        naming `param`. Safe to call from several threads (compiling drops the GIL)."""
        with self._lock:
            template = self._cache.get(grammar)
            if template is not None:
                self._cache.move_to_end(grammar)
                return template.deep_copy()
        template = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if template.is_error():
            raise InvalidArgument(f"{param}: {template.get_error()}", param=param)
        for warning in template.get_grammar_warnings():
            log.debug("grammar for %s: %s", param, warning)
        with self._lock:
            self._cache[grammar] = template
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return template.deep_copy()


class MaskBatch:
    """The token masks of one step's constrained rows, row = batch slot, as the sorted ids of
    the tokens each row may sample.

    `start` hands the matchers to llguidance's parallel mask filler on a worker thread and
    returns at once; the worker then turns each filled bitmask row into token ids. The scheduler
    runs the ONNX Runtime step meanwhile (it releases the GIL) and calls `wait` before it
    samples. Plain rows are never touched.
    """

    def __init__(self, vocab_size: int, max_batch: int, tokenizer_vocab: int) -> None:
        self.vocab = min(vocab_size, tokenizer_vocab)
        self.bitmask = llguidance.numpy.allocate_token_bitmask(max_batch, tokenizer_vocab)
        self._allowed: dict[int, np.ndarray] = {}
        self._bit = np.arange(32, dtype=np.int64)
        self._executor = llguidance.LLExecutor()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="masks")
        self._pending: Future[None] | None = None
        # Time spent filling masks on the worker, and how often: the benchmark reads these.
        self.fill_s = 0.0
        self.fills = 0

    def start(self, rows: list[tuple[llguidance.LLMatcher, int]]) -> None:
        self.wait()
        self._allowed = {}
        if rows:
            self._pending = self._worker.submit(self._fill, rows)

    def _fill(self, rows: list[tuple[llguidance.LLMatcher, int]]) -> None:
        start = time.perf_counter()
        llguidance.numpy.fill_next_token_bitmask_par(self._executor, rows, self.bitmask)
        for _, row in rows:
            self._allowed[row] = self._ids(row)
        self.fill_s += time.perf_counter() - start
        self.fills += 1

    def _ids(self, row: int) -> np.ndarray:
        """The set bits of one bitmask row as token ids: only the non-zero words are
        unpacked, so a position that allows a few tokens costs next to nothing."""
        words = self.bitmask[row]
        nonzero = np.flatnonzero(words)
        bits = np.unpackbits(words[nonzero].view(np.uint8), bitorder="little").reshape(-1, 32)
        ids = (nonzero[:, None] * 32 + self._bit)[bits.astype(bool)]
        return ids[ids < self.vocab]

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def allowed(self, row: int) -> np.ndarray:
        """The token ids row `row` may sample next, ascending (after `wait`)."""
        return self._allowed.get(row, np.empty(0, dtype=np.int64))

    def close(self) -> None:
        self.wait()
        self._worker.shutdown(wait=True)
