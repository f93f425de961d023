"""client/sampling.py: validation, each processor, the sampling distribution, parity with
transformers' own logits processors and with the previous full-vocabulary implementation, and the
choice from the server's K candidates equal to the choice from the whole row."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from client.sampling import (
    Contexts,
    SamplingConfig,
    choose,
    drawn_from,
    kept,
    needs_full_row,
    next_token,
    sample,
)

PLAIN = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0)


def candidates(logits, context, cfg):
    """The pipeline on a whole row: the tokens that may come next (ascending ids), their scores."""
    logits, one = np.asarray(logits, dtype=np.float64), Contexts.of(context)
    whole = np.arange(logits.size)[None], logits[None], np.array([-np.inf])
    ids, scores, proven = kept(*whole, one, np.array([0]), cfg)
    live = scores[0] > -np.inf
    assert proven[0] == live.any()  # a whole row proves itself wherever a token is left
    return ids[0][live], scores[0][live]


def whole_row(logits, context, cfg, rng):
    """The pipeline on all of a row at once (next_token() tries its most likely tokens first)."""
    ids, bound = np.arange(logits.size)[None], np.array([-np.inf])
    return int(sample(ids, logits[None], bound, Contexts.of(context), np.array([0]), cfg, drawn_from(rng))[0])


def after(logits, context, cfg, rng):
    """next_token() after the tokens `context`."""
    return next_token(logits, Contexts.of(context), 0, cfg, rng)


def softmax(x):
    e = np.exp(x - np.max(x))
    return e / e.sum()


def banned_ngram_tokens(context, n):
    """The n-gram ban's reference: every token that followed an occurrence of the last n-1 tokens."""
    toks = list(context)
    if n <= 0 or len(toks) < n:
        return []
    prefix = toks[len(toks) - n + 1 :]
    return [toks[i + n - 1] for i in range(len(toks) - n + 1) if toks[i : i + n - 1] == prefix]


INVALID = [
    (dict(temperature=0), "temperature"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(repetition_penalty=0.5), "repetition_penalty"),
    (dict(no_repeat_ngram_size=-2), "no_repeat_ngram_size"),
    (dict(max_new_tokens=0), "max_new_tokens"),
]


@pytest.mark.parametrize("kwargs,name", INVALID)
def test_invalid_settings_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SamplingConfig(**kwargs)


def test_the_readme_states_the_defaults_the_code_has():
    """The README quotes the card's sampling settings: they must be SamplingConfig's defaults."""
    readme = " ".join(
        (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").split()
    )
    [card] = re.findall(r"the card's (top_k=[^)]*)\)", readme)
    stated = dict(re.findall(r"\b(\w+)=([\d.]+)", card))
    defaults = {f.name: f.default for f in fields(SamplingConfig) if f.name in stated}
    assert len(defaults) == 6, f"the README states {sorted(defaults)} of SamplingConfig's defaults"
    assert {name: type(value)(stated[name]) for name, value in defaults.items()} == defaults


def test_repetition_penalty_lowers_seen_tokens_both_signs():
    _, scores = candidates([2.0, -2.0, 1.0], [0, 1, 0, 0], PLAIN.with_(repetition_penalty=2.0))
    assert scores.tolist() == [1.0, -4.0, 1.0]  # a repeated id is penalized once


@pytest.mark.parametrize(
    "context,n,banned",
    [
        ([1, 2, 3, 1], 2, [2]),  # "1 2" seen: after 1, 2 is banned
        ([1, 2, 1, 3, 1], 2, [2, 3]),
        ([1, 2, 3, 1, 2], 3, [3]),
        ([1, 2, 3], 2, []),
        ([4], 2, []),
        ([1, 1], 1, [1, 1]),
        ([1, 2, 1], 0, []),
    ],
)
def test_banned_ngrams(context, n, banned):
    assert banned_ngram_tokens(context, n) == banned
    at, tokens = Contexts.of(context).banned(np.array([0]), n)
    assert (at == 0).all() and sorted(tokens.tolist()) == sorted(banned)
    ids, _ = candidates(np.zeros(5), context, PLAIN.with_(no_repeat_ngram_size=n))
    assert ids.tolist() == [i for i in range(5) if i not in banned]


def test_top_k_keeps_k_best_and_ties():
    def top_k(scores, k):
        return candidates(scores, [], PLAIN.with_(top_k=k))[0].tolist()

    assert top_k([0.1, 3.0, 2.0, -1.0, 2.5], 2) == [1, 4]
    assert top_k([0.1, 3.0, 2.5, -1.0, 2.5], 2) == [1, 2, 4]  # a tie with the k-th stays
    assert top_k([1.0, -np.inf, 2.0], 0) == [0, 2]  # off: every finite score
    assert top_k([1.0, -np.inf, -np.inf], 2) == [0]  # fewer finite than k


@pytest.mark.parametrize("p,size", [(0.5, 1), (0.7, 2), (0.9, 3), (0.99, 4), (1.0, 4)])
def test_top_p_keeps_smallest_set_with_mass(p, size):
    ids, _ = candidates(np.log(np.array([0.1, 0.6, 0.05, 0.25])), [], PLAIN.with_(top_p=p))
    assert ids.size == size and 1 in ids  # the most likely always stays


def test_greedy_is_argmax_without_penalties():
    cfg = SamplingConfig.greedy()
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 5.0, 4.9])
    assert after(logits, np.array([1, 1, 1]), cfg, rng) == 1


def test_seeded_sampling_is_reproducible():
    logits = np.random.default_rng(1).normal(size=500)

    def draw(seed):
        return [
            after(logits, np.array([], np.int64), SamplingConfig(), np.random.default_rng(seed))
            for _ in range(20)
        ]

    assert draw(7) == draw(7)


def test_top_k_top_p_sampling_matches_the_filtered_distribution():
    """Statistically: 20k draws land only in the filtered set, with its renormalized frequencies."""
    logits = np.log(np.array([0.4, 0.3, 0.15, 0.1, 0.05]))
    cfg = SamplingConfig(temperature=1.0, top_k=4, top_p=0.8, repetition_penalty=1.0, no_repeat_ngram_size=0)
    rng = np.random.default_rng(0)
    counts = np.bincount([after(logits, np.array([], np.int64), cfg, rng) for _ in range(20000)], minlength=5)
    assert counts[3:].sum() == 0  # 0.4 + 0.3 < 0.8 <= 0.4 + 0.3 + 0.15: three tokens stay
    expected = softmax(logits[:3]) * 20000
    chi2 = (((counts[:3] - expected) ** 2) / expected).sum()
    assert chi2 < 13.8  # chi-square, 2 degrees of freedom, p = 0.001


def test_temperature_flattens():
    logits = np.array([2.0, 0.0])

    def cfg(t):
        return SamplingConfig(
            temperature=t, top_k=0, top_p=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0
        )

    def share(t):
        return np.mean([after(logits, np.array([], np.int64), cfg(t), rng) == 0 for _ in range(4000)])

    rng = np.random.default_rng(3)
    assert share(0.5) > share(1.0) > share(3.0)


def test_all_banned_falls_back_to_argmax():
    cfg = SamplingConfig(no_repeat_ngram_size=1, top_k=0)
    assert after(np.array([1.0, 0.0]), np.array([0, 1]), cfg, np.random.default_rng(0)) == 0


def _cases(n: int, vocab: int, seed: int, ties: bool = True):
    """Random logits (with a few exact ties at the top), and contexts drawn from a small id range
    so that repeated tokens and repeated n-grams are common."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        logits = (rng.normal(size=vocab) * rng.uniform(0.5, 4)).astype(np.float32)
        if ties:
            logits[rng.integers(0, vocab, 3)] = logits.max()
        context = rng.integers(0, min(vocab, 40), rng.integers(0, 80))
        yield logits, context


CONFIGS = [
    SamplingConfig(),  # the card's
    SamplingConfig(temperature=0.7, top_k=0, top_p=0.9),
    SamplingConfig(top_k=5, top_p=1.0, repetition_penalty=1.5, no_repeat_ngram_size=3),
    SamplingConfig(temperature=1.0, top_k=50, top_p=0.5, repetition_penalty=1.0, no_repeat_ngram_size=0),
    SamplingConfig(top_k=1, top_p=0.95, no_repeat_ngram_size=1),
]


def _transformers_scores(logits, context, cfg):
    """transformers' processors in generate()'s order (float64, so rounding cannot decide a cut)."""
    import torch
    from transformers import (
        LogitsProcessorList,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    procs = [RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty)]
    if cfg.no_repeat_ngram_size:
        procs.append(NoRepeatNGramLogitsProcessor(cfg.no_repeat_ngram_size))
    procs.append(TemperatureLogitsWarper(cfg.temperature))
    if cfg.top_k:
        procs.append(TopKLogitsWarper(cfg.top_k))
    if cfg.top_p < 1.0:
        procs.append(TopPLogitsWarper(cfg.top_p))
    ids = torch.tensor(np.asarray(context, dtype=np.int64)).reshape(1, -1)
    return LogitsProcessorList(procs)(ids, torch.tensor(logits, dtype=torch.float64).reshape(1, -1))[
        0
    ].numpy()


@pytest.mark.parametrize(
    "cfg", CONFIGS, ids=lambda c: f"k{c.top_k}-p{c.top_p}-t{c.temperature}-n{c.no_repeat_ngram_size}"
)
@pytest.mark.parametrize("vocab", [60, 50261])
def test_processed_scores_equal_transformers_processors(cfg, vocab):
    for logits, context in _cases(200 if vocab < 1000 else 20, vocab, seed=vocab + cfg.top_k):
        ids, scores = candidates(logits, context, cfg)
        ours = np.full(vocab, -np.inf)
        ours[ids] = scores
        theirs = _transformers_scores(logits, context, cfg)
        kept = np.isfinite(theirs)
        # Which of several equal scores a top-p cut keeps is up to the sort: there, the same values.
        np.testing.assert_allclose(np.sort(scores), np.sort(theirs[kept]), rtol=1e-12)
        before_top_p = _transformers_scores(logits, context, cfg.with_(top_p=1.0))
        if not np.isin(theirs[kept].min(), before_top_p[~kept]):
            assert np.array_equal(np.isfinite(ours), kept)


@pytest.mark.parametrize("penalty,n", [(1.3, 2), (1.0, 0), (2.0, 3)])
def test_greedy_equals_argmax_of_transformers_processed_scores(penalty, n):
    cfg = SamplingConfig.greedy().with_(repetition_penalty=penalty, no_repeat_ngram_size=n)
    for logits, context in _cases(200, 60, seed=n):
        theirs = _transformers_scores(logits, context, cfg.with_(top_k=0, top_p=1.0))
        if np.isfinite(theirs).any():
            assert after(logits, context, cfg, np.random.default_rng(0)) == int(np.argmax(theirs))


def _previous_next_token(logits, context, cfg, rng):
    """The full-vocabulary implementation this module replaced (argsort of every score)."""
    scores = np.asarray(logits, dtype=np.float64).reshape(-1).copy()
    if cfg.repetition_penalty != 1.0 and context.size:
        seen = np.unique(context)
        scores[seen] = np.where(
            scores[seen] > 0, scores[seen] / cfg.repetition_penalty, scores[seen] * cfg.repetition_penalty
        )
    n = cfg.no_repeat_ngram_size
    if n > 0 and context.size >= n:
        toks = context.tolist()
        prefix = tuple(toks[len(toks) - n + 1 :])
        scores[
            [toks[i + n - 1] for i in range(len(toks) - n + 1) if tuple(toks[i : i + n - 1]) == prefix]
        ] = -np.inf
        if not np.isfinite(scores).any():
            return int(np.argmax(logits))
    if not cfg.do_sample:
        return int(np.argmax(scores))
    scores = scores / cfg.temperature
    if 0 < cfg.top_k < scores.size:
        scores = np.where(scores < np.partition(scores, -cfg.top_k)[-cfg.top_k], -np.inf, scores)
    if cfg.top_p < 1.0:
        order = np.argsort(scores)[::-1]
        probs = softmax(scores[order])
        keep = np.cumsum(probs) - probs < cfg.top_p
        kept = np.full_like(scores, -np.inf)
        kept[order[keep]] = scores[order[keep]]
        scores = kept
    return int(rng.choice(scores.size, p=softmax(scores)))


@pytest.mark.parametrize("cfg", [*CONFIGS, SamplingConfig.greedy()], ids=str)
def test_same_draws_as_the_previous_implementation(cfg):
    """Same seed, same token, from after() and from the pipeline on all of the row: only the
    work per token changed. (Equal scores at the top-p cut are the exception: the old code left
    their order to the sort, now the lower id goes first. The draw normalises a sequential cumsum
    of exp() by its last element, the old one a softmax by a pairwise sum: a uniform within a
    rounding error of a boundary could land apart; none of these cases does.)"""
    for i, (logits, context) in enumerate(_cases(300, 2000, seed=7, ties=False)):
        a = after(logits, context, cfg, np.random.default_rng(i))
        b = _previous_next_token(logits, context, cfg, np.random.default_rng(i))
        assert a == b == whole_row(logits, context, cfg, np.random.default_rng(i)), f"case {i}"


# ---- the choice from the server's K candidates ------------------------------------------------


def top(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """What the serving graph's TopK answers: the k largest logits (best first) and their ids."""
    ids = np.argsort(-logits, kind="stable")[:k]
    return ids.astype(np.int32), logits[ids].astype(np.float32)


def test_the_contexts_keep_what_the_processors_look_up():
    """Rows appended a round at a time: each row's banned tokens and seen ids are its own context's,
    rows of other lengths beside it; a row filled again forgets what it held."""
    rng = np.random.default_rng(3)
    for n in (0, 1, 2, 3):
        tokens = rng.integers(0, 6, (3, 40)).tolist()
        table, starts = Contexts(3, 8), [5, 1, 12]  # rows of different lengths, grown as they go
        for row, start in enumerate(starts):
            table.fill(row, tokens[row][:start])
        rows = np.arange(3)
        for step in range(25):
            at, banned = table.banned(rows, n)
            for row, start in enumerate(starts):
                context = tokens[row][: start + step]
                assert sorted(banned[at == row].tolist()) == sorted(banned_ngram_tokens(context, n))
                assert set(np.flatnonzero(table.seen[row]).tolist()) == set(context)
                assert table.ids(row) == context
            table.append(rows, np.array([tokens[row][start + step] for row, start in enumerate(starts)]))
        table.fill(1, [5])
        assert table.ids(1) == [5] and np.flatnonzero(table.seen[1]).tolist() == [5]


CARD = SamplingConfig()
CONFIGS = [
    CARD,
    SamplingConfig.greedy(),
    SamplingConfig.greedy(repetition_penalty=1.5, no_repeat_ngram_size=2),
    SamplingConfig(top_k=5, top_p=0.5, temperature=0.7, repetition_penalty=2.0, no_repeat_ngram_size=3),
    SamplingConfig(top_k=40, top_p=1.0),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"k{c.top_k}-p{c.top_p}-{c.do_sample}")
def test_the_candidates_choose_exactly_what_the_whole_row_does(cfg):
    """Thousands of random rows and contexts (the context drawn from the likely tokens, so that
    penalties and bans hit the candidates): wherever the K = 64 candidates prove a choice, it is
    the whole row's choice for the same random state; most of the time they do."""
    rng = np.random.default_rng(11)
    vocab, proven, trials = 3000, 0, 2000
    for trial in range(trials):
        logits = (rng.normal(size=vocab) * rng.uniform(0.5, 4)).astype(np.float32)
        likely = np.argsort(-logits)[:80]
        context = np.concatenate([rng.choice(likely, int(rng.integers(0, 60))), rng.integers(0, vocab, 30)])
        ids, values = top(logits, 64)
        a, b = np.random.default_rng(trial), np.random.default_rng(trial)
        one = Contexts.of(context)
        got = choose(ids, values, one, 0, cfg, a)
        if got is None:
            assert a.bit_generator.state == np.random.default_rng(trial).bit_generator.state  # untouched
            continue
        proven += 1
        assert got == whole_row(logits, context, cfg, b)
        assert got == next_token(logits, one, 0, cfg, np.random.default_rng(trial))
    assert proven > 0.9 * trials, f"only {proven} of {trials} proven"


def test_the_candidates_refuse_what_they_cannot_prove():
    """A penalized or banned top that falls to the K-th logit, top-k off, or top-k at K: None."""
    logits = np.array([10.0, 9.0, 8.0, 1.0, 0.5], np.float32)
    ids, values = top(logits, 3)
    greedy = SamplingConfig.greedy(no_repeat_ngram_size=2)

    def pick(context, cfg):
        return choose(ids, values, Contexts.of(context), 0, cfg, np.random.default_rng(0))

    assert pick([7, 0, 7], greedy) == 1  # 0 banned
    assert pick([7, 0, 7, 1, 7, 2, 7], greedy) is None  # 0, 1 and 2 all follow a 7
    penalized = SamplingConfig.greedy(repetition_penalty=2.0)  # 10 -> 5, 9 -> 4.5: below the bound of 8
    assert pick([0, 1], penalized) is None
    assert pick([0], SamplingConfig(top_k=0)) is None
    assert pick([0], SamplingConfig(top_k=3)) is None
    assert needs_full_row(SamplingConfig(top_k=0), 64) and needs_full_row(SamplingConfig(top_k=64), 64)
    assert not needs_full_row(CARD, 64) and not needs_full_row(SamplingConfig.greedy(), 64)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"k{c.top_k}-p{c.top_p}-{c.do_sample}")
def test_a_batch_chooses_what_each_row_alone_does(cfg):
    """R rows in one call give the tokens of R one-row calls with the same uniforms, proven and
    unproven rows mixed (every third row's 64 candidates tie: nothing to prove); a uniform is asked
    for the proven rows alone, and each proven row's token is also its whole row's."""
    rng = np.random.default_rng(5)
    vocab, n = 3000, 48
    rows, contexts = [], []
    for r in range(n):
        logits = (rng.normal(size=vocab) * rng.uniform(0.5, 4)).astype(np.float32)
        if r % 3 == 0:
            logits[np.argsort(-logits)[:70]] = logits.max()
        likely = np.argsort(-logits)[:80]
        context = np.concatenate([rng.choice(likely, int(rng.integers(0, 60))), rng.integers(0, vocab, 30)])
        rows.append(logits)
        contexts.append(context)
    table = Contexts.of(*contexts)
    ids, values = map(np.stack, zip(*(top(logits, 64) for logits in rows), strict=True))
    bound = values[:, -1].astype(np.float64)
    u = rng.random(n)
    asked = []

    def uniforms(drawing):
        asked.append(drawing.copy())
        return u[drawing]

    batch = sample(ids, values, bound, table, np.arange(n), cfg, uniforms)
    alone = [
        sample(
            ids[r : r + 1],
            values[r : r + 1],
            bound[r : r + 1],
            table,
            np.array([r]),
            cfg,
            lambda d, r=r: u[r : r + 1][d],
        )[0]
        for r in range(n)
    ]
    assert batch.tolist() == alone
    assert (batch[::3] == -1).all() and 0.5 * n < (batch >= 0).sum() < n
    assert not asked if not cfg.do_sample else np.array_equal(asked[0], batch >= 0) and len(asked) == 1
    for r in np.flatnonzero(batch >= 0):
        whole = np.arange(vocab)[None], rows[r][None], np.array([-np.inf])
        assert sample(*whole, table, np.array([r]), cfg, lambda d, r=r: u[r : r + 1][d])[0] == batch[r]
