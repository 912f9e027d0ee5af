"""The policy an API key carries besides its secret: quota, allowed models and lifetimes.

Plain values and their checks; the store persists them, metering enforces the quota, and
`model_allowed` is the model rule `Authenticate` applies.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace

from services.common.errors import InvalidArgument
from services.common.quota import Quota

# Bounds that keep one key's policy small enough to read on every request.
MAX_ENTRIES = 100
MAX_MODEL_LEN = 200
# A hundred years: long enough for "never" in practice, short enough for datetime arithmetic.
MAX_SECONDS = 100 * 365 * 86400


def check_quota(quota: Quota | None) -> Quota:
    """The quota with its period normalized; `InvalidArgument` naming the bad field."""
    if quota is None:
        return Quota()
    # Operators type periods by hand: " Month" means "month".
    period = quota.budget_period.strip().lower()
    return replace(quota, budget_period=period).validated("quota")


def check_seconds(value: int, param: str) -> int:
    """A duration in seconds between 0 and `MAX_SECONDS`."""
    if not 0 <= value <= MAX_SECONDS:
        raise InvalidArgument(f"{param} must be between 0 and {MAX_SECONDS}", param=param)
    return value


def check_models(values: Iterable[str]) -> tuple[str, ...]:
    """Allowed model names, stripped and deduplicated in order; empty means every model."""
    out: list[str] = []
    for raw in values:
        model = raw.strip()
        if not model or len(model) > MAX_MODEL_LEN or not model.isprintable():
            raise InvalidArgument(
                f"allowed_models entries must be 1 to {MAX_MODEL_LEN} printable characters",
                param="allowed_models",
            )
        if model not in out:
            out.append(model)
    if len(out) > MAX_ENTRIES:
        raise InvalidArgument(
            f"allowed_models takes at most {MAX_ENTRIES} entries", param="allowed_models"
        )
    return tuple(out)


def model_allowed(model: str, allowed: Sequence[str]) -> bool:
    """True when `model` is an entry or an entry pinned to a digest (`entry@sha256:...`).

    An empty list allows every model, and an empty `model` is not checked (the caller did not
    name one).
    """
    if not allowed or not model:
        return True
    return any(model == entry or model.startswith(entry + "@") for entry in allowed)


def dump_list(values: Sequence[str]) -> str:
    return json.dumps(list(values))


def load_list(text: str | None) -> tuple[str, ...]:
    return tuple(json.loads(text)) if text else ()
