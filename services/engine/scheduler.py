"""Iteration-level scheduling: sequences join the running batch between decode steps and leave it
the moment they finish or are cancelled.

One worker thread owns the runtime and the KV slots. Requests arrive through `submit()` from the
asyncio side; results go back through each sequence's `emit` callback, which the servicer makes
thread-safe. ONNX Runtime releases the GIL while it computes, so the event loop stays responsive.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.common.errors import ResourceExhausted
from services.engine.runtime import DecoderRuntime
from services.engine.sampling import Sampler
from services.engine.text import StopMatcher

log = logging.getLogger(__name__)


@dataclass
class Event:
    """What a sequence reports: new text, or its end (with finish reason and usage), or an error."""

    text: str = ""
    token_count: int = 0
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: BaseException | None = None


@dataclass(eq=False)
class Sequence:
    prompt: list[int]
    sampler: Sampler
    max_new_tokens: int
    stops: StopMatcher
    decoder: Any  # tokenizers.decoders.DecodeStream
    emit: Callable[[Event], None]
    request_id: str = ""
    slot: int = -1
    length: int = 0  # positions held in the KV cache
    last_token: int = 0
    generated: int = 0
    unreported: int = 0  # tokens generated since the last emitted text
    cancelled: bool = field(default=False)


class Scheduler:
    def __init__(
        self,
        runtime: DecoderRuntime,
        tokenizer: Any,
        *,
        max_queue: int,
        prefills_per_step: int = 1,
    ) -> None:
        self.runtime = runtime
        self.tokenizer = tokenizer
        self.max_batch = runtime.max_batch
        self.max_queue = max_queue
        # Prefills admitted between two decode steps: bounds how long running streams stall.
        self.prefills_per_step = prefills_per_step
        self.eos = set(runtime.spec.eos_token_ids)
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.slots: list[Sequence | None] = [None] * self.max_batch
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="scheduler", daemon=True)

    # -- called from the event loop -------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout=30)

    def submit(self, seq: Sequence) -> None:
        with self.cond:
            if len(self.waiting) >= self.max_queue:
                raise ResourceExhausted(
                    "The engine is at capacity; retry shortly.", code="engine_overloaded"
                )
            self.waiting.append(seq)
            self.cond.notify_all()

    def cancel(self, seq: Sequence) -> None:
        with self.cond:
            seq.cancelled = True
            self.cond.notify_all()

    def load(self) -> tuple[int, int]:
        """(running, waiting) right now, for metrics and tests."""
        with self.cond:
            return sum(s is not None for s in self.slots), len(self.waiting)

    # -- the worker thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self.cond:
                self._drop_cancelled()
                while not self.stopping and not self.waiting and not self._running():
                    self.cond.wait()
                    self._drop_cancelled()
                if self.stopping:
                    break
                admitted = self._admit()
            for seq in admitted:
                self._guard(seq, self._prefill)
            if self._running():
                try:
                    self._decode_step()
                except Exception as exc:  # noqa: BLE001 - a failed step fails its batch only
                    log.exception("decode step failed")
                    for seq in self._running():
                        self._finish(seq, error=exc)
        for seq in [*self._running(), *self.waiting]:
            self._finish(seq, error=RuntimeError("engine stopping"))

    def _running(self) -> list[Sequence]:
        return [s for s in self.slots if s is not None]

    def _drop_cancelled(self) -> None:
        """Frees the slots of cancelled sequences (caller holds the lock)."""
        for seq in self._running():
            if seq.cancelled:
                self.slots[seq.slot] = None
        if any(s.cancelled for s in self.waiting):
            self.waiting = collections.deque(s for s in self.waiting if not s.cancelled)

    def _admit(self) -> list[Sequence]:
        admitted: list[Sequence] = []
        while self.waiting and len(admitted) < self.prefills_per_step:
            try:
                slot = self.slots.index(None)
            except ValueError:
                break
            seq = self.waiting.popleft()
            seq.slot = slot
            self.slots[slot] = seq
            admitted.append(seq)
        return admitted

    def _guard(self, seq: Sequence, fn: Callable[[Sequence], None]) -> None:
        try:
            fn(seq)
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the engine
            log.exception("request %s failed", seq.request_id)
            self._finish(seq, error=exc)

    def _prefill(self, seq: Sequence) -> None:
        logits = self.runtime.prefill(seq.slot, np.asarray(seq.prompt, dtype=np.int64))
        seq.length = len(seq.prompt)
        self._accept(seq, seq.sampler(logits))

    def _decode_step(self) -> None:
        running = self._running()
        rows = max(s.slot for s in running) + 1
        tokens = np.full(rows, self.runtime.spec.pad_token_id, dtype=np.int64)
        lengths = np.zeros(rows, dtype=np.int64)
        for seq in running:
            tokens[seq.slot] = seq.last_token
            lengths[seq.slot] = seq.length
        logits = self.runtime.decode(tokens, lengths)
        for seq in running:
            seq.length += 1
            if seq.cancelled:
                continue
            self._guard(seq, lambda s: self._accept(s, s.sampler(logits[s.slot])))

    def _accept(self, seq: Sequence, token: int) -> None:
        """Takes one sampled token: emits its text, and finishes the sequence when it is done."""
        seq.generated += 1
        seq.unreported += 1
        seq.last_token = token
        if token in self.eos:
            self._finish(seq, reason="stop")
            return
        piece = seq.decoder.step(self.tokenizer, token) or ""
        text, stopped = seq.stops.feed(piece) if piece else ("", False)
        if text:
            seq.emit(Event(text=text, token_count=seq.unreported))
            seq.unreported = 0
        if stopped:
            self._finish(seq, reason="stop")
        elif seq.generated >= seq.max_new_tokens or seq.length + 1 >= self.runtime.max_len:
            self._finish(seq, reason="length")

    def _finish(self, seq: Sequence, reason: str = "", error: BaseException | None = None) -> None:
        with self.cond:
            if seq.slot >= 0 and self.slots[seq.slot] is seq:
                self.slots[seq.slot] = None
        if error is not None:
            seq.emit(Event(error=error))
            return
        # After a matched stop string nothing is held; after EOS or a length limit the text held
        # back as a possible stop prefix was real output.
        tail = seq.stops.flush()
        seq.emit(
            Event(
                text=tail,
                token_count=seq.unreported,
                finish_reason=reason,
                prompt_tokens=len(seq.prompt),
                completion_tokens=seq.generated,
            )
        )
