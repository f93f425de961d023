"""serve/engine.py in-process: batched steps over grouped caches equal each sequence run alone."""
from __future__ import annotations

import numpy as np
import pytest

from serve.engine import KVEngine, Step, StepError, make_session


@pytest.fixture(scope="module")
def session(model_repository):
    return make_session(str(model_repository / "rudialogpt" / "1" / "model.onnx"), threads=1)


def engine(session, **kw) -> KVEngine:
    return KVEngine(session, kw.pop("max_positions", 512), **kw)


def reference(session, ids) -> np.ndarray:
    """Logits after `ids` computed from scratch, one sequence, no cache reuse."""
    return engine(session).step([Step(1, np.array(ids), start=True)])[0]


def tokens(seed: int, n: int) -> list[int]:
    return np.random.default_rng(seed).integers(5, 300, n).tolist()


def close(a, b) -> bool:
    return np.abs(a - b).max() < 1e-4


def test_lockstep_steps_reuse_the_group_without_copies(session):
    e = engine(session)
    prompts = {k: tokens(k, 3 + 4 * k) for k in range(1, 5)}
    e.step([Step(k, np.array(p), start=True) for k, p in prompts.items()])
    for t in range(6):
        out = e.step([Step(k, np.array([10 + t])) for k in prompts])
        for (k, p), logits in zip(prompts.items(), out):
            p.append(10 + t)
            assert close(logits, reference(session, p))
    assert e.gathers == 1  # only the first (START) step copied anything


def test_a_late_member_keeps_its_context_and_others_stay_in_place(session):
    e = engine(session)
    seqs = {k: tokens(10 + k, 6) for k in range(1, 5)}
    e.step([Step(k, np.array(p), start=True) for k, p in seqs.items()])
    for t in range(4):
        present = [k for k in seqs if not (k == 2 and t in (1, 2))]  # sequence 2 misses two steps
        out = e.step([Step(k, np.array([20 + t])) for k in present])
        for k, logits in zip(present, out):
            seqs[k].append(20 + t)
            assert close(logits, reference(session, seqs[k]))
    assert e.gathers == 1


@pytest.mark.parametrize("ending", [1, 3])
def test_ended_members_free_rows_and_the_rest_regroup(session, ending):
    e = engine(session)
    seqs = {k: tokens(20 + k, 5) for k in range(1, 5)}
    e.step([Step(k, np.array(p), start=True) for k, p in seqs.items()])
    e.step([Step(k, np.zeros(0, np.int64), end=True) for k in list(seqs)[:ending]])
    for k in list(seqs)[:ending]:
        del seqs[k]
    out = e.step([Step(k, np.array([7])) for k in seqs])
    for k, logits in zip(seqs, out):
        assert close(logits, reference(session, seqs[k] + [7]))
    assert len(e.caches) == 4 - ending
    assert e.gathers == (1 if 2 * len(seqs) >= 4 else 2)  # regroup only when most rows are idle


def test_new_sequence_joins_running_ones(session):
    e = engine(session)
    a, b = tokens(31, 9), tokens(32, 4)
    e.step([Step(1, np.array(a), start=True)])
    e.step([Step(1, np.array([3]))])
    a.append(3)
    out = e.step([Step(1, np.array([4])), Step(2, np.array(b), start=True)])
    a.append(4)
    assert close(out[0], reference(session, a)) and close(out[1], reference(session, b))
    out = e.step([Step(1, np.array([5])), Step(2, np.array([6]))])
    assert close(out[0], reference(session, a + [5])) and close(out[1], reference(session, b + [6]))


def test_holes_from_absent_rows_are_compacted_at_the_position_limit(session):
    e = engine(session, max_positions=24)
    a, b = tokens(41, 4), tokens(42, 4)
    e.step([Step(1, np.array(a), start=True), Step(2, np.array(b), start=True)])
    for t in range(30):  # a and b take turns: each row collects a masked filler every other step
        steppers = [1 + t % 2]
        out = e.step([Step(k, np.array([t + 5])) for k in steppers])
        for k, logits in zip(steppers, out):
            (a if k == 1 else b).append(t + 5)
            assert close(logits, reference(session, a if k == 1 else b))
    assert len(a) + len(b) > 24 and e.gathers > 1  # more steps than positions: compacted on the way


def test_too_long_context_and_unknown_sequence_are_step_errors(session):
    e = engine(session, max_positions=16)
    out = e.step([Step(1, np.arange(17), start=True), Step(2, np.array([1])), Step(3, np.array([1, 2]), start=True)])
    assert isinstance(out[0], StepError) and "exceeds" in str(out[0])
    assert isinstance(out[1], StepError) and "START" in str(out[1])
    assert out[2].shape == (1, e.vocab_size)


def test_idle_and_lru_eviction(session):
    e = engine(session, idle_seconds=5, max_sequences=2)
    e.step([Step(k, np.array([1, 2]), start=True) for k in (1, 2, 3)])
    assert sorted(e.caches) == [2, 3] or len(e.caches) == 2
    later = max(c.last_used for c in e.caches.values()) + 6
    assert e.evict_idle(now=later) == 2 and not e.caches and e.cached_tokens() == 0
