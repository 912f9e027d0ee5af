"""Relaying a provider's event stream to the client, event by event as it arrives, with the
request settled exactly once before the client sees the stream's end.

A route supplies a `StreamCodec`: how each provider event becomes the frames its client
receives (unchanged, edited or translated: SSE bytes, or objects for a caller that translates
them further), what usage the events reported, and how the stream ends. `relay` drives it: a
provider failure after output began ends the client's stream with an error event (billing what
was delivered; no retry), and a client that goes away closes the provider's stream and is
billed what was produced. A stream still running at the end of the edge's drain ends the same
way, with a "shutting down" error (services.edge.drain).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Protocol, TypeVar

from services.edge.errors import APIError
from services.edge.governance import Admission
from services.edge.providers.base import (
    SSEEvent,
    UpstreamFailure,
    UpstreamStream,
    shutdown_failure,
    stream_failure_error,
)

Frame = TypeVar("Frame", covariant=True)
F = TypeVar("F")


class StreamCodec(Protocol[Frame]):
    """One route's view of a provider stream."""

    # Set once the provider's last event was seen; the end goes out only after settlement.
    finished: bool
    # The choices' finish reasons as the events told them, for the request's trace.
    finish_reasons: list[str]

    def frames(self, event: SSEEvent) -> Sequence[Frame]:
        """What to send the client for one provider event, now."""
        ...

    def closing(self) -> Sequence[Frame]:
        """The frames that end the client's stream, sent after settlement."""
        ...

    def usage(self) -> tuple[int, int]:
        """(prompt, completion) tokens as far as the events told (the provider's numbers, or
        the pieces delivered where a broken stream never reported them)."""
        ...

    def error_frame(self, error: APIError) -> Frame:
        """The event that ends a stream that failed after output began."""
        ...


async def relay(
    admission: Admission, stream: UpstreamStream, codec: StreamCodec[F], provider: str
) -> AsyncGenerator[F, None]:
    status = "cancelled"

    def account() -> None:
        admission.prompt_tokens, admission.completion_tokens = codec.usage()
        admission.finish_reasons = codec.finish_reasons

    try:
        try:
            async for event in admission.backends.drain.interruptible(
                aiter(stream), shutdown_failure
            ):
                out = codec.frames(event)
                if out:
                    admission.output_started()
                    for frame in out:
                        yield frame
                if codec.finished:
                    break
            if not codec.finished:
                raise UpstreamFailure("stream", "the stream ended before it finished")
        except UpstreamFailure as failure:
            status = "error"
            account()
            await admission.settle(status)
            yield codec.error_frame(stream_failure_error(provider, failure))
            return
        status = "ok"
        account()
        # Settled before the client sees the end, so the ledger already holds the record.
        await admission.settle(status)
        for frame in codec.closing():
            yield frame
    finally:
        if status == "cancelled":
            # Started before anything below can be interrupted: a gone client is still billed.
            account()
            admission.settle(status)
        await stream.aclose()
