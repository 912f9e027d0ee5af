"""Turning a `GenerateRequest` into a scheduled sequence and its stream of events.

Validation (model, context length, sampling ranges) happens here, before anything is queued, so
that a bad request fails with a clear error and never touches the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from services.common.errors import InvalidArgument
from services.engine.registry import ModelEntry, ModelRegistry
from services.engine.sampling import Sampler
from services.engine.scheduler import Delivery, Event, Scheduler, Sequence, deliver_now
from services.engine.text import StopMatcher, TextCodec
from services.pb.engine.v1 import engine_pb2


@dataclass
class HostedModel:
    entry: ModelEntry
    codec: TextCodec
    scheduler: Scheduler
    execution_provider: str
    default_max_tokens: int = 0  # SLUICE_ENGINE_DEFAULT_MAX_TOKENS

    def info(self) -> engine_pb2.ModelInfo:
        e = self.entry
        return engine_pb2.ModelInfo(
            name=e.name,
            digest=e.digest,
            context_length=e.context_length,
            owned_by="sluice",
            created=e.created,
            aliases=list(e.aliases),
            variant=e.variant,
            execution_provider=self.execution_provider,
            provider="sluice",
            default_max_tokens=self.default_max_tokens,
        )


class Generator:
    """The engine's domain API, called by the thin gRPC servicer."""

    def __init__(
        self,
        registry: ModelRegistry,
        models: dict[str, HostedModel],
        default_max_tokens: int = 0,
    ) -> None:
        self.registry = registry
        self.models = models
        # Small models can loop until the context is full; an operator cap keeps a request
        # without max_tokens from running for minutes.
        self.default_max_tokens = default_max_tokens

    def resolve(self, ref: str) -> HostedModel:
        return self.models[self.registry.resolve(ref).name]

    def prompt_tokens(self, model: HostedModel, req: engine_pb2.GenerateRequest) -> list[int]:
        which = req.WhichOneof("input")
        if which == "messages":
            if not req.messages.messages:
                raise InvalidArgument("messages must not be empty", param="messages")
            text = model.codec.render_chat([(m.role, m.content) for m in req.messages.messages])
            return model.codec.encode(text)
        if which == "prompt":
            ids = model.codec.encode(req.prompt)
            if not ids:
                raise InvalidArgument("prompt must not be empty", param="prompt")
            return ids
        raise InvalidArgument("either messages or prompt is required", param="messages")

    def _sampler(self, req: engine_pb2.GenerateRequest) -> Sampler:
        s = req.sampling
        temperature = s.temperature if s.HasField("temperature") else 1.0
        top_p = s.top_p if s.HasField("top_p") else 1.0
        top_k = s.top_k if s.HasField("top_k") else 0
        if not 0.0 <= temperature <= 2.0:
            raise InvalidArgument("temperature must be between 0 and 2", param="temperature")
        if not 0.0 < top_p <= 1.0:
            raise InvalidArgument("top_p must be in (0, 1]", param="top_p")
        if top_k < 0:
            raise InvalidArgument("top_k must not be negative", param="top_k")
        seed = s.seed if s.HasField("seed") else None
        # Seeds may be negative in OpenAI's API; numpy wants a non-negative integer.
        return Sampler(temperature, top_p, top_k, None if seed is None else seed % 2**64)

    async def generate(
        self, req: engine_pb2.GenerateRequest
    ) -> AsyncIterator[engine_pb2.GenerateResponse]:
        model = self.resolve(req.model)
        prompt = self.prompt_tokens(model, req)
        context = model.entry.context_length
        if req.max_context > 0:
            # The organization's plan caps the context below the model's.
            context = min(context, req.max_context)
        room = context - len(prompt)
        if req.HasField("max_tokens") and req.max_tokens < 1:
            raise InvalidArgument("max_tokens must be at least 1", param="max_tokens")
        if req.HasField("max_tokens"):
            wanted = req.max_tokens
        else:
            wanted = min(room, self.default_max_tokens) if self.default_max_tokens else room
        if room < 1 or wanted > room:
            raise InvalidArgument(
                f"This model's maximum context length is {context} tokens. However, you "
                f"requested {len(prompt) + wanted} tokens ({len(prompt)} in the messages, "
                f"{wanted} in the completion). Please reduce the length of the messages or "
                "completion.",
                code="context_length_exceeded",
                param="messages" if req.WhichOneof("input") == "messages" else "prompt",
            )
        sampler = self._sampler(req)

        events: asyncio.Queue[Event] = asyncio.Queue()
        seq = Sequence(
            prompt=prompt,
            sampler=sampler,
            max_new_tokens=wanted,
            stops=StopMatcher(list(req.stop)),
            decoder=model.codec.decoder(),
            # Called on the event loop thread (see `loop_dispatch`).
            emit=events.put_nowait,
            request_id=req.request_id,
        )
        model.scheduler.submit(seq)
        first = True
        try:
            while True:
                event = _coalesce(await events.get(), events)
                if event.error is not None:
                    raise event.error
                msg = engine_pb2.GenerateResponse(text=event.text, token_count=event.token_count)
                if first:
                    msg.model.CopyFrom(model.info())
                    first = False
                if event.finish_reason:
                    msg.finish_reason = event.finish_reason
                    msg.usage.prompt_tokens = event.prompt_tokens
                    msg.usage.completion_tokens = event.completion_tokens
                    yield msg
                    return
                yield msg
        finally:
            # Reached on normal end too, where it is a no-op; on cancellation (client gone,
            # deadline) it frees the KV slot at the next step.
            model.scheduler.cancel(seq)


def _coalesce(event: Event, events: asyncio.Queue[Event]) -> Event:
    """Merges text events already waiting into one message.

    When the stream's consumer is slower than decoding (many streams, a slow client), this sends
    fewer, larger messages instead of letting a backlog of one-token messages build up.
    """
    while not event.finish_reason and event.error is None and not events.empty():
        nxt = events.get_nowait()
        if nxt.error is not None:
            return nxt
        event = Event(
            text=event.text + nxt.text,
            token_count=event.token_count + nxt.token_count,
            finish_reason=nxt.finish_reason,
            prompt_tokens=nxt.prompt_tokens,
            completion_tokens=nxt.completion_tokens,
        )
    return event


def loop_dispatch(loop: asyncio.AbstractEventLoop) -> Callable[[Delivery], None]:
    """A scheduler `dispatch` that delivers a step's events on `loop`, with one wake-up."""

    def dispatch(items: Delivery) -> None:
        loop.call_soon_threadsafe(deliver_now, items)

    return dispatch
