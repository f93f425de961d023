"""bot/sampling.py: validation, each processor, and the sampling distribution."""
from __future__ import annotations

import numpy as np
import pytest

from bot.sampling import (SamplingConfig, apply_repetition_penalty, banned_ngram_tokens, filter_top_k,
                          filter_top_p, next_token, softmax)

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


def test_defaults_are_the_cards():
    c = SamplingConfig()
    assert (c.top_k, c.top_p, c.temperature, c.repetition_penalty, c.no_repeat_ngram_size,
            c.max_new_tokens) == (10, 0.95, 1.2, 1.2, 2, 40)


def test_repetition_penalty_lowers_seen_tokens_both_signs():
    logits = np.array([2.0, -2.0, 1.0])
    out = apply_repetition_penalty(logits, np.array([0, 1]), 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0]


@pytest.mark.parametrize("context,n,banned", [
    ([1, 2, 3, 1], 2, [2]),           # "1 2" seen: after 1, 2 is banned
    ([1, 2, 1, 3, 1], 2, [2, 3]),
    ([1, 2, 3, 1, 2], 3, [3]),
    ([1, 2, 3], 2, []),
    ([4], 2, []),
    ([1, 1], 1, [1, 1]),
    ([1, 2, 1], 0, []),
])
def test_banned_ngrams(context, n, banned):
    assert banned_ngram_tokens(np.array(context), n) == banned


def test_top_k_keeps_k_best():
    out = filter_top_k(np.array([0.1, 3.0, 2.0, -1.0, 2.5]), 2)
    assert np.isfinite(out).tolist() == [False, True, False, False, True]


@pytest.mark.parametrize("p,kept", [(0.5, 1), (0.7, 2), (0.9, 3), (0.99, 4), (1.0, 4)])
def test_top_p_keeps_smallest_set_with_mass(p, kept):
    logits = np.log(np.array([0.6, 0.25, 0.1, 0.05]))
    assert np.isfinite(filter_top_p(logits, p)).sum() == kept


def test_greedy_is_argmax_without_penalties():
    cfg = SamplingConfig.greedy()
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 5.0, 4.9])
    assert next_token(logits, np.array([1, 1, 1]), cfg, rng) == 1


def test_seeded_sampling_is_reproducible():
    logits = np.random.default_rng(1).normal(size=500)
    draw = lambda seed: [next_token(logits, np.array([], np.int64), SamplingConfig(), np.random.default_rng(seed))
                         for _ in range(20)]
    assert draw(7) == draw(7)


def test_top_k_top_p_sampling_matches_the_filtered_distribution():
    """Statistically: 20k draws land only in the filtered set, with its renormalized frequencies."""
    logits = np.log(np.array([0.4, 0.3, 0.15, 0.1, 0.05]))
    cfg = SamplingConfig(temperature=1.0, top_k=4, top_p=0.8, repetition_penalty=1.0, no_repeat_ngram_size=0)
    rng = np.random.default_rng(0)
    counts = np.bincount([next_token(logits, np.array([], np.int64), cfg, rng) for _ in range(20000)],
                         minlength=5)
    assert counts[3:].sum() == 0  # 0.4 + 0.3 < 0.8 <= 0.4 + 0.3 + 0.15: three tokens stay
    expected = softmax(logits[:3]) * 20000
    chi2 = (((counts[:3] - expected) ** 2) / expected).sum()
    assert chi2 < 13.8  # chi-square, 2 degrees of freedom, p = 0.001


def test_temperature_flattens():
    logits = np.array([2.0, 0.0])
    cfg = lambda t: SamplingConfig(temperature=t, top_k=0, top_p=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0)
    share = lambda t: np.mean([next_token(logits, np.array([], np.int64), cfg(t), rng) == 0 for _ in range(4000)])
    rng = np.random.default_rng(3)
    assert share(0.5) > share(1.0) > share(3.0)


def test_all_banned_falls_back_to_argmax():
    cfg = SamplingConfig(no_repeat_ngram_size=1, top_k=0)
    assert next_token(np.array([1.0, 0.0]), np.array([0, 1]), cfg, np.random.default_rng(0)) == 0
