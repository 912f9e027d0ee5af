"""An admitted request's call to an upstream provider: its key, a call whose failure settles
the request, and the provider's usage on the request's account."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

from services.edge.backends import Backends
from services.edge.errors import APIError
from services.edge.governance import Admission
from services.edge.providers.base import dump
from services.edge.providers.credentials import ProviderKey

T = TypeVar("T")

SSE_HEADERS = {"cache-control": "no-cache"}


def data_frame(obj: dict[str, Any]) -> bytes:
    """One server-sent event carrying `obj` as its data."""
    return b"data: " + dump(obj) + b"\n\n"


async def provider_key(backends: Backends, admission: Admission) -> ProviderKey:
    """The organization's key for the admitted model's provider (settles when there is none)."""
    return await guarded(
        admission, backends.provider_key(admission.principal.org_id, admission.target)
    )


async def guarded(admission: Admission, call: Awaitable[T]) -> T:
    """`call`'s result; its failure settles the request (refused below 500, else failed) and is
    raised with the request's headers. A client gone meanwhile is settled as cancelled. What
    `call` does is part of the request's generation (its span's children)."""
    try:
        with admission.generating():
            return await call
    except APIError as exc:
        await admission.settle("rejected" if exc.status < 500 else "error")
        raise admission.error(exc) from None
    except BaseException:
        admission.settle("cancelled")
        raise


def finish_reasons(obj: dict[str, Any]) -> list[str]:
    """The finish reasons of an OpenAI chat object (an answer or a stream's chunk)."""
    choices = obj.get("choices")
    if not isinstance(choices, list):
        return []
    reasons = (c.get("finish_reason") for c in choices if isinstance(c, dict))
    return [r for r in reasons if isinstance(r, str) and r]


def describe(admission: Admission, answer: dict[str, Any]) -> None:
    """An OpenAI chat answer's finish reasons and model, for the request's trace."""
    admission.finish_reasons = finish_reasons(answer)
    if isinstance(model := answer.get("model"), str):
        admission.response_model = model


def account(admission: Admission, prompt: Any, completion: Any) -> None:
    """Puts the provider's own token counts on the request."""
    admission.prompt_tokens = int(prompt or 0)
    admission.completion_tokens = int(completion or 0)
    if admission.completion_tokens:
        admission.output_started()
