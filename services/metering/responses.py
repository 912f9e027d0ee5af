"""The stored responses of the Responses API: kept per organization for a retention period.

The edge stores the responses of hosted and Anthropic models here (OpenAI keeps its own), so that
a follow-up naming a `previous_response_id` continues the conversation and `GET` / `DELETE
/v1/responses/{id}` work. Every read and delete is keyed by (organization, response id): one
organization's id never finds another's response. A response past its `expires_ms` is gone at
once for every read, and `expire` (run by the sweeper) deletes its row later. The bodies are
JSON documents that only the edge interprets; this module checks that they are JSON of the
expected kind and bounded in size, nothing more.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from sqlalchemy import and_, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.metering.models import stored_responses
from services.metering.transactions import write_transaction

TABLE = stored_responses
DEFAULT_RETENTION_S = 30 * 86_400.0
# Below the gRPC message limit of every service (16 MiB), with room for the other fields.
MAX_STORED_BYTES = 12 * 1024 * 1024
MAX_ID_CHARS = 100


@dataclass(frozen=True)
class StoredResponse:
    org_id: str
    response_id: str
    project_id: str = ""
    key_id: str = ""
    model: str = ""
    response_json: str = "{}"
    input_items_json: str = "[]"
    conversation_json: str = "[]"
    created_ms: int = 0
    expires_ms: int = 0

    @property
    def size(self) -> int:
        return sum(
            len(part.encode())
            for part in (self.response_json, self.input_items_json, self.conversation_json)
        )


def _check_json(text: str, kind: type, param: str) -> None:
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidArgument(f"{param} is not JSON", param=param) from None
    if not isinstance(value, kind):
        raise InvalidArgument(f"{param} must be a JSON {kind.__name__}", param=param)


def _check_ids(org_id: str, response_id: str) -> None:
    if not org_id:
        raise InvalidArgument("org_id is required", param="org_id")
    if not response_id or len(response_id) > MAX_ID_CHARS:
        raise InvalidArgument(
            f"response_id must be 1 to {MAX_ID_CHARS} characters", param="response_id"
        )


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", code="not_found")


def _from_row(row: Mapping[Any, Any], include_items: bool) -> StoredResponse:
    stored = StoredResponse(**{name: row[name] for name in _FIELDS})
    if not include_items:
        stored = replace(stored, input_items_json="", conversation_json="")
    return stored


class ResponseStore:
    """Put, get and delete by (organization, response id); expiry by `clock` (unix seconds)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        retention_s: float = DEFAULT_RETENTION_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if retention_s <= 0:
            raise ValueError("retention_s must be positive")
        self._engine = engine
        self._clock = clock
        self.retention_s = retention_s

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def put(self, response: StoredResponse) -> StoredResponse:
        """Stores a new response, stamped now and expiring after the retention period."""
        _check_ids(response.org_id, response.response_id)
        _check_json(response.response_json, dict, "response_json")
        _check_json(response.input_items_json, list, "input_items_json")
        _check_json(response.conversation_json, list, "conversation_json")
        if response.size > MAX_STORED_BYTES:
            raise InvalidArgument(
                f"a stored response holds at most {MAX_STORED_BYTES} bytes", param="response"
            )
        now = self._now_ms()
        stored = replace(response, created_ms=now, expires_ms=now + int(self.retention_s * 1000))
        try:
            async with write_transaction(self._engine, write_first=True) as conn:
                await conn.execute(TABLE.insert().values(**asdict(stored)))
        except IntegrityError:
            raise AlreadyExists(
                f"a response with id '{response.response_id}' already exists",
                param="response_id",
            ) from None
        return stored

    def _key(self, org_id: str, response_id: str) -> Any:
        return and_(
            TABLE.c.org_id == org_id,
            TABLE.c.response_id == response_id,
            TABLE.c.expires_ms > self._now_ms(),
        )

    async def get(
        self, org_id: str, response_id: str, *, include_items: bool = False
    ) -> StoredResponse:
        """The organization's response with that id; NotFound when there is none (any more)."""
        _check_ids(org_id, response_id)
        async with self._engine.connect() as conn:
            row = (
                (await conn.execute(select(TABLE).where(self._key(org_id, response_id))))
                .mappings()
                .first()
            )
        if row is None:
            raise _not_found(response_id)
        return _from_row(row, include_items)

    async def delete(self, org_id: str, response_id: str) -> None:
        """Deletes the organization's response with that id; NotFound when there is none."""
        _check_ids(org_id, response_id)
        async with write_transaction(self._engine, write_first=True) as conn:
            result = await conn.execute(delete(TABLE).where(self._key(org_id, response_id)))
        if not result.rowcount:
            raise _not_found(response_id)

    async def expire(self) -> int:
        """Deletes every response past its retention; returns how many (the sweeper's job)."""
        async with write_transaction(self._engine, write_first=True) as conn:
            result = await conn.execute(delete(TABLE).where(TABLE.c.expires_ms <= self._now_ms()))
        return int(result.rowcount or 0)


_FIELDS = tuple(StoredResponse.__dataclass_fields__)
