"""Next-token choice from logits: pure numpy, no I/O (the order of transformers' processors)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


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

    def __post_init__(self):
        checks = [
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0 = off), got {self.top_k}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.repetition_penalty >= 1, f"repetition_penalty must be >= 1, got {self.repetition_penalty}"),
            (self.no_repeat_ngram_size >= 0, f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}"),
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def greedy(cls, **overrides) -> "SamplingConfig":
        """Plain argmax: no penalties, no n-gram blocking (matches generate(do_sample=False))."""
        return cls(do_sample=False, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                   no_repeat_ngram_size=0, **overrides)

    def with_(self, **changes) -> "SamplingConfig":
        return replace(self, **changes)


def apply_repetition_penalty(logits: np.ndarray, context: np.ndarray, penalty: float) -> np.ndarray:
    """Divide positive (multiply negative) logits of tokens already in the context by `penalty`."""
    if penalty == 1.0 or context.size == 0:
        return logits
    out = logits.copy()
    seen = np.unique(context)
    scores = out[seen]
    out[seen] = np.where(scores > 0, scores / penalty, scores * penalty)
    return out


def banned_ngram_tokens(context: np.ndarray, n: int) -> list[int]:
    """Tokens that would complete an n-gram that already occurs in the context."""
    if n <= 0 or context.size < n:
        return []
    prefix = tuple(context[len(context) - n + 1:].tolist()) if n > 1 else ()
    tokens = context.tolist()
    return [tokens[i + n - 1] for i in range(len(tokens) - n + 1)
            if tuple(tokens[i:i + n - 1]) == prefix]


def filter_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    if k <= 0 or k >= logits.size:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits < kth, -np.inf, logits)


def filter_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the most likely tokens whose probabilities add up to at least p (always one)."""
    if p >= 1.0:
        return logits
    order = np.argsort(logits)[::-1]
    probs = softmax(logits[order])
    keep = np.cumsum(probs) - probs < p  # a token stays while the mass before it is below p
    out = np.full_like(logits, -np.inf)
    out[order[keep]] = logits[order[keep]]
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / e.sum()


def next_token(logits: np.ndarray, context: np.ndarray, cfg: SamplingConfig,
               rng: np.random.Generator) -> int:
    """The next token id after `context` (prompt + reply so far) given the model's `logits`."""
    scores = np.asarray(logits, dtype=np.float64).reshape(-1)
    scores = apply_repetition_penalty(scores, context, cfg.repetition_penalty)
    banned = banned_ngram_tokens(context, cfg.no_repeat_ngram_size)
    if banned:
        scores = scores.copy()
        scores[banned] = -np.inf
        if not np.isfinite(scores).any():  # everything banned: fall back to the unfiltered choice
            return int(np.argmax(logits))
    if not cfg.do_sample:
        return int(np.argmax(scores))
    scores = filter_top_p(filter_top_k(scores / cfg.temperature, cfg.top_k), cfg.top_p)
    return int(rng.choice(scores.size, p=softmax(scores)))
