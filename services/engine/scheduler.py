"""Iteration-level scheduling: sequences join the running batch between decode steps and leave it
the moment they finish or are cancelled.

One worker thread owns the runtime and the KV slots. Each iteration it (1) moves waiting
sequences into free slots, (2) spends at most `prefill_tokens` on prompt processing — several short
prompts batched together, or one chunk of a long prompt — and (3) advances every decoding sequence
by one token in a single batched step. Bounding the prefill work per iteration bounds how long
running streams stall when newcomers arrive, and chunking is exact on this graph (the attention op
continues from the positions already in the slot).

Requests arrive through `submit()` from the asyncio side. Results are collected per iteration
and handed to `dispatch` once, which the servicer points at the event loop: one wake-up per step
for the whole batch instead of one per token, so the loop thread and this one contend for the GIL
less. ONNX Runtime releases the GIL while it computes, so the event loop stays responsive.

A sequence with a constraint (an llguidance matcher) gets its token mask computed, with those of
every other constrained row, on a worker thread while ONNX Runtime runs the step; the mask is
applied before sampling, and the sequence ends the moment its grammar is complete. Rows without
one are sampled exactly as before. The choices of one request (n > 1) are submitted as one
group: they are admitted together, the first prefills the prompt, and its KV is copied to the
others' slots, after which each samples on its own.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.common.errors import ResourceExhausted
from services.engine.constraints import MaskBatch
from services.engine.runtime import DecoderRuntime
from services.engine.sampling import Sampled, Sampler
from services.engine.text import StopMatcher
from services.engine.tools import CallDelta, ToolCallStream

log = logging.getLogger(__name__)

# Seconds a refused client is told to wait: about one prefill-and-decode round.
RETRY_AFTER_S = 1


@dataclass
class Event:
    """What a sequence reports: new text or tool-call pieces, or its end (with finish reason and
    usage), or an error. `index` is the choice the sequence is."""

    text: str = ""
    token_count: int = 0
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: BaseException | None = None
    index: int = 0
    tool_calls: list[CallDelta] = field(default_factory=list)
    logprobs: list[Sampled] = field(default_factory=list)  # one per token accounted for


@dataclass(eq=False)
class Sequence:
    prompt: list[int]
    sampler: Sampler
    max_new_tokens: int
    stops: StopMatcher
    decoder: Any  # tokenizers.decoders.DecodeStream
    emit: Callable[[Event], None]
    request_id: str = ""
    index: int = 0  # the choice this sequence is, for n > 1
    matcher: Any = None  # llguidance.LLMatcher when the output is constrained
    tool_stream: ToolCallStream | None = None  # when the output may hold tool calls
    # The other choices of the same request: admitted with this one, given its prefill.
    followers: list[Sequence] = field(default_factory=list)
    leader: Sequence | None = None  # set on a follower until its KV is copied
    slot: int = -1
    length: int = 0  # positions held in the KV cache
    last_token: int = 0
    generated: int = 0
    unreported: int = 0  # tokens generated since the last emitted text
    pending_logprobs: list[Sampled] = field(default_factory=list)
    cancelled: bool = field(default=False)

    @property
    def budget(self) -> int:
        """The most KV positions this sequence can ever hold."""
        return len(self.prompt) + self.max_new_tokens

    @property
    def prefilling(self) -> bool:
        return self.length < len(self.prompt)

    @property
    def group(self) -> list[Sequence]:
        return [self, *self.followers]


Delivery = list[tuple[Callable[[Event], None], Event]]


@dataclass(frozen=True)
class StepTiming:
    """Where one decode step's time went (seconds), for the benchmark's per-step costs."""

    rows: int  # sequences sampled
    constrained: int  # of which under a grammar
    decode_s: float  # the ONNX Runtime call (the masks are computed meanwhile)
    mask_wait_s: float  # waiting for masks after it returned: mask work not hidden
    sample_s: float  # masks applied, tokens sampled and taken, events built


def deliver_now(items: Delivery) -> None:
    """The default dispatch: call each sequence's `emit` on the scheduler thread."""
    for emit, event in items:
        emit(event)


class QueueFull(ResourceExhausted):
    retry_after = RETRY_AFTER_S


class Scheduler:
    def __init__(
        self,
        runtime: DecoderRuntime,
        tokenizer: Any,
        *,
        max_queue: int,
        prefill_tokens: int = 512,
        max_tokens_in_flight: int = 0,
        dispatch: Callable[[Delivery], None] = deliver_now,
        grammar_vocab: int = 0,
        step_log: list[StepTiming] | None = None,
    ) -> None:
        self.runtime = runtime
        self.tokenizer = tokenizer
        self.max_batch = runtime.max_batch
        self.max_queue = max_queue
        self.prefill_tokens = max(1, prefill_tokens)
        # Upper bound on prompt + completion tokens of all running sequences (0 = slots only):
        # bounds the KV memory actually touched and the attention work per step.
        self.max_tokens_in_flight = max_tokens_in_flight
        self.eos = set(runtime.spec.eos_token_ids)
        self.dispatch = dispatch
        # Built when the first constrained sequence arrives: plain traffic never pays for it.
        self.masks: MaskBatch | None = None
        # Tokens llguidance's tokenizer knows (0 = the model's vocabulary): the masks' width.
        self.grammar_vocab = grammar_vocab or runtime.spec.vocab_size
        # When given, every decode step appends its timing here (the benchmark reads it).
        self.step_log = step_log
        self._outbox: Delivery = []
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
        if self.masks is not None:
            self.masks.close()

    def submit(self, seq: Sequence) -> None:
        """Queues a sequence, with its followers (the request's other choices) if it has any."""
        if seq.matcher is not None or any(f.matcher is not None for f in seq.followers):
            self._ensure_masks()
        with self.cond:
            # Sequences waiting for slots that are free now are not queued: the worker thread
            # has just not moved them yet. Counting them would refuse a request with a slot free.
            free = sum(s is None for s in self.slots)
            if len(self.waiting) - free >= self.max_queue:
                raise QueueFull(
                    "The engine's queue is full; retry shortly.", code="engine_overloaded"
                )
            if len(seq.group) > self.max_batch:
                raise ValueError(f"{len(seq.group)} choices do not fit in {self.max_batch} slots")
            for follower in seq.followers:
                follower.leader = seq
            self.waiting.append(seq)
            self.cond.notify_all()

    def _ensure_masks(self) -> None:
        with self.cond:
            if self.masks is None:
                self.masks = MaskBatch(
                    self.runtime.spec.vocab_size, self.max_batch, self.grammar_vocab
                )

    def cancel(self, seq: Sequence) -> None:
        """Cancels a sequence and its followers."""
        with self.cond:
            for s in seq.group:
                s.cancelled = True
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
                    self._flush()
                    self.cond.wait()
                    self._drop_cancelled()
                if self.stopping:
                    break
                self._admit()
            self._prefill_step()
            decoding = [s for s in self._running() if not s.prefilling]
            if decoding:
                try:
                    self._decode_step(decoding)
                except Exception as exc:  # noqa: BLE001 - a failed step fails its batch only
                    log.exception("decode step failed")
                    for seq in decoding:
                        self._finish(seq, error=exc)
        for seq in [*self._running(), *self.waiting]:
            self._finish(seq, error=RuntimeError("engine stopping"))
        self._flush()

    def _emit(self, seq: Sequence, event: Event) -> None:
        self._outbox.append((seq.emit, event))

    def _flush(self) -> None:
        """Hands the collected events to `dispatch`: right before the next ONNX Runtime call (or
        before going idle), so that the event loop does its share of the work while this thread
        computes without the GIL, instead of both wanting the GIL between steps."""
        if self._outbox:
            items, self._outbox = self._outbox, []
            self.dispatch(items)

    def _running(self) -> list[Sequence]:
        return [s for s in self.slots if s is not None]

    def _drop_cancelled(self) -> None:
        """Frees the slots of cancelled sequences (caller holds the lock)."""
        for seq in self._running():
            if seq.cancelled:
                self.slots[seq.slot] = None
        if any(m.cancelled for s in self.waiting for m in s.group):
            kept: collections.deque[Sequence] = collections.deque()
            for seq in self.waiting:
                # A group whose leader alone was cancelled keeps its other choices.
                group = [m for m in seq.group if not m.cancelled]
                if group:
                    head = group[0]
                    head.leader, head.followers = None, group[1:]
                    for follower in head.followers:
                        follower.leader = head
                    kept.append(head)
            self.waiting = kept

    def _admit(self) -> None:
        """Moves waiting sequences (a request's choices together) into free slots, lowest first
        (caller holds the lock)."""
        in_flight = sum(s.budget for s in self._running())
        while self.waiting:
            group = self.waiting[0].group
            free = [i for i, s in enumerate(self.slots) if s is None]
            if len(free) < len(group):
                return
            budget = sum(s.budget for s in group)
            limit = self.max_tokens_in_flight
            if limit and in_flight and in_flight + budget > limit:
                return
            in_flight += budget
            self.waiting.popleft()
            for seq, slot in zip(group, free, strict=False):
                seq.slot = slot
                self.slots[slot] = seq

    def _awaits_leader(self, seq: Sequence) -> bool:
        """Whether a follower still waits for its leader's prefill. One whose leader left the
        batch before its prefill ended (cancelled, failed) prefills the prompt itself."""
        leader = seq.leader
        if leader is None:
            return False
        if leader.cancelled or self.slots[leader.slot] is not leader:
            seq.leader = None
            return False
        return True

    def _prefill_step(self) -> None:
        """Spends up to `prefill_tokens` on prompts: one chunk, or a batch of whole prompts."""
        pending = sorted(
            (s for s in self._running() if s.prefilling and not self._awaits_leader(s)),
            key=lambda s: s.slot,
        )
        if not pending:
            return
        head = pending[0]
        remaining = len(head.prompt) - head.length
        if head.length > 0 or remaining > self.prefill_tokens:
            chunk = head.prompt[head.length : head.length + self.prefill_tokens]
            self._run_prefill([head], [chunk], past=head.length)
            return
        # Whole fresh prompts in consecutive slots share one padded batch within the budget.
        group = [head]
        for seq in pending[1:]:
            width = max(len(s.prompt) for s in (*group, seq))
            if (
                seq.slot != group[-1].slot + 1
                or seq.length > 0
                or width * (len(group) + 1) > self.prefill_tokens
            ):
                break
            group.append(seq)
        self._run_prefill(group, [s.prompt for s in group], past=0)

    def _run_prefill(self, group: list[Sequence], chunks: list[list[int]], past: int) -> None:
        # Sequences whose prompt this run completes sample right after it, with their waiting
        # followers: their first masks are computed while the prefill runs.
        completing = [
            s for s, c in zip(group, chunks, strict=True) if s.length + len(c) == len(s.prompt)
        ]
        self._flush()
        self._start_masks([f for s in completing for f in s.group])
        try:
            logits = self.runtime.prefill(
                group[0].slot, [np.asarray(c, dtype=np.int64) for c in chunks], past=past
            )
        except Exception as exc:  # noqa: BLE001 - one bad batch must not stop the engine
            log.exception("prefill failed")
            self._wait_masks()
            for seq in group:
                self._finish(seq, error=exc)
            return
        self._wait_masks()
        for i, (seq, chunk) in enumerate(zip(group, chunks, strict=True)):
            seq.length += len(chunk)
            if seq.prefilling:
                continue
            for follower in self._share_prefill(seq):
                self._sample(follower, logits[i])
            if not seq.cancelled:
                self._sample(seq, logits[i])

    def _share_prefill(self, leader: Sequence) -> list[Sequence]:
        """Copies a finished prefill's KV to the followers waiting for it; returns those ready
        to sample."""
        ready = []
        for follower in leader.followers:
            if follower.leader is not leader or follower.cancelled:
                continue
            if self.slots[follower.slot] is not follower:
                continue
            try:
                self.runtime.copy_slot(leader.slot, follower.slot, leader.length)
            except Exception as exc:  # noqa: BLE001 - the follower fails, not the engine
                log.exception("copying a prefill failed")
                self._finish(follower, error=exc)
                continue
            follower.length = leader.length
            follower.leader = None
            ready.append(follower)
        return ready

    def _start_masks(self, seqs: list[Sequence]) -> None:
        rows = [(s.matcher, s.slot) for s in seqs if s.matcher is not None and not s.cancelled]
        if rows and self.masks is not None:
            self.masks.start(rows)

    def _wait_masks(self) -> None:
        if self.masks is not None:
            self.masks.wait()

    def _sample(self, seq: Sequence, logits: np.ndarray) -> None:
        try:
            if seq.matcher is None:
                sampled = seq.sampler.sample(logits)
            else:
                assert self.masks is not None
                sampled = seq.sampler.sample(logits, self.masks.allowed(seq.slot))
            self._accept(seq, sampled)
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the engine
            log.exception("request %s failed", seq.request_id)
            self._finish(seq, error=exc)

    def _decode_step(self, decoding: list[Sequence]) -> None:
        rows = max(s.slot for s in self._running()) + 1
        tokens = np.full(rows, self.runtime.spec.pad_token_id, dtype=np.int64)
        lengths = np.zeros(rows, dtype=np.int64)
        for seq in self._running():
            if seq.prefilling:
                # Its row takes part in the step as padding: position 0 would overwrite its
                # prompt's first key, so point it past what it holds; the next chunk rewrites it.
                lengths[seq.slot] = seq.length
        for seq in decoding:
            tokens[seq.slot] = seq.last_token
            lengths[seq.slot] = seq.length
        self._flush()
        # The masks for the tokens this step samples depend only on the tokens taken so far:
        # they are computed while ONNX Runtime computes the logits.
        constrained = [s for s in decoding if s.matcher is not None]
        self._start_masks(constrained)
        start = time.perf_counter()
        try:
            logits = self.runtime.decode(tokens, lengths)
        finally:
            decoded = time.perf_counter()
            self._wait_masks()
        masked = time.perf_counter()
        for seq in decoding:
            seq.length += 1
            if seq.cancelled:
                continue
            self._sample(seq, logits[seq.slot])
        if self.step_log is not None:
            done = time.perf_counter()
            self.step_log.append(
                StepTiming(
                    len(decoding),
                    len(constrained),
                    decoded - start,
                    masked - decoded,
                    done - masked,
                )
            )

    def _accept(self, seq: Sequence, sampled: Sampled) -> None:
        """Takes one sampled token: emits its text or tool-call pieces, and finishes the
        sequence when it is done."""
        token = sampled.token
        seq.generated += 1
        seq.unreported += 1
        seq.last_token = token
        # The end-of-sequence token is counted in usage but, as in OpenAI's API, has no entry.
        if seq.sampler.logprobs is not None and token not in self.eos:
            seq.pending_logprobs.append(sampled)
        if token in self.eos:
            self._finish(seq, reason=self._end_reason(seq))
            return
        if seq.matcher is not None and not seq.matcher.consume_token(token):
            raise RuntimeError(f"the grammar rejected token {token}: {seq.matcher.get_error()}")
        piece = seq.decoder.step(self.tokenizer, token) or ""
        calls: list[CallDelta] = []
        if seq.tool_stream is not None and piece:
            piece, calls = seq.tool_stream.feed(piece)
        text, stopped = seq.stops.feed(piece) if piece else ("", False)
        if text or calls:
            self._emit(seq, self._report(seq, text, calls))
        if stopped:
            self._finish(seq, reason="stop")
        elif seq.matcher is not None and seq.matcher.is_stopped():
            # The grammar is complete: nothing but the end of the sequence could follow.
            self._finish(seq, reason=self._end_reason(seq))
        elif seq.generated >= seq.max_new_tokens or seq.length + 1 >= self.runtime.max_len:
            self._finish(seq, reason="length")

    @staticmethod
    def _end_reason(seq: Sequence) -> str:
        """Why a sequence that reached its natural end stopped."""
        return "tool_calls" if seq.tool_stream is not None and seq.tool_stream.calls else "stop"

    @staticmethod
    def _report(seq: Sequence, text: str, calls: list[CallDelta]) -> Event:
        """An event with what the sequence produced since its last one."""
        event = Event(
            text=text,
            token_count=seq.unreported,
            index=seq.index,
            tool_calls=calls,
            logprobs=seq.pending_logprobs,
        )
        seq.unreported = 0
        seq.pending_logprobs = []
        return event

    def _finish(self, seq: Sequence, reason: str = "", error: BaseException | None = None) -> None:
        with self.cond:
            if seq.slot >= 0 and self.slots[seq.slot] is seq:
                self.slots[seq.slot] = None
        if error is not None:
            self._emit(seq, Event(error=error, index=seq.index))
            return
        # After a matched stop string nothing is held; after EOS or a length limit the text held
        # back as a possible stop prefix was real output.
        event = self._report(seq, seq.stops.flush(), [])
        event.finish_reason = reason
        event.prompt_tokens = len(seq.prompt)
        event.completion_tokens = seq.generated
        self._emit(seq, event)
