from __future__ import annotations

import numpy as np
import pytest

from services.engine.sampling import Sampler

LOGITS = np.array([0.1, 3.0, 2.9, -1.0, 0.5], dtype=np.float32)


def test_greedy_is_argmax() -> None:
    assert Sampler(temperature=0.0)(LOGITS) == 1
    assert Sampler(temperature=1.0, top_k=1)(LOGITS) == 1


def test_same_seed_same_tokens() -> None:
    a, b = Sampler(1.0, seed=7), Sampler(1.0, seed=7)
    assert [a(LOGITS) for _ in range(50)] == [b(LOGITS) for _ in range(50)]


def test_different_seeds_differ_somewhere() -> None:
    a, b = Sampler(1.5, seed=1), Sampler(1.5, seed=2)
    assert [a(LOGITS) for _ in range(50)] != [b(LOGITS) for _ in range(50)]


def test_top_k_restricts_the_choice() -> None:
    s = Sampler(2.0, top_k=2, seed=0)
    assert {s(LOGITS) for _ in range(200)} <= {1, 2}


def test_top_p_keeps_the_nucleus_only() -> None:
    s = Sampler(1.0, top_p=0.01, seed=0)
    assert {s(LOGITS) for _ in range(100)} == {1}


def test_sampling_follows_the_distribution() -> None:
    s = Sampler(1.0, seed=3)
    draws = np.array([s(LOGITS) for _ in range(4000)])
    probs = np.exp(LOGITS - LOGITS.max())
    probs /= probs.sum()
    observed = np.bincount(draws, minlength=LOGITS.size) / draws.size
    assert np.allclose(observed, probs, atol=0.03)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x - (x.max() + np.log(np.exp(x - x.max()).sum()))


def test_logit_bias_bans_and_forces() -> None:
    banned = Sampler(1.0, seed=0, logit_bias={1: -100.0})
    assert 1 not in {banned(LOGITS) for _ in range(500)}
    forced = Sampler(1.0, seed=0, logit_bias={3: 100.0})
    assert {forced(LOGITS) for _ in range(200)} == {3}


def test_penalties_follow_openais_formula() -> None:
    s = Sampler(0.0, presence_penalty=0.5, frequency_penalty=0.25)
    assert s.sample(LOGITS).token == 1
    assert s.sample(LOGITS).token == 2  # 3.0 - 0.25 - 0.5 < 2.9
    s.counts = {1: 3, 4: 1}
    expected = LOGITS.astype(np.float64)
    expected[1] -= 3 * 0.25 + 0.5
    expected[4] -= 1 * 0.25 + 0.5
    assert np.array_equal(s.processed(LOGITS), expected)
    # Negative penalties favour repetition.
    eager = Sampler(0.0, presence_penalty=-2.0)
    assert [eager.sample(np.array([1.0, 0.0, 0.9])).token for _ in range(3)] == [0, 0, 0]
    assert eager.counts == {0: 3}


def test_allowed_tokens_restrict_the_choice() -> None:
    allowed = np.array([0, 3, 4])
    assert Sampler(0.0).sample(LOGITS, allowed).token == 4
    s = Sampler(1.5, seed=1)
    assert {s.sample(LOGITS, allowed).token for _ in range(300)} == {0, 3, 4}


def test_logprobs_are_of_the_processed_distribution_before_temperature() -> None:
    bias = {2: 1.0}
    reference = _log_softmax(LOGITS + np.array([0, 0, 1.0, 0, 0]))
    for temperature in (0.0, 0.5, 1.0, 1.7):
        s = Sampler(temperature, seed=4, logit_bias=bias, logprobs=3)
        for _ in range(20):
            out = s.sample(LOGITS)
            assert out.logprob == pytest.approx(reference[out.token])
            assert [t for t, _ in out.top] == [2, 1, 4]
            assert [lp for _, lp in out.top] == pytest.approx(list(reference[[2, 1, 4]]))
            if out.token in dict(out.top):
                assert dict(out.top)[out.token] == out.logprob


def test_logprobs_under_a_constraint_are_renormalised_over_allowed_tokens() -> None:
    allowed = np.array([0, 3, 4])
    out = Sampler(0.0, logprobs=5).sample(LOGITS, allowed)
    reference = _log_softmax(LOGITS[allowed])
    assert out.token == 4 and out.top[0] == (4, out.logprob)
    assert [t for t, _ in out.top] == [4, 0, 3]  # only three are allowed
    assert [lp for _, lp in out.top] == pytest.approx(list(reference[[2, 0, 1]]))


def test_asking_for_logprobs_changes_no_token() -> None:
    plain, reporting = Sampler(1.0, seed=9), Sampler(1.0, seed=9, logprobs=2)
    assert plain.plain and not reporting.plain
    assert [plain(LOGITS) for _ in range(100)] == [reporting(LOGITS) for _ in range(100)]


def test_restricted_processing_equals_processing_then_restricting() -> None:
    rng = np.random.default_rng(5)
    logits = rng.standard_normal(64).astype(np.float32)
    s = Sampler(1.0, presence_penalty=0.3, frequency_penalty=0.7, logit_bias={3: 2.0, 60: -1.0})
    s.counts = {3: 2, 7: 1, 63: 4}
    for allowed in (np.arange(64), np.array([3, 5, 7, 63]), np.array([0, 1]), np.array([60])):
        assert np.array_equal(s._processed_at(logits, allowed), s.processed(logits)[allowed])
