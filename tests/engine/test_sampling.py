from __future__ import annotations

import numpy as np

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
