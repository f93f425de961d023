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


class Contexts:
    """The contexts (prompt, then the reply so far) of a batch of generations, a row each, as
    arrays, with what the processors look up in them: which ids a row holds, and its tokens for the
    n-gram ban. Rows are updated a round at a time (append), never token by token in Python."""

    WIDTH = 1 << 16  # ids tracked per row; an id past it reads the last column, which stays False

    def __init__(self, rows: int = 1, length: int = 1024):
        self.tokens = np.zeros((rows, length), np.int64)
        self.length = np.zeros(rows, np.int64)  # tokens in each row's context
        self.seen = np.zeros((rows, self.WIDTH), bool)

    @classmethod
    def of(cls, *contexts: Sequence[int] | np.ndarray) -> Contexts:
        """A table whose row i holds contexts[i]."""
        table = cls(len(contexts), max((len(c) for c in contexts), default=0) + 64)
        for row, ids in enumerate(contexts):
            table.fill(row, ids)
        return table

    def fill(self, row: int, ids: Sequence[int] | np.ndarray) -> None:
        """Row `row` holds `ids` from now on (what it held before is gone)."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        self.seen[row, np.minimum(self.tokens[row, : self.length[row]], self.WIDTH - 1)] = False
        self.seen[row, -1] = False
        self._room(ids.size)
        self.tokens[row, : ids.size], self.length[row] = ids, ids.size
        self.seen[row, np.minimum(ids, self.WIDTH - 1)] = True
        self.seen[row, -1] = False

    def append(self, rows: np.ndarray, tokens: np.ndarray) -> None:
        """Each of `rows` (distinct) gets its token of `tokens` appended."""
        self._room(int(self.length[rows].max(initial=0)) + 1)
        self.tokens[rows, self.length[rows]] = tokens
        self.length[rows] += 1
        self.seen[rows, np.minimum(tokens, self.WIDTH - 1)] = True
        self.seen[rows, -1] = False

    def ids(self, row: int, start: int = 0, stop: int | None = None) -> list[int]:
        """Row `row`'s context from `start` (to `stop`), as a list."""
        end = int(self.length[row]) if stop is None else min(stop, int(self.length[row]))
        ids: list[int] = self.tokens[row, start:end].tolist()
        return ids

    def seen_among(self, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """[R, K]: which of each row's `ids` (>= 0) are in its context."""
        at = rows[:, None] * self.WIDTH + np.minimum(ids, self.WIDTH - 1)
        mask: np.ndarray = self.seen.reshape(-1).take(at)  # (take on the flat table: the fastest gather)
        return mask

    def banned(self, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(batch index, token) for each token that would complete an n-gram already in its row's
        context: what followed an earlier occurrence of the row's last n - 1 tokens."""
        length = self.length[rows]
        width = int(length.max(initial=0)) - n + 1  # n-grams of the longest context
        if n <= 0 or width <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        tokens = self.tokens[rows, : width + n - 1]
        batch = np.arange(rows.size)
        match = np.arange(width)[None] < (length - n + 1)[:, None]  # the n-gram lies in the context
        for i in range(n - 1):  # its first n - 1 tokens are the last n - 1
            match &= tokens[:, i : i + width] == tokens[batch, np.maximum(length - n + 1 + i, 0)][:, None]
        at, start = np.nonzero(match)
        return at, tokens[at, start + n - 1]

    def _room(self, length: int) -> None:
        if length > self.tokens.shape[1]:
            grown = np.zeros((self.tokens.shape[0], max(length, 2 * self.tokens.shape[1])), np.int64)
            grown[:, : self.tokens.shape[1]] = self.tokens
            self.tokens = grown

    def grow(self, rows: int) -> None:
        """Room for at least `rows` rows (the ones held keep their contents)."""
        if rows > self.length.size:
            extra = rows - self.length.size
            self.tokens = np.concatenate([self.tokens, np.zeros((extra, self.tokens.shape[1]), np.int64)])
            self.length = np.concatenate([self.length, np.zeros(extra, np.int64)])
            self.seen = np.concatenate([self.seen, np.zeros((extra, self.WIDTH), bool)])


Uniforms = Callable[[np.ndarray], np.ndarray]  # rows that draw ([R] bool) -> a uniform for each, in order
_NONE = np.int64(np.iinfo(np.int64).max)  # an id above every id
PREFILTER = 256  # next_token() tries this many of the row first: O(vocab) to find, then small arrays


class Kept(NamedTuple):
    """The tokens each row may continue with: ascending ids, then padding (score -inf)."""

    ids: np.ndarray  # [R, m] int64
    scores: np.ndarray  # [R, m] float64, the processed scores (for unproven rows, top-p not applied)
    proven: np.ndarray  # [R] bool: these are exactly the whole row's (and not every token is banned)


def kept(
    ids: np.ndarray,
    logits: np.ndarray,
    bound: np.ndarray,
    contexts: Contexts,
    rows: np.ndarray,
    cfg: SamplingConfig,
) -> Kept:
    """Every processor once, over `ids` [R, K] (any order) and `logits` [R, K], each row's `bound`
    [R] and its context (`contexts`' row `rows[i]`): repetition penalty, n-gram ban, then greedy
    keeps the best (the lowest id among equals); sampling divides by the temperature, keeps the
    top-k (ties with the k-th stay), then the smallest most likely set of those with mass >= top_p."""
    ids, bound, rows = np.asarray(ids, np.int64), np.asarray(bound, np.float64), np.asarray(rows)
    scores = np.array(logits, dtype=np.float64)  # a copy: written in place below
    if (penalty := cfg.repetition_penalty) != 1.0:
        flat, hit = scores.reshape(-1), np.flatnonzero(contexts.seen_among(rows, ids))  # flat: a view
        flat[hit] = np.where(flat[hit] > 0, flat[hit] / penalty, flat[hit] * penalty)
    at, tokens = contexts.banned(rows, cfg.no_repeat_ngram_size)
    if at.size:  # (batch index, token): a few per row at most
        hit = np.flatnonzero(ids[at] == tokens[:, None])
        scores[at[hit // ids.shape[1]], hit % ids.shape[1]] = -np.inf
    if not cfg.do_sample:
        best = scores.max(axis=1)
        return Kept(_first_best(ids, scores)[:, None], best[:, None], best > bound)
    scores /= cfg.temperature
    n, rows = ids.shape[1], np.arange(ids.shape[0])[:, None]
    k = cfg.top_k if 0 < cfg.top_k < n else n
    top = np.argpartition(scores, n - k, axis=1)[:, n - k :]  # the k best of each row, in any order
    kth = scores[rows, top].min(axis=1)
    if k < n and (np.count_nonzero(scores >= kth[:, None], axis=1) == k).all():  # no ties at the k-th
        at = np.take_along_axis(top, np.argsort(ids[rows, top], axis=1), axis=1)  # ascending ids
        ids, scores = ids[rows, at], scores[rows, at]
    else:  # ties with the k-th stay, or fewer than k finite: the kept ones first, by ascending id
        keep = scores >= np.maximum(kth, np.finfo(np.float64).min)[:, None]  # (never a score of -inf)
        width = max(int(np.count_nonzero(keep, axis=1).max()), 1)
        at = np.argsort(np.where(keep, ids, _NONE), axis=1, kind="stable")[:, :width]
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
    contexts: Contexts,
    rows: np.ndarray,
    cfg: SamplingConfig,
    uniforms: Uniforms,
) -> np.ndarray:
    """The next token of each row ([R] int64; arguments as kept()), or -1 where the row's tokens
    cannot prove it. Greedy takes the kept token; sampling draws over the kept tokens (ascending
    ids) by the inverse CDF of one uniform per proven row, asked for those rows alone. A whole row
    (bound -inf) whose context bans every token falls back to its best logit."""
    found, scores, proven = kept(ids, logits, bound, contexts, rows, cfg)
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
    ids: np.ndarray,
    logits: np.ndarray,
    contexts: Contexts,
    row: int,
    cfg: SamplingConfig,
    rng: np.random.Generator,
) -> int | None:
    """next_token() from the server's K candidates `ids` with their `logits`: the same token for
    the same `rng`, or None (and `rng` untouched) where the candidates cannot prove it."""
    bound = np.array([np.min(logits)], np.float64)
    token = int(sample(ids[None], logits[None], bound, contexts, np.array([row]), cfg, drawn_from(rng))[0])
    return None if token < 0 else token


def next_token(
    logits: np.ndarray, contexts: Contexts, row: int, cfg: SamplingConfig, rng: np.random.Generator
) -> int:
    """The next token id after row `row`'s context from the whole row of `logits`: from its
    PREFILTER most likely tokens where they prove the choice (the rule above), else all."""
    logits = np.asarray(logits).reshape(-1)
    if logits.size > PREFILTER and not needs_full_row(cfg, PREFILTER):
        top = np.argpartition(logits, -PREFILTER)[-PREFILTER:]
        if (token := choose(top, logits[top], contexts, row, cfg, rng)) is not None:
            return token
    ids, rows = np.arange(logits.size)[None], np.array([row])
    return int(sample(ids, logits[None], np.array([-np.inf]), contexts, rows, cfg, drawn_from(rng))[0])


def needs_full_row(cfg: SamplingConfig, k: int) -> bool:
    """Whether K candidates can never prove a choice under `cfg` (sampling without a top-k below K)."""
    return cfg.do_sample and not 0 < cfg.top_k < k
