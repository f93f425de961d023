"""Next-token choice from logits: pure numpy, no I/O (the order of transformers' processors).

Two ways in: the whole row of logits (`next_token`), or the server's K most likely tokens and
their logits (`choose`), which gives exactly the same token whenever the K candidates prove
it: every processor here only lowers a score (the repetition penalty, the n-gram ban) or scales
all of them alike (temperature), so a token outside the K can never score above the K-th logit.
Where the candidates cannot prove the choice, `choose` says so and the caller asks for the row.
"""

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


class Context:
    """A generation's context (prompt, then the reply so far) and what the processors look up in
    it, kept up to date token by token: the tokens seen, and which tokens followed each n-1 tokens."""

    def __init__(self, ids: list[int] | np.ndarray, ngram: int):
        self.tokens: list[int] = []
        self._seen = np.zeros(1024, bool)  # by id: in the context (grown as ids come)
        self.ngram = ngram
        self.follows: dict[tuple[int, ...], set[int]] = {}
        for token in ids:
            self.append(int(token))

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def seen(self) -> set[int]:
        """The ids in the context."""
        return set(np.flatnonzero(self._seen).tolist())

    def append(self, token: int) -> None:
        self.tokens.append(token)
        self._grow(token)
        self._seen[token] = True
        n = self.ngram
        if n > 0 and len(self.tokens) >= n:
            self.follows.setdefault(tuple(self.tokens[len(self.tokens) - n : -1]), set()).add(token)

    def banned(self) -> set[int]:
        """Tokens that would complete an n-gram already in the context (banned_ngram_tokens)."""
        n = self.ngram
        if n <= 0 or len(self.tokens) < n:
            return set()
        return self.follows.get(tuple(self.tokens[len(self.tokens) - (n - 1) :]), set())

    def array(self) -> np.ndarray:
        return np.asarray(self.tokens, dtype=np.int64)

    def seen_among(self, ids: np.ndarray) -> np.ndarray:
        """Which of `ids` (>= 0) are in the context."""
        self._grow(int(ids.max()))
        mask: np.ndarray = self._seen[ids]
        return mask

    def _grow(self, token: int) -> None:
        if token >= self._seen.size:
            self._seen = np.concatenate([self._seen, np.zeros(max(token + 1, 2 * self._seen.size), bool)])


def top_candidates(
    ids: np.ndarray, logits: np.ndarray, context: Context, cfg: SamplingConfig
) -> tuple[np.ndarray, np.ndarray] | None:
    """candidates() of the whole row, from its K most likely tokens alone (`ids`, `logits`); None
    where they cannot prove the result: every other token's logit is at most the smallest of the
    K, and no processor raises a score, so a choice that beats that bound is exact."""
    if needs_full_row(cfg, ids.size):
        return None
    plain = cfg.repetition_penalty == 1.0 and cfg.no_repeat_ngram_size == 0
    if plain and not cfg.do_sample and ids.size > 1 and logits[0] > logits[1]:  # greedy, a clear best
        return ids[:1].astype(np.int64), logits[:1].astype(np.float64)  # (the server sends the best first)
    order = np.argsort(ids, kind="stable")  # ascending ids, the whole row's order
    ids = ids[order].astype(np.int64)
    scores = logits[order].astype(np.float64)
    bound = float(scores.min())
    if cfg.repetition_penalty != 1.0:
        seen = context.seen_among(ids)
        picked = scores[seen]
        scores[seen] = np.where(picked > 0, picked / cfg.repetition_penalty, picked * cfg.repetition_penalty)
    for token in context.banned():  # a few at most: the tokens that followed the last n-1 before
        scores[ids == token] = -np.inf
    if not cfg.do_sample:
        best = int(np.argmax(scores))
        return (ids[best : best + 1], scores[best : best + 1]) if scores[best] > bound else None
    scores /= cfg.temperature
    kth = np.partition(scores, -cfg.top_k)[-cfg.top_k]
    if not kth > bound / cfg.temperature:
        return None
    keep = scores >= kth
    ids, values = ids[keep], scores[keep]
    mask = top_p_mask(values, cfg.top_p)
    return ids[mask], values[mask]


def _draw(ids: np.ndarray, scores: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator) -> int:
    if not cfg.do_sample:
        return int(ids[0])
    # Inverse-CDF draw of one uniform: what rng.choice(ids.size, p=...) does, minus its checks.
    cdf = np.cumsum(softmax(scores))
    return int(ids[np.searchsorted(cdf / cdf[-1], rng.random(), side="right")])


def next_token(logits: np.ndarray, context: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator) -> int:
    """The next token id after `context` (prompt + reply so far) given the model's `logits`."""
    ids, scores = candidates(logits, np.asarray(context, dtype=np.int64), cfg)
    if ids.size == 0:  # everything banned: fall back to the unfiltered choice
        return int(np.argmax(logits))
    return _draw(ids, scores, cfg, rng)


def choose(
    ids: np.ndarray, logits: np.ndarray, context: Context, cfg: SamplingConfig, rng: np.random.Generator
) -> int | None:
    """next_token() from the K candidates `ids` with their `logits`: the same token for the same
    `rng`, or None (and `rng` untouched) where the candidates cannot prove it."""
    found = top_candidates(ids, logits, context, cfg)
    return None if found is None else _draw(*found, cfg, rng)


def needs_full_row(cfg: SamplingConfig, k: int) -> bool:
    """Whether K candidates can never prove a choice under `cfg` (sampling without a top-k below K)."""
    return cfg.do_sample and not 0 < cfg.top_k < k
