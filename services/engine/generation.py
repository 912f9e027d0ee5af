"""Turning a `GenerateRequest` into scheduled sequences (one per choice) and their stream of
events.

Validation (model, context length, sampling ranges, schemas and tools, n) happens here and in
`decoding`, before anything is queued, so that a bad request fails with a clear error and never
touches the batch. Grammars compile on a worker thread (llguidance drops the GIL), never on the
event loop itself.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from services.common.errors import InvalidArgument
from services.engine import decoding
from services.engine.constraints import Grammars
from services.engine.registry import ModelEntry, ModelRegistry
from services.engine.sampling import Sampled
from services.engine.scheduler import Delivery, Event, Scheduler, Sequence, deliver_now
from services.engine.text import StopMatcher, TextCodec, TokenTable
from services.engine.tools import CallDelta, ToolCallStream, render_messages
from services.pb.engine.v1 import engine_pb2


@dataclass
class HostedModel:
    entry: ModelEntry
    codec: TextCodec
    scheduler: Scheduler
    execution_provider: str
    default_max_tokens: int = 0  # SLUICE_ENGINE_DEFAULT_MAX_TOKENS
    # Built at start-up by main (or on first use): llguidance's tokenizer and compiled grammars,
    # and each token's bytes for logprobs.
    grammars: Grammars | None = field(default=None, repr=False)
    tokens: TokenTable | None = field(default=None, repr=False)

    @property
    def vocab_size(self) -> int:
        return self.scheduler.runtime.spec.vocab_size

    def prepare_constraints(self) -> None:
        """Builds the grammar tokenizer and token table (about 0.3 s) unless already built."""
        if self.grammars is None or self.tokens is None:
            tokenizer = self.codec.grammar_tokenizer(self.scheduler.runtime.spec.eos_token_ids)
            self.grammars = Grammars(tokenizer)
            self.tokens = TokenTable.from_grammar_tokenizer(tokenizer)

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
        max_n: int = 8,
    ) -> None:
        self.registry = registry
        self.models = models
        # Small models can loop until the context is full; an operator cap keeps a request
        # without max_tokens from running for minutes.
        self.default_max_tokens = default_max_tokens
        self.max_n = max_n  # SLUICE_ENGINE_MAX_N

    def resolve(self, ref: str) -> HostedModel:
        return self.models[self.registry.resolve(ref).name]

    def prompt_tokens(self, model: HostedModel, req: engine_pb2.GenerateRequest) -> list[int]:
        which = req.WhichOneof("input")
        tools = decoding.tools_of(req)
        if which == "messages":
            if not req.messages.messages:
                raise InvalidArgument("messages must not be empty", param="messages")
            turns = render_messages(decoding.messages_of(req), tools)
            return model.codec.encode(model.codec.render_chat(turns))
        if which == "prompt":
            ids = model.codec.encode(req.prompt)
            if not ids:
                raise InvalidArgument("prompt must not be empty", param="prompt")
            return ids
        raise InvalidArgument("either messages or prompt is required", param="messages")

    def _room(self, model: HostedModel, req: engine_pb2.GenerateRequest, prompt: int) -> int:
        """The completion tokens each choice may produce (max_tokens or the default cap)."""
        context = model.entry.context_length
        if req.max_context > 0:
            # The organization's plan caps the context below the model's.
            context = min(context, req.max_context)
        room = context - prompt
        if req.HasField("max_tokens") and req.max_tokens < 1:
            raise InvalidArgument("max_tokens must be at least 1", param="max_tokens")
        if req.HasField("max_tokens"):
            wanted = req.max_tokens
        else:
            wanted = min(room, self.default_max_tokens) if self.default_max_tokens else room
        if room < 1 or wanted > room:
            raise InvalidArgument(
                f"This model's maximum context length is {context} tokens. However, you "
                f"requested {prompt + wanted} tokens ({prompt} in the messages, "
                f"{wanted} in the completion). Please reduce the length of the messages or "
                "completion.",
                code="context_length_exceeded",
                param="messages" if req.WhichOneof("input") == "messages" else "prompt",
            )
        return wanted

    async def _matchers(
        self, model: HostedModel, constraint: decoding.OutputConstraint, n: int
    ) -> list[object]:
        """One fresh matcher per choice; compile errors name the offending field."""
        model.prepare_constraints()
        grammars = model.grammars
        assert grammars is not None

        def compile_all() -> list[object]:
            for check in constraint.checks:
                grammars.matcher(check.text, check.param)
            first = grammars.matcher(constraint.grammar.text, constraint.grammar.param)
            return [first, *(first.deep_copy() for _ in range(n - 1))]

        return await asyncio.to_thread(compile_all)

    async def generate(
        self, req: engine_pb2.GenerateRequest
    ) -> AsyncIterator[engine_pb2.GenerateResponse]:
        model = self.resolve(req.model)
        prompt = self.prompt_tokens(model, req)
        wanted = self._room(model, req, len(prompt))
        n = decoding.choice_count(req, min(self.max_n, model.scheduler.max_batch))
        logprobs = decoding.logprobs_of(req)
        samplers = decoding.samplers(req, n, model.vocab_size, logprobs)
        constraint = decoding.output_constraint(req, decoding.tools_of(req))
        matchers: list[object] = [None] * n
        if constraint is not None:
            matchers = await self._matchers(model, constraint, n)
        if logprobs is not None:
            model.prepare_constraints()

        events: asyncio.Queue[Event] = asyncio.Queue()
        seqs = [
            Sequence(
                prompt=prompt,
                sampler=samplers[i],
                max_new_tokens=wanted,
                stops=StopMatcher(list(req.stop)),
                decoder=model.codec.decoder(),
                # Called on the event loop thread (see `loop_dispatch`).
                emit=events.put_nowait,
                request_id=req.request_id,
                index=i,
                matcher=matchers[i],
                tool_stream=(
                    ToolCallStream(constraint.calls_only)
                    if constraint is not None and constraint.tools
                    else None
                ),
            )
            for i in range(n)
        ]
        seqs[0].followers = seqs[1:]
        model.scheduler.submit(seqs[0])
        first = True
        open_choices = n
        completion_tokens = 0
        backlog: collections.deque[Event] = collections.deque()
        try:
            while True:
                if not backlog:
                    backlog.append(await events.get())
                while not events.empty():
                    backlog.append(events.get_nowait())
                event = _coalesce(backlog)
                if event.error is not None:
                    raise event.error
                msg = self._message(model, event)
                if first:
                    msg.model.CopyFrom(model.info())
                    msg.prompt_tokens = len(prompt)
                    first = False
                if event.finish_reason:
                    msg.finish_reason = event.finish_reason
                    open_choices -= 1
                    completion_tokens += event.completion_tokens
                    if open_choices == 0:
                        msg.usage.prompt_tokens = event.prompt_tokens
                        msg.usage.completion_tokens = completion_tokens
                        yield msg
                        return
                yield msg
        finally:
            # Reached on normal end too, where it is a no-op; on cancellation (client gone,
            # deadline) it frees the KV slots at the next step.
            model.scheduler.cancel(seqs[0])

    @staticmethod
    def _message(model: HostedModel, event: Event) -> engine_pb2.GenerateResponse:
        msg = engine_pb2.GenerateResponse(
            text=event.text, token_count=event.token_count, index=event.index
        )
        for d in event.tool_calls:
            msg.tool_calls.add(index=d.index, id=d.id, name=d.name, arguments=d.arguments)
        if event.logprobs:
            assert model.tokens is not None
            for s in event.logprobs:
                _token_logprob(model.tokens, s, msg.logprobs.add())
        return msg


def _token_logprob(tokens: TokenTable, s: Sampled, out: engine_pb2.TokenLogprob) -> None:
    out.token_id = s.token
    out.token = tokens.text(s.token)
    out.token_bytes = tokens.of(s.token)
    out.logprob = s.logprob if s.logprob is not None else 0.0
    for token, logprob in s.top:
        out.top_logprobs.add(
            token_id=token,
            token=tokens.text(token),
            token_bytes=tokens.of(token),
            logprob=logprob,
        )


def _coalesce(backlog: collections.deque[Event]) -> Event:
    """Takes the next event, merged with the events of the same choice right behind it.

    When the stream's consumer is slower than decoding (many streams, a slow client), this sends
    fewer, larger messages instead of letting a backlog of one-token messages build up. Only
    consecutive events of the same choice merge, so every choice's order is kept; an error
    behind them wins at once.
    """
    event = backlog.popleft()
    while not event.finish_reason and event.error is None and backlog:
        nxt = backlog[0]
        if nxt.error is None and nxt.index != event.index:
            break
        backlog.popleft()
        if nxt.error is not None:
            return nxt
        event = Event(
            text=event.text + nxt.text,
            token_count=event.token_count + nxt.token_count,
            finish_reason=nxt.finish_reason,
            prompt_tokens=nxt.prompt_tokens,
            completion_tokens=nxt.completion_tokens,
            index=event.index,
            tool_calls=_merge_calls(event.tool_calls, nxt.tool_calls),
            logprobs=event.logprobs + nxt.logprobs,
        )
    return event


def _merge_calls(a: list[CallDelta], b: list[CallDelta]) -> list[CallDelta]:
    """Deltas in order, a call's argument fragments joined where they follow each other."""
    out = [CallDelta(d.index, d.id, d.name, d.arguments) for d in a]
    for d in b:
        if out and out[-1].index == d.index and not d.id:
            out[-1].arguments += d.arguments
        else:
            out.append(CallDelta(d.index, d.id, d.name, d.arguments))
    return out


def loop_dispatch(loop: asyncio.AbstractEventLoop) -> Callable[[Delivery], None]:
    """A scheduler `dispatch` that delivers a step's events on `loop`, with one wake-up."""

    def dispatch(items: Delivery) -> None:
        loop.call_soon_threadsafe(deliver_now, items)

    return dispatch
