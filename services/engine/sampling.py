"""Choosing the next token from logits: greedy, temperature, top-k, top-p, seeded.

Each sequence has its own `Sampler`, so requests with different parameters share a batch.
"""

from __future__ import annotations

import numpy as np


class Sampler:
    def __init__(
        self,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
    ) -> None:
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        # A seeded generator makes a sampled completion reproducible for the same request.
        self.rng = np.random.Generator(np.random.PCG64(seed))

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_k == 1

    def __call__(self, logits: np.ndarray) -> int:
        if self.greedy:
            return int(np.argmax(logits))
        scores = logits.astype(np.float64) / self.temperature
        if 0 < self.top_k < scores.shape[0]:
            idx = np.argpartition(scores, -self.top_k)[-self.top_k :]
        else:
            idx = np.arange(scores.shape[0])
        sub = scores[idx]
        order = np.argsort(-sub, kind="stable")
        idx, sub = idx[order], sub[order]
        probs = np.exp(sub - sub[0])
        probs /= probs.sum()
        if self.top_p < 1.0:
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            cut = int(np.searchsorted(np.cumsum(probs), self.top_p)) + 1
            idx, probs = idx[:cut], probs[:cut]
            probs /= probs.sum()
        return int(idx[self.rng.choice(probs.shape[0], p=probs)])
