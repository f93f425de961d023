"""Next-token choice from logits: pure numpy, no I/O (the order of transformers' processors)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TypedDict, Unpack

import numpy as np


class SamplingChanges(TypedDict, total=False):
    """Fields of SamplingConfig to change (its keyword arguments, typed)."""

    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    no_repeat_ngram_size: int
    max_new_tokens: int
    stop_ids: tuple[int, ...]


@dataclass(frozen=True)
class SamplingConfig:
    """How a reply is generated; defaults are the ruDialoGPT card's."""

    do_sample: bool = True  # False: plain argmax (greedy)
    temperature: float = 1.2  # > 0; divides the logits
    top_k: int = 10  # keep the k most likely tokens; 0 keeps all
    top_p: float = 0.95  # keep the smallest set with this much probability; 1.0 keeps all
    repetition_penalty: float = 1.2  # >= 1; makes tokens already in the context less likely
    no_repeat_ngram_size: int = 2  # forbid repeating an n-gram of the context; 0 turns it off
    max_new_tokens: int = 40  # the reply's length limit in tokens
    stop_ids: tuple[int, ...] = field(default=())  # generation ends on any of these (not emitted)

    def __post_init__(self) -> None:
        checks = [
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0 = off), got {self.top_k}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.repetition_penalty >= 1, f"repetition_penalty must be >= 1, got {self.repetition_penalty}"),
            (
                self.no_repeat_ngram_size >= 0,
                f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}",
            ),
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def greedy(cls, **overrides: Unpack[SamplingChanges]) -> SamplingConfig:
        """Plain argmax: no penalties, no n-gram blocking (matches generate(do_sample=False))."""
        plain = cls(
            do_sample=False,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
        )
        return plain.with_(**overrides)

    def with_(self, **changes: Unpack[SamplingChanges]) -> SamplingConfig:
        return replace(self, **changes)


def apply_repetition_penalty(scores: np.ndarray, context: np.ndarray, penalty: float) -> None:
    """In place: divide positive (multiply negative) scores of tokens already in the context."""
    if penalty == 1.0 or context.size == 0:
        return
    seen = scores[context]  # gathered before writing, so repeated ids are harmless
    scores[context] = np.where(seen > 0, seen / penalty, seen * penalty)


def banned_ngram_tokens(context: np.ndarray, n: int) -> np.ndarray:
    """Tokens that would complete an n-gram that already occurs in the context (in its order)."""
    if n <= 0 or context.size < n:
        return np.empty(0, dtype=np.int64)
    starts = context.size - n + 1  # n-grams in the context
    hit = np.ones(starts, dtype=bool)
    for j, token in enumerate(context[starts:]):  # the last n - 1 tokens, the prefix to match
        hit &= context[j : j + starts] == token
    return context[n - 1 :][hit]


def top_k_ids(scores: np.ndarray, k: int) -> np.ndarray:
    """Ids (ascending) of the k best finite scores, ties with the k-th kept; k = 0 keeps all finite."""
    if 0 < k < scores.size:
        kth = np.partition(scores, -k)[-k]  # O(vocab), no sort
        if kth > -np.inf:
            return np.flatnonzero(scores >= kth)
    return np.flatnonzero(scores > -np.inf)


def top_p_mask(values: np.ndarray, p: float) -> np.ndarray:
    """Which of `values` form the smallest most likely set with probability >= p (always one);
    among equal values at the cut, the earlier ones stay."""
    keep = np.ones(values.size, dtype=bool)
    if p >= 1.0 or values.size == 0:
        return keep
    order = np.argsort(-values, kind="stable")
    probs = softmax(values[order])
    keep[order[np.cumsum(probs) - probs >= p]] = False  # dropped: the mass before it reached p
    return keep


def softmax(x: np.ndarray) -> np.ndarray:
    e: np.ndarray = np.exp(x - np.max(x))
    return e / float(e.sum())


def candidates(logits: np.ndarray, context: np.ndarray, cfg: SamplingConfig) -> tuple[np.ndarray, np.ndarray]:
    """The tokens that may come next (ascending ids) and their processed scores (float64).

    The order of transformers' generate(): repetition penalty, n-gram ban, then, when sampling,
    temperature, top-k and top-p; greedy keeps the single best. Top-p sorts only top-k's
    survivors. Empty when the context bans every token."""
    scores = np.array(logits, dtype=np.float64).reshape(-1)
    apply_repetition_penalty(scores, context, cfg.repetition_penalty)
    scores[banned_ngram_tokens(context, cfg.no_repeat_ngram_size)] = -np.inf
    if not cfg.do_sample:
        best = np.argmax(scores, keepdims=True)
        return (best, scores[best]) if scores[best[0]] > -np.inf else (best[:0], scores[:0])
    scores /= cfg.temperature
    ids = top_k_ids(scores, cfg.top_k)
    values = scores[ids]
    keep = top_p_mask(values, cfg.top_p)
    return ids[keep], values[keep]


def next_token(logits: np.ndarray, context: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator) -> int:
    """The next token id after `context` (prompt + reply so far) given the model's `logits`."""
    ids, scores = candidates(logits, np.asarray(context, dtype=np.int64), cfg)
    if ids.size == 0:  # everything banned: fall back to the unfiltered choice
        return int(np.argmax(logits))
    if not cfg.do_sample:
        return int(ids[0])
    # Inverse-CDF draw of one uniform: what rng.choice(ids.size, p=...) does, minus its checks.
    cdf = np.cumsum(softmax(scores))
    return int(ids[np.searchsorted(cdf / cdf[-1], rng.random(), side="right")])
