"""The scheduler on the real exported graph: batching changes no result, cancellation frees
slots, and a full queue is refused."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.errors import ResourceExhausted
from services.engine.runtime import DecoderRuntime
from services.engine.sampling import Sampler
from services.engine.scheduler import Event, Scheduler, Sequence
from services.engine.text import StopMatcher, TextCodec

QUESTIONS = [
    "What is the capital of France?",
    "Name three colors.",
    "What is 2 + 2?",
    "Write a haiku about the sea.",
    "Who wrote Hamlet?",
]


class Collector:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.done = threading.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if event.finish_reason or event.error:
            self.done.set()

    def text(self) -> str:
        assert self.done.wait(120), "sequence did not finish"
        return "".join(e.text for e in self.events)


@pytest.fixture(scope="module")
def codec(model_folder: Path) -> TextCodec:
    return TextCodec.from_folder(model_folder)


@pytest.fixture
def scheduler(model_folder: Path, codec: TextCodec) -> Iterator[Scheduler]:
    runtime = DecoderRuntime(model_folder, max_batch=4, max_len=1024)
    sched = Scheduler(runtime, codec.tokenizer, max_queue=16, prefill_tokens=64)
    sched.start()
    yield sched
    sched.stop()


def make_seq(codec: TextCodec, question: str, max_new: int = 24) -> tuple[Sequence, Collector]:
    out = Collector()
    prompt = codec.encode(codec.render_chat([("user", question)]))
    seq = Sequence(prompt, Sampler(0.0), max_new, StopMatcher([]), codec.decoder(), out)
    return seq, out


def test_batched_greedy_equals_one_at_a_time(scheduler: Scheduler, codec: TextCodec) -> None:
    alone = []
    for q in QUESTIONS:
        seq, out = make_seq(codec, q)
        scheduler.submit(seq)
        alone.append(out.text())
    # Five at once on four slots: one waits for a slot, then joins mid-batch.
    pairs = [make_seq(codec, q) for q in QUESTIONS[:3]]
    for seq, _ in pairs:
        scheduler.submit(seq)
    late = [make_seq(codec, q) for q in QUESTIONS[3:]]
    for seq, _ in late:
        scheduler.submit(seq)
    together = [out.text() for _, out in pairs + late]
    assert together == alone


def test_cancelled_sequence_frees_its_slot(scheduler: Scheduler, codec: TextCodec) -> None:
    long = [make_seq(codec, q, max_new=400) for q in QUESTIONS[:4]]
    for seq, _ in long:
        scheduler.submit(seq)
    waiting, out = make_seq(codec, QUESTIONS[4], max_new=4)
    scheduler.submit(waiting)
    # All four slots are busy with long generations; cancelling one admits the waiter.
    scheduler.cancel(long[0][0])
    assert out.done.wait(60)
    assert out.events[-1].finish_reason == "length"
    for seq, _ in long[1:]:
        scheduler.cancel(seq)


def test_full_queue_is_refused(model_folder: Path, codec: TextCodec) -> None:
    runtime = DecoderRuntime(model_folder, max_batch=1, max_len=256)
    sched = Scheduler(runtime, codec.tokenizer, max_queue=2)
    # Not started: nothing moves into the free slot. One sequence waits for that slot and two
    # wait in the queue behind it; the fourth finds the queue full.
    for text in "abc":
        sched.submit(make_seq(codec, text)[0])
    with pytest.raises(ResourceExhausted):
        sched.submit(make_seq(codec, "d")[0])


def test_usage_counts_prompt_and_completion(scheduler: Scheduler, codec: TextCodec) -> None:
    seq, out = make_seq(codec, QUESTIONS[0], max_new=7)
    scheduler.submit(seq)
    out.text()
    last = out.events[-1]
    assert last.finish_reason == "length"
    assert last.prompt_tokens == len(seq.prompt)
    assert last.completion_tokens == 7
    assert sum(e.token_count for e in out.events) == 7


def test_stop_string_ends_the_sequence(scheduler: Scheduler, codec: TextCodec) -> None:
    seq, out = make_seq(codec, QUESTIONS[0], max_new=30)
    seq.stops = StopMatcher([" Paris"])
    scheduler.submit(seq)
    assert out.text() == "The capital of France is"
    assert out.events[-1].finish_reason == "stop"


def test_chunked_prefill_changes_no_result(
    scheduler: Scheduler, model_folder: Path, codec: TextCodec
) -> None:
    seq, out = make_seq(codec, QUESTIONS[3])
    scheduler.submit(seq)
    whole = out.text()
    runtime = DecoderRuntime(model_folder, max_batch=2, max_len=512)
    # 7-token chunks: the prompt is prefilled over several iterations while another sequence
    # decodes beside it.
    chunked = Scheduler(runtime, codec.tokenizer, max_queue=4, prefill_tokens=7)
    chunked.start()
    try:
        other, other_out = make_seq(codec, QUESTIONS[0])
        chunked.submit(other)
        seq2, out2 = make_seq(codec, QUESTIONS[3])
        chunked.submit(seq2)
        assert out2.text() == whole
        assert other_out.text()
    finally:
        chunked.stop()


def test_tokens_in_flight_bound_holds_newcomers_back(model_folder: Path, codec: TextCodec) -> None:
    runtime = DecoderRuntime(model_folder, max_batch=4, max_len=512)
    sched = Scheduler(runtime, codec.tokenizer, max_queue=4, max_tokens_in_flight=100)
    first, first_out = make_seq(codec, QUESTIONS[0], max_new=40)
    second, second_out = make_seq(codec, QUESTIONS[1], max_new=40)
    sched.submit(first)
    sched.submit(second)
    with sched.cond:
        sched._admit()
        # Each needs ~75 positions: with a bound of 100 only one runs, though slots are free.
        assert sched.load() == (1, 1)
    sched.start()
    try:
        assert first_out.text() and second_out.text()
    finally:
        sched.stop()


def _group(codec: TextCodec, question: str, n: int, max_new: int = 16) -> list[tuple]:
    pairs = [make_seq(codec, question, max_new) for _ in range(n)]
    for i, (seq, _) in enumerate(pairs):
        seq.index = i
    pairs[0][0].followers = [seq for seq, _ in pairs[1:]]
    return pairs


def test_choices_share_one_prefill(scheduler: Scheduler, codec: TextCodec) -> None:
    alone, out = make_seq(codec, QUESTIONS[2], 16)
    scheduler.submit(alone)
    expected = out.text()
    prefills = []
    real = scheduler.runtime.prefill

    def counting(*args: object, **kwargs: object) -> object:
        prefills.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    scheduler.runtime.prefill = counting  # type: ignore[method-assign]
    try:
        group = _group(codec, QUESTIONS[2], 3)
        scheduler.submit(group[0][0])
        texts = [o.text() for _, o in group]
    finally:
        del scheduler.runtime.prefill
    assert texts == [expected] * 3  # greedy: every choice decodes the copied prefill alike
    assert len(prefills) == 1
    assert [o.events[-1].index for _, o in group] == [0, 1, 2]


def test_a_choice_whose_leader_left_prefills_itself(model_folder: Path, codec: TextCodec) -> None:
    runtime = DecoderRuntime(model_folder, max_batch=4, max_len=512)
    reference = Scheduler(runtime, codec.tokenizer, max_queue=4)
    reference.start()
    try:
        seq, out = make_seq(codec, QUESTIONS[1], 12)
        reference.submit(seq)
        expected = out.text()
    finally:
        reference.stop()
    # Cancelled while still queued: the other choices run on their own.
    sched = Scheduler(runtime, codec.tokenizer, max_queue=4, prefill_tokens=7)
    queued = _group(codec, QUESTIONS[1], 2, 12)
    sched.submit(queued[0][0])
    queued[0][0].cancelled = True
    # Cancelled once admitted, before its prefill ended: the waiting choice prefills itself.
    halfway = _group(codec, QUESTIONS[1], 2, 12)
    sched.submit(halfway[0][0])
    with sched.cond:
        sched._drop_cancelled()
        sched._admit()
    sched._prefill_step()
    halfway[0][0].cancelled = True
    sched.start()
    try:
        assert queued[1][1].text() == expected
        assert halfway[1][1].text() == expected
    finally:
        sched.stop()
