"""Choosing the next token from logits: greedy, temperature, top-k, top-p, seeded; with
logit_bias, presence and frequency penalties, a constraint's allowed tokens, and logprobs.

Each sequence has its own `Sampler`, so requests with different parameters share a batch. A
sampler with none of the extras takes exactly the plain path it always took, so a plain sequence
samples the same tokens whatever else is in the batch.

The processed distribution: the logits, plus logit_bias, minus OpenAI's penalties over the tokens
generated so far (`count[t] * frequency_penalty + (count[t] > 0) * presence_penalty`), restricted
to the tokens a constraint allows. Logprobs are the log-softmax of that, before temperature,
top-k and top-p: they do not depend on temperature, and sampling at temperature 1 without top-k
or top-p draws from exactly this distribution.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sampled:
    """One sampled token, with its logprob and the top alternatives when they were asked for."""

    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)  # (token id, logprob), best first


class Sampler:
    def __init__(
        self,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        *,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        logit_bias: Mapping[int, float] | None = None,
        logprobs: int | None = None,
    ) -> None:
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        # A seeded generator makes a sampled completion reproducible for the same request.
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.presence_penalty = presence_penalty
        self.frequency_penalty = frequency_penalty
        bias = {int(k): float(v) for k, v in (logit_bias or {}).items() if v}
        self._bias_ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
        self._bias_values = np.fromiter(bias.values(), dtype=np.float64, count=len(bias))
        # None: no logprobs; 0: the sampled token's only; k: and the k most likely tokens.
        self.logprobs = logprobs
        self.counts: dict[int, int] = {}  # generated tokens so far, for the penalties

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_k == 1

    @property
    def penalised(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty)

    @property
    def plain(self) -> bool:
        """No bias, no penalties, no logprobs: the logits are sampled as they are."""
        return not self.penalised and not self._bias_ids.size and self.logprobs is None

    def __call__(self, logits: np.ndarray) -> int:
        return self.sample(logits).token

    def sample(self, logits: np.ndarray, allowed: np.ndarray | None = None) -> Sampled:
        """Samples from one row of logits; `allowed` (sorted token ids) restricts the choice."""
        if self.plain and allowed is None:
            if self.greedy:
                return Sampled(int(np.argmax(logits)))
            return Sampled(self._draw(logits.astype(np.float64)))
        sub = self.processed(logits) if allowed is None else self._processed_at(logits, allowed)
        if sub.size == 0:
            raise RuntimeError("no token is allowed at this position")
        pick = self._draw(sub)
        token = pick if allowed is None else int(allowed[pick])
        out = Sampled(token)
        if self.logprobs is not None:
            out.logprob, out.top = _logprobs(sub, allowed, pick, self.logprobs)
        if self.penalised:
            self.counts[token] = self.counts.get(token, 0) + 1
        return out

    def processed(self, logits: np.ndarray) -> np.ndarray:
        """The logits plus logit_bias minus the penalties, as float64 (a new array)."""
        scores = logits.astype(np.float64)
        if self._bias_ids.size:
            scores[self._bias_ids] += self._bias_values
        if self.counts:
            ids = np.fromiter(self.counts.keys(), dtype=np.int64, count=len(self.counts))
            n = np.fromiter(self.counts.values(), dtype=np.float64, count=len(self.counts))
            scores[ids] -= n * self.frequency_penalty + self.presence_penalty
        return scores

    def _processed_at(self, logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        """`processed(logits)[allowed]`, element for element, without touching the rest."""
        sub = logits[allowed].astype(np.float64)
        adjust: list[tuple[np.ndarray, np.ndarray]] = []
        if self._bias_ids.size:
            adjust.append((self._bias_ids, self._bias_values))
        if self.counts:
            ids = np.fromiter(self.counts.keys(), dtype=np.int64, count=len(self.counts))
            n = np.fromiter(self.counts.values(), dtype=np.float64, count=len(self.counts))
            adjust.append((ids, -(n * self.frequency_penalty + self.presence_penalty)))
        for ids, delta in adjust:
            pos = np.searchsorted(allowed, ids)
            inside = pos < allowed.size
            hit = inside.copy()
            hit[inside] = allowed[pos[inside]] == ids[inside]
            sub[pos[hit]] += delta[hit]
        return sub

    def _draw(self, scores: np.ndarray) -> int:
        """An index into `scores` (float64): the argmax, or a draw at the temperature after
        top-k and top-p."""
        if self.greedy:
            return int(np.argmax(scores))
        scores = scores / self.temperature
        if not 0 < self.top_k < scores.shape[0] and self.top_p >= 1.0:
            # Nothing is cut, so the order does not matter: no sort of the whole vocabulary.
            probs = np.exp(scores - scores.max())
            probs /= probs.sum()
            return int(self.rng.choice(probs.shape[0], p=probs))
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


def _logprobs(
    sub: np.ndarray, allowed: np.ndarray | None, pick: int, top: int
) -> tuple[float, list[tuple[int, float]]]:
    """Log-softmax over the candidates `sub`: the picked one's, and the `top` best ones."""
    peak = float(sub.max())
    norm = peak + float(np.log(np.exp(sub - peak).sum()))
    chosen = float(sub[pick]) - norm
    if top <= 0:
        return chosen, []
    k = min(top, sub.shape[0])
    best = np.argpartition(-sub, k - 1)[:k]
    # Most likely first; equal scores in token order, so the list is the same on every run.
    best = best[np.lexsort((best, -sub[best]))]
    ids = best if allowed is None else allowed[best]
    return chosen, [(int(i), float(sub[j]) - norm) for i, j in zip(ids, best, strict=True)]
