"""First runs checked against ordinary calls: a decode graph's, and a call of several prompts' first
chunks in a graph without ragged chunks (engine/plan.py's `together`).

Each runs the same rows again the ordinary way and compares the candidates (running a step again
writes the same cache: a decode step at its position, a first chunk from position 0). A way that
fails or differs is turned off for the engine's life, with an error in the log, and the ordinary
answer stands; one that agrees is used from then on without further checks.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

import numpy as np

from engine.plan import Row
from engine.runner import CallResult

if TYPE_CHECKING:
    from engine.graphs import DecodeGraph
    from engine.runner import Runner

log = logging.getLogger("engine.core")


class Checked(Protocol):
    """What the checks read and switch off of the engine (engine/core.py's KVEngine)."""

    runner: Runner
    tolerance: float
    graphs: dict[int, DecodeGraph]
    first_chunks: bool
    first_chunks_checked: bool


def tolerance(dtype: type[np.generic]) -> float:
    """How far a first run's candidates may differ from an ordinary call's (max |Δlogit|): kernels
    of another shape round differently in fp16, barely in fp32."""
    return 0.05 if dtype == np.float16 else 1e-4


def _compare(got: CallResult, rows: list[int], want: CallResult, limit: float) -> tuple[float, bool]:
    """max |Δ| of `got`'s candidates at `rows` against `want`'s (one row each, in order), and
    whether they agree: the same best candidate, within `limit`."""
    diff = float(np.abs(got.top_logits[rows] - want.top_logits).max())
    return diff, bool((got.top_ids[rows, 0] == want.top_ids[:, 0]).all()) and diff <= limit


def graph_run(engine: Checked, call: list[Row], graph: DecodeGraph, lengths: dict[int, int]) -> CallResult:
    """The call on its decode graph; its first run checked against an ordinary call of the same
    rows (turning the decode graphs off where it fails or differs)."""
    if graph.runs:
        return graph.run(call, lengths)
    expected = engine.runner.run(call, lengths)
    lo, slots = call[0].slot, [r.slot for r in call]
    want = CallResult(
        expected.top_ids[[s - lo for s in slots]], expected.top_logits[[s - lo for s in slots]], None
    )
    try:
        got = graph.run(call, lengths)
        graph.check_diff, agree = _compare(got, slots, want, engine.tolerance)
        if not agree:
            raise RuntimeError(f"its candidates differ from an ordinary call's by {graph.check_diff:.3g}")
    except Exception as exc:
        log.error(
            "decode graph for %d slots failed its first run (%r): decode graphs are off", graph.bucket, exc
        )
        engine.graphs.clear()
        return expected
    log.info(
        "decode graph for %d slots: first run %.1f ms (capture included), equal to an ordinary call "
        "within %.2g",
        graph.bucket,
        graph.capture_s * 1000,
        graph.check_diff,
    )
    return got


def first_chunks_run(engine: Checked, call: list[Row], lengths: dict[int, int]) -> CallResult:
    """The first call of several first chunks (adjacent slots), checked against each row alone:
    where it fails or differs, prompt batching is turned off and the rows' own calls answer."""
    try:
        got: CallResult | None = engine.runner.run(call, lengths)
        error = None
    except Exception as exc:  # e.g. a provider that refuses several rows of a first prompt
        got, error = None, exc
    alone = [engine.runner.run([r], lengths) for r in call]
    want = CallResult(
        np.concatenate([a.top_ids for a in alone]), np.concatenate([a.top_logits for a in alone]), None
    )
    diff, agree = (
        _compare(got, list(range(len(call))), want, engine.tolerance) if got is not None else (0.0, False)
    )
    if got is not None and agree:
        engine.first_chunks_checked = True
        log.info(
            "prompt batching: %d first chunks in one call, equal to each alone within %.2g", len(call), diff
        )
        return got
    log.error(
        "prompt batching: %d first chunks in one call %s: each runs alone from now on",
        len(call),
        f"failed ({error!r})" if error is not None else f"differ from each alone by {diff:.3g}",
    )
    engine.first_chunks = False
    if any(a.logits is not None for a in alone):
        vocab = next(a.logits for a in alone if a.logits is not None).shape[1]
        want.logits = np.stack(
            [a.logits[0] if a.logits is not None else np.zeros(vocab, np.float32) for a in alone]
        )
    return want
