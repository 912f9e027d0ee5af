"""The limits of one scope (a key, a project, an organization): auth stores a key's, metering
enforces every scope's. One type and one check, so both services agree on what is valid."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, TypeVar

from google.protobuf.message import Message

from services.common.errors import InvalidArgument

_M = TypeVar("_M", bound=Message)

BUDGET_PERIODS = ("day", "month", "none")
# The protos carry these as int64.
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Quota:
    """Limits of one scope; 0 means no limit of that kind."""

    rpm: int = 0
    tpm: int = 0
    max_concurrent: int = 0
    budget_tokens: int = 0
    budget_period: str = "none"

    def validated(self, param: str) -> Quota:
        """This quota with "" read as "none"; `InvalidArgument` names `param`.field when wrong."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and not 0 <= value <= INT64_MAX:
                raise InvalidArgument(
                    f"{param}.{f.name} must be a non-negative integer", param=f"{param}.{f.name}"
                )
        period = self.budget_period or "none"
        if period not in BUDGET_PERIODS:
            raise InvalidArgument(
                f"{param}.budget_period must be one of {', '.join(BUDGET_PERIODS)}",
                param=f"{param}.budget_period",
            )
        return replace(self, budget_period=period)


def quota_from_proto(message: Any) -> Quota:
    """A `Quota` from either service's proto `Quota` message (their fields are the same)."""
    return Quota(**{f.name: getattr(message, f.name) for f in fields(Quota)})


def quota_to_proto(quota: Quota, message_type: type[_M]) -> _M:
    """`quota` as a proto `Quota` message of the given service."""
    return message_type(**asdict(quota))
