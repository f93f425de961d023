"""Next-token choice from logits: pure numpy, no I/O, transformers' processors in generate()'s order.

One pipeline over a batch of rows, each row some tokens (`ids`) with their logits and a `bound`:
the largest logit any token outside them may have. The server's K most likely tokens have the
K-th logit as their bound; a whole row is K = vocab tokens with nothing outside (bound -inf).
The rule: the repetition penalty and the n-gram ban only lower scores and temperature scales
them all alike, so no token outside the K can score above the bound (over the temperature); a
choice that beats it (greedy: the best score; sampling: the top-k's k-th score) is exactly the
whole row's choice, with the same random draw. Elsewhere the row is unproven (-1) and the caller
fetches the whole row. Both order the kept tokens by id and sum sequentially (cumsum), so a row's
token does not depend on its padding, its K or the other rows of the batch: to the last bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple, TypedDict, Unpack

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
        for ok, name, rule in [
            (self.temperature > 0, "temperature", "> 0"),
            (self.top_k >= 0, "top_k", ">= 0 (0 = off)"),
            (0 < self.top_p <= 1, "top_p", "in (0, 1]"),
            (self.repetition_penalty >= 1, "repetition_penalty", ">= 1"),
            (self.no_repeat_ngram_size >= 0, "no_repeat_ngram_size", ">= 0"),
            (self.max_new_tokens >= 1, "max_new_tokens", ">= 1"),
        ]:
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)}")

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


class Context:
    """A generation's context (prompt, then the reply so far) and what the processors look up in
    it, kept up to date token by token: the tokens seen, and which tokens followed each n-1 tokens."""

    def __init__(self, ids: list[int] | np.ndarray, ngram: int):
        self.tokens: list[int] = []
        self._seen = np.zeros(1 << 16, bool)  # by id: in the context; the last entry stays False
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
        if token >= self._seen.size - 1:
            self._seen = np.concatenate([self._seen, np.zeros(token + 2, bool)])
        self._seen[token] = True
        n = self.ngram
        if n > 0 and len(self.tokens) >= n:
            self.follows.setdefault(tuple(self.tokens[len(self.tokens) - n : -1]), set()).add(token)

    def banned(self) -> set[int]:
        """Tokens that would complete an n-gram already in the context."""
        n = self.ngram
        if n <= 0 or len(self.tokens) < n:
            return set()
        return self.follows.get(tuple(self.tokens[len(self.tokens) - (n - 1) :]), set())

    def seen_among(self, ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Which of `ids` (>= 0) are in the context (an id past the array reads its last entry: False)."""
        mask: np.ndarray = self._seen.take(ids, out=out, mode="clip")
        return mask


Uniforms = Callable[[np.ndarray], np.ndarray]  # rows that draw ([R] bool) -> a uniform for each, in order
_NONE = np.int64(np.iinfo(np.int64).max)  # an id above every id
PREFILTER = 256  # next_token() tries this many of the row first: O(vocab) to find, then small arrays


class Kept(NamedTuple):
    """The tokens each row may continue with: ascending ids, then padding (score -inf)."""

    ids: np.ndarray  # [R, m] int64
    scores: np.ndarray  # [R, m] float64, the processed scores (for unproven rows, top-p not applied)
    proven: np.ndarray  # [R] bool: these are exactly the whole row's (and not every token is banned)


def kept(
    ids: np.ndarray, logits: np.ndarray, bound: np.ndarray, contexts: Sequence[Context], cfg: SamplingConfig
) -> Kept:
    """Every processor once, over `ids` [R, K] (any order) and `logits` [R, K], each row's `bound`
    [R] and its context (tracking cfg's n-grams): repetition penalty, n-gram ban, then greedy keeps
    the best (the lowest id among equals); sampling divides by the temperature, keeps the top-k
    (ties with the k-th stay), then the smallest most likely set of those with mass >= top_p."""
    ids, bound = np.asarray(ids, np.int64), np.asarray(bound, np.float64)
    scores = np.array(logits, dtype=np.float64)  # a copy: written in place below
    if (penalty := cfg.repetition_penalty) != 1.0:
        seen = np.empty(ids.shape, bool)
        for c, row, out in zip(contexts, ids, seen, strict=True):
            c.seen_among(row, out)
        flat, hit = scores.reshape(-1), np.flatnonzero(seen)  # (flat: a view of scores)
        flat[hit] = np.where(flat[hit] > 0, flat[hit] / penalty, flat[hit] * penalty)
    banned = [(r, t) for r, c in enumerate(contexts) for t in c.banned()] if cfg.no_repeat_ngram_size else []
    if banned:  # (row, token): a few per row at most
        rows, tokens = np.array(banned).T
        hit = np.flatnonzero(ids[rows] == tokens[:, None])
        scores[rows[hit // ids.shape[1]], hit % ids.shape[1]] = -np.inf
    if not cfg.do_sample:
        best = scores.max(axis=1)
        return Kept(_first_best(ids, scores)[:, None], best[:, None], best > bound)
    scores /= cfg.temperature
    k = ids.shape[1] - (cfg.top_k if 0 < cfg.top_k < ids.shape[1] else ids.shape[1])  # from the bottom
    kth = np.partition(scores, k, axis=1)[:, k]
    keep = scores >= np.maximum(kth, np.finfo(np.float64).min)[:, None]  # (never a score of -inf)
    width = max(int(np.count_nonzero(keep, axis=1).max()), 1)
    at = np.argsort(np.where(keep, ids, _NONE), axis=1, kind="stable")[:, :width]  # kept, ascending ids
    rows = np.arange(ids.shape[0])[:, None]
    ids, scores = ids[rows, at], np.where(keep[rows, at], scores[rows, at], -np.inf)
    proven = ((kth > bound / cfg.temperature) | (bound == -np.inf)) & (scores[:, 0] > -np.inf)
    if cfg.top_p < 1.0:
        some = slice(None) if proven.all() else proven
        scores[some] = _top_p(scores[some], cfg.top_p)
    return Kept(ids, scores, proven)


def _top_p(scores: np.ndarray, p: float) -> np.ndarray:
    """Keeps the smallest most likely set with mass >= p of each row (equal scores: lower id first)."""
    rows, by_value = np.arange(scores.shape[0])[:, None], np.argsort(-scores, axis=1, kind="stable")
    ordered = scores[rows, by_value]  # stable: ascending ids among equal scores
    mass = np.cumsum(np.exp(ordered - ordered[:, :1]), axis=1)  # sequential: padding adds exact zeros
    ordered[:, 1:][mass[:, :-1] >= p * mass[:, -1:]] = -np.inf  # the mass before it reached p
    scores[rows, by_value] = ordered
    return scores


def _first_best(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The lowest id among each row's best scores."""
    best = scores == scores.max(axis=1, keepdims=True)
    first: np.ndarray = np.min(ids, axis=1, where=best, initial=_NONE)
    return first


def sample(
    ids: np.ndarray,
    logits: np.ndarray,
    bound: np.ndarray,
    contexts: Sequence[Context],
    cfg: SamplingConfig,
    uniforms: Uniforms,
) -> np.ndarray:
    """The next token of each row ([R] int64; arguments as kept()), or -1 where the row's tokens
    cannot prove it. Greedy takes the kept token; sampling draws over the kept tokens (ascending
    ids) by the inverse CDF of one uniform per proven row, asked for those rows alone. A whole row
    (bound -inf) whose context bans every token falls back to its best logit."""
    found, scores, proven = kept(ids, logits, bound, contexts, cfg)
    tokens, some = np.full(proven.size, -1, np.int64), slice(None) if proven.all() else proven
    if not cfg.do_sample:
        tokens[some] = found[some, 0]
    elif proven.any():
        found, scores = found[some], scores[some]
        cdf = np.cumsum(np.exp(scores - scores.max(axis=1, keepdims=True)), axis=1)  # sequential sums
        u = np.asarray(uniforms(proven), np.float64)
        tokens[some] = found[np.arange(found.shape[0]), (cdf / cdf[:, -1:] <= u[:, None]).sum(axis=1)]
    if not proven.all() and (fallback := ~proven & (np.asarray(bound) == -np.inf)).any():
        tokens[fallback] = _first_best(np.asarray(ids)[fallback], np.asarray(logits)[fallback])
    return tokens


def drawn_from(rng: np.random.Generator) -> Uniforms:
    """Uniforms from one generator: one rng.random() per drawing row, nothing for the others."""
    return lambda rows: rng.random(int(rows.sum()))


def choose(
    ids: np.ndarray, logits: np.ndarray, context: Context, cfg: SamplingConfig, rng: np.random.Generator
) -> int | None:
    """next_token() from the server's K candidates `ids` with their `logits`: the same token for
    the same `rng`, or None (and `rng` untouched) where the candidates cannot prove it."""
    bound = np.array([np.min(logits)], np.float64)
    token = int(sample(ids[None], logits[None], bound, [context], cfg, drawn_from(rng))[0])
    return None if token < 0 else token


def next_token(
    logits: np.ndarray, context: Context | np.ndarray, cfg: SamplingConfig, rng: np.random.Generator
) -> int:
    """The next token id after `context` (prompt + reply so far, or its Context) from the whole row:
    from its PREFILTER most likely tokens where they prove the choice (the rule above), else all."""
    if not isinstance(context, Context):
        context = Context(np.asarray(context).reshape(-1), cfg.no_repeat_ngram_size)
    row = np.asarray(logits).reshape(-1)
    if row.size > PREFILTER and not needs_full_row(cfg, PREFILTER):
        top = np.argpartition(row, -PREFILTER)[-PREFILTER:]
        if (token := choose(top, row[top], context, cfg, rng)) is not None:
            return token
    ids = np.arange(row.size)[None]
    return int(sample(ids, row[None], np.array([-np.inf]), [context], cfg, drawn_from(rng))[0])


def needs_full_row(cfg: SamplingConfig, k: int) -> bool:
    """Whether K candidates can never prove a choice under `cfg` (sampling without a top-k below K)."""
    return cfg.do_sample and not 0 < cfg.top_k < k
