"""engine/core.py (with slots.py, plan.py, runner.py) in-process, against PyTorch: slots written
in place, ragged calls, positions, candidates, decode graphs on fixed bindings, errors."""

from __future__ import annotations

import numpy as np
import pytest

from contract import triton_io as io
from engine.core import KVEngine, Step, StepError, make_session


@pytest.fixture(scope="module")
def session(model_repository):
    return make_session(str(model_repository / "rudialogpt" / "1" / "model.onnx"), threads=1)


@pytest.fixture(scope="module")
def torch_model(tiny_checkpoint):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32).eval()


@pytest.fixture
def ref(torch_model):
    """PyTorch's logits after `ids`, from scratch."""
    import torch

    def logits(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            return torch_model(torch.tensor([ids])).logits[0, -1].numpy()

    return logits


def tokens(seed: int, n: int) -> list[int]:
    return np.random.default_rng(seed).integers(5, 300, n).tolist()


def close(a, b) -> bool:
    return np.abs(np.asarray(a).reshape(-1) - b).max() < 1e-4


def rows_of(e: KVEngine, steps: list[Step]) -> list:
    """The engine's whole rows of logits (or errors) for `steps`."""
    return e.logits(steps)


def start(k: int, ids) -> Step:
    return Step(k, np.array(ids), 0)


def then(k: int, ids) -> Step:
    """The sequence's next tokens, after what the engine holds."""
    return Step(k, np.array(ids), None)


def test_ragged_prompts_then_lockstep_decoding_match_pytorch_in_one_call_each(session, ref):
    e = KVEngine(session, slots=4)
    seqs = {k: tokens(k, 3 + 4 * k) for k in range(1, 5)}  # prompts of 7..19 tokens
    out = rows_of(e, [start(k, p) for k, p in seqs.items()])
    assert all(close(o, ref(p)) for o, p in zip(out, seqs.values(), strict=True))
    calls = e.calls
    for t in range(6):
        out = rows_of(e, [then(k, [10 + t]) for k in seqs])
        for (_k, p), logits in zip(seqs.items(), out, strict=True):
            p.append(10 + t)
            assert close(logits, ref(p))
    assert e.calls - calls == 6 and e.rows_idle == 0  # lockstep: one call per step, no idle row


def test_a_prompt_beside_decoding_rows_runs_in_its_own_call(session, ref):
    e = KVEngine(session, slots=4)
    seqs = {k: tokens(20 + k, 5) for k in range(1, 4)}
    rows_of(e, [start(k, p) for k, p in seqs.items()])
    newcomer = tokens(30, 40)
    calls = e.calls
    steps = [then(k, [7]) for k in seqs] + [start(9, newcomer[:30])]
    out = rows_of(e, steps)
    assert e.calls - calls == 2  # decode rows are not padded to the prompt's width
    for p, logits in zip(seqs.values(), out[:3], strict=True):
        p.append(7)
        assert close(logits, ref(p))
    assert close(out[3], ref(newcomer[:30]))
    # The rest of the prompt as a continuation chunk, beside single tokens again.
    out = rows_of(e, [then(1, [8]), then(9, newcomer[30:])])
    assert close(out[0], ref(seqs[1] + [8])) and close(out[1], ref(newcomer))


def test_a_row_that_skips_steps_is_idle_and_keeps_its_cache(session, ref):
    e = KVEngine(session, slots=4)
    seqs = {k: tokens(10 + k, 6) for k in range(1, 5)}
    rows_of(e, [start(k, p) for k, p in seqs.items()])
    for t in range(4):
        present = [k for k in seqs if not (k == 2 and t in (1, 2))]  # sequence 2 misses two steps
        out = rows_of(e, [then(k, [20 + t]) for k in present])
        for k, logits in zip(present, out, strict=True):
            seqs[k].append(20 + t)
            assert close(logits, ref(seqs[k]))
    assert e.rows_idle == 2  # slot 2 was bound but idle in the two steps it missed


def test_the_kv_cache_is_written_in_place_in_the_engines_buffers(session, torch_model):
    import torch

    e = KVEngine(session, slots=2)
    ids = tokens(40, 9)
    rows_of(e, [start(5, ids[:6])])
    rows_of(e, [then(5, ids[6:])])
    slot = e.table[5].slot
    with torch.no_grad():
        past = torch_model(torch.tensor([ids]), use_cache=True).past_key_values
    for layer in range(e.layers):
        key, value = (t[0].numpy() for t in (past.layers[layer].keys, past.layers[layer].values))
        assert np.abs(e.kv.slot_numpy(2 * layer, slot)[:, :9] - key).max() < 1e-5
        assert np.abs(e.kv.slot_numpy(2 * layer + 1, slot)[:, :9] - value).max() < 1e-5


def test_end_frees_the_slot_and_the_lowest_free_slot_is_taken(session):
    e = KVEngine(session, slots=3)
    rows_of(e, [start(k, [1, 2]) for k in (1, 2, 3)])
    assert [e.table[k].slot for k in (1, 2, 3)] == [0, 1, 2]
    rows_of(e, [Step(2, np.array([4]), None, end=True), Step(3, np.array([], np.int64), None, end=True)])
    assert sorted(e.table.seqs) == [1]
    rows_of(e, [start(4, [1])])
    assert e.table[4].slot == 1 and e.usage().tokens == 3


def test_full_slots_evict_only_a_sequence_idle_long_enough(session):
    e = KVEngine(session, slots=2, evict_after_s=5)
    rows_of(e, [start(1, [1, 2])])
    rows_of(e, [start(2, [1, 2])])
    out = rows_of(e, [start(3, [1])])  # both stepped just now: the newcomer waits (busy), nobody is evicted
    assert isinstance(out[0], StepError) and out[0].code == io.ROW_BUSY and "KV slots" in str(out[0])
    assert sorted(e.table.seqs) == [1, 2]
    e.table[2].last_used -= 10  # 2 has not stepped for 10 s: the least recently used, idle enough
    e.table[1].last_used -= 6
    rows_of(e, [start(3, [1])])
    assert sorted(e.table.seqs) == [1, 3]
    out = rows_of(e, [start(k, [1]) for k in (4, 5, 6)])  # 1 (idle 6 s) makes room for one of them
    refused = [o for o in out if isinstance(o, StepError)]
    assert len(refused) == 2 and all(r.code == io.ROW_BUSY for r in refused)
    assert sorted(e.table.seqs) == [3, 4]


def test_the_liveness_probe_has_its_own_slot(session, ref):
    e = KVEngine(session, slots=2)
    rows_of(e, [start(k, [1, 2]) for k in (1, 2)])  # every slot held
    out = rows_of(e, [Step(io.PROBE_SEQUENCE_ID, np.array([3]), 0, end=True), then(1, [4])])
    assert close(out[0], ref([3])) and close(out[1], ref([1, 2, 4]))
    assert (
        sorted(e.table.seqs) == [1, 2] and e.table.free_slots() == 0
    )  # nobody lost a slot, the probe took none


def test_bad_steps_fail_alone(session, ref):
    e = KVEngine(session, slots=4, slot_length=16)
    out = rows_of(
        e,
        [
            start(1, np.arange(17)),
            Step(2, np.array([1]), 3),
            start(3, [1, 2]),
            start(4, [e.vocab_size]),
            start(5, np.array([], np.int64)),
            Step(6, np.array([1]), -2),
        ],
    )
    assert isinstance(out[0], StepError) and "16 positions of a KV slot" in str(out[0])
    assert isinstance(out[1], StepError) and "start it again at position 0" in str(out[1])
    assert close(out[2], ref([1, 2]))
    assert isinstance(out[3], StepError) and f"[0, {e.vocab_size})" in str(out[3])
    assert isinstance(out[4], StepError) and "no tokens" in str(out[4])
    codes = [o.code if isinstance(o, StepError) else None for o in out]
    assert codes == [io.ROW_INVALID, io.ROW_LOST, None, io.ROW_INVALID, io.ROW_INVALID, io.ROW_INVALID]
    assert sorted(e.table.seqs) == [3]


def test_steps_of_one_sequence_in_one_batch_run_in_order(session, ref):
    e = KVEngine(session, slots=2)
    ids = tokens(50, 5)
    out = rows_of(e, [start(1, ids[:3]), then(1, ids[3:4]), then(1, ids[4:])])
    assert close(out[1], ref(ids[:4])) and close(out[2], ref(ids))
    out = rows_of(e, [Step(1, np.array([9]), None, end=True), then(1, [10])])
    assert close(out[0], ref([*ids, 9]))
    assert isinstance(out[1], StepError) and out[1].code == io.ROW_LOST  # ended in the round before
    assert not e.table.seqs


def test_a_step_sent_again_at_its_position_gives_the_same_answer(session, ref):
    """Positions make a step idempotent: a lower one rewinds (the cache beyond is overwritten),
    a higher one than the context held is a lost sequence."""
    e = KVEngine(session, slots=2)
    ids = tokens(55, 8)
    rows_of(e, [start(1, ids[:5])])
    first = rows_of(e, [Step(1, np.array(ids[5:6]), 5)])[0]
    again = rows_of(e, [Step(1, np.array(ids[5:6]), 5)])[0]  # the same step: the answer did not arrive
    assert close(first, ref(ids[:6])) and close(again, first)
    other = rows_of(e, [Step(1, np.array([7, 8]), 3)])[0]  # rewound to 3 tokens, another continuation
    assert close(other, ref([*ids[:3], 7, 8])) and e.table[1].length == 5
    lost = rows_of(e, [Step(1, np.array([1]), 9)])[0]
    assert isinstance(lost, StepError) and lost.code == io.ROW_LOST and "holds 5 tokens" in str(lost)


def test_candidates_are_the_rows_k_most_likely_tokens(session):
    e = KVEngine(session, slots=3)
    k = e.shape.candidates
    steps = [Step(n, np.array(tokens(80 + n, 4 + n)), 0, full=n == 2) for n in (1, 2, 3)]
    out = e.step(steps)
    rows = rows_of(KVEngine(session, slots=3), [Step(s.sequence_id, s.ids, 0) for s in steps])
    assert out.top_ids.shape == (3, k) and out.full_rows == [1] and close(out.logits(1), rows[1])
    for i, row in enumerate(rows):
        assert np.abs(out.top_logits[i] - np.sort(row)[::-1][:k]).max() < 1e-5  # the K largest, best first
        assert np.abs(row[out.top_ids[i]] - out.top_logits[i]).max() < 1e-5  # at their ids


def test_an_ort_failure_drops_only_that_calls_sequences(session, ref, monkeypatch):
    e = KVEngine(session, slots=4)
    a, b = tokens(60, 4), tokens(61, 30)
    rows_of(e, [start(1, a)])
    real, calls = session.run_with_iobinding, []

    def failing_once(binding, *args):
        calls.append(1)
        if len(calls) == 2:  # the second call of the next batch: the prompt's
            raise RuntimeError("device lost")
        return real(binding, *args)

    monkeypatch.setattr(session, "run_with_iobinding", failing_once)
    out = rows_of(e, [then(1, [5]), start(2, b)])
    assert close(out[0], ref([*a, 5]))
    assert isinstance(out[1], StepError) and "start it again at 0" in str(out[1])  # the client restarts it
    assert out[1].code == io.ROW_FAILED
    assert sorted(e.table.seqs) == [1] and e.table.free_slots() == 3
    out = rows_of(e, [then(1, [6]), start(2, b)])
    assert close(out[0], ref([*a, 5, 6])) and close(out[1], ref(b))


def test_idle_sequences_are_evicted(session):
    e = KVEngine(session, slots=3, idle_seconds=5)
    rows_of(e, [start(k, [1, 2]) for k in (1, 2)])
    e.table[1].last_used -= 10
    assert e.evict_idle() == 1 and sorted(e.table.seqs) == [2] and e.usage().tokens == 2


@pytest.mark.parametrize("ragged", [True, False], ids=["ragged", "uniform"])
def test_decode_graphs_on_fixed_bindings_equal_ordinary_calls(tiny_checkpoint, tmp_path, ragged):
    """The decode-graph path (a CUDA graph on a GPU; here the same fixed bindings, uncaptured) against
    the ordinary calls of an engine without it, token for token over 40 greedy steps, with rows
    joining, skipping steps and leaving, and a prompt chunk beside the decode rows."""
    from export import serving_graph

    cfg, weights = serving_graph.load_weights(tiny_checkpoint)
    serving_graph.save(serving_graph.build(cfg, weights, ragged=ragged), tmp_path / "m.onnx")
    session = make_session(str(tmp_path / "m.onnx"), threads=1)
    fixed, plain = (
        KVEngine(session, slots=6, decode_graphs="on"),
        KVEngine(session, slots=6, decode_graphs="off"),
    )
    assert sorted(fixed.graphs) == [1, 2, 4, 6] and not plain.graphs
    contexts: dict[int, list[int]] = {}
    for t in range(40):
        steps = []
        if t % 9 == 0:  # a newcomer (its prompt beside the decode rows)
            contexts[100 + t] = tokens(t, 5 + t % 4)
            steps.append(Step(100 + t, np.array(contexts[100 + t]), 0))
        for k, ctx in contexts.items():
            if len(ctx) > 5 + k % 4 and not (k % 2 and t % 5 == 1):  # odd ones skip some steps
                steps.append(Step(k, np.array(ctx[-1:]), len(ctx) - 1, end=len(ctx) > 30))
        a, b = fixed.step(steps), plain.step(steps)
        assert (a.status == 0).all() and (b.status == 0).all(), (a.errors, b.errors)
        assert (a.top_ids[:, 0] == b.top_ids[:, 0]).all() and np.abs(a.top_logits - b.top_logits).max() < 1e-5
        for i, s in enumerate(steps):
            if s.end:
                del contexts[s.sequence_id]
            else:
                contexts[s.sequence_id].append(int(a.top_ids[i, 0]))
    assert fixed.graph_steps > 20 and plain.graph_steps == 0
    assert all(g.check_diff < 1e-5 for g in fixed.graphs.values() if g.runs)


def test_a_decode_graph_that_differs_is_turned_off(session, monkeypatch):
    """The first run of each decode graph is checked against an ordinary call: a graph whose
    candidates differ is not used, and the ordinary answer stands."""
    from engine.graphs import DecodeGraph
    from engine.runner import CallResult

    e = KVEngine(session, slots=2, decode_graphs="on")
    real = DecodeGraph.run

    def wrong(self, call, lengths):
        result = real(self, call, lengths)
        return CallResult(result.top_ids, result.top_logits + 1.0, None)

    monkeypatch.setattr(DecodeGraph, "run", wrong)
    ids = tokens(90, 4)
    rows_of(e, [start(1, ids)])
    out = e.step([Step(1, np.array([5]), 4)])
    assert not e.graphs and out.status[0] == 0
    row = rows_of(KVEngine(session, slots=2, decode_graphs="off"), [start(1, [*ids, 5])])[0]
    assert np.abs(out.top_logits[0] - np.sort(row)[::-1][: out.top_logits.shape[1]]).max() < 1e-5


def test_fp16_graph_runs_the_same_engine_within_fp16_tolerance(tiny_checkpoint, tmp_path):
    """The GPU's precision through the same functions, on the CPU provider."""
    from export import serving_graph, verify

    cfg, weights = serving_graph.load_weights(tiny_checkpoint)
    serving_graph.save(serving_graph.build(cfg, weights, np.float16), tmp_path / "fp16.onnx")
    dev = verify.check_graph(tmp_path / "fp16.onnx", verify.torch_reference(tiny_checkpoint))
    assert dev.max_abs < 5e-2 and dev.top1 >= 0.9
    e = KVEngine(make_session(str(tmp_path / "fp16.onnx")), slots=1)
    assert e.shape.dtype == np.float16 and e.kv.values[0].data_type() == "tensor(float16)"


def test_an_optimum_graph_is_refused_with_the_fix(tmp_path, tiny_checkpoint):
    from optimum.exporters.onnx import main_export

    main_export(str(tiny_checkpoint), output=tmp_path, task="text-generation-with-past", do_validation=False)
    with pytest.raises(ValueError, match="re-export"):
        KVEngine(make_session(str(tmp_path / "model.onnx")))


def test_a_graph_without_ragged_chunks_serves_the_same(tiny_checkpoint, tmp_path, ref):
    """The layout onnxruntime-gpu 1.31 can run (no query_seqlens), through the same engine on the CPU."""
    from export import serving_graph, verify

    cfg, weights = serving_graph.load_weights(tiny_checkpoint)
    serving_graph.save(serving_graph.build(cfg, weights, ragged=False), tmp_path / "uniform.onnx")
    session = make_session(str(tmp_path / "uniform.onnx"))
    dev = verify.check_graph(tmp_path / "uniform.onnx", verify.torch_reference(tiny_checkpoint))
    assert dev.max_abs < 1e-4 and dev.top1 == 1.0
    e = KVEngine(session, slots=4, decode_graphs="off")
    assert not e.ragged
    seqs = {k: tokens(70 + k, 2 + k) for k in range(1, 4)}
    rows_of(e, [start(k, p) for k, p in seqs.items()])
    assert e.calls == 1  # first chunks, all of width 16, in adjacent slots: one call (prompt batching)
    for t in range(4):
        present = [k for k in seqs if not (k == 2 and t in (1, 2))]  # an idle row in the middle
        out = rows_of(e, [then(k, [30 + t]) for k in present])
        for k, row in zip(present, out, strict=True):
            seqs[k].append(30 + t)
            assert close(row, ref(seqs[k]))
    assert e.calls == 1 + 4 and e.rows_idle == 2


def test_uniform_chunks_run_at_few_widths_and_load_warms_them(tiny_checkpoint, tmp_path, ref):
    """Without ragged chunks a chunk runs at the next power of two from 16 (fillers after it): the
    logits stay exact, the context counts the real tokens, and warm_up() runs every width and each
    decode graph once at load, leaving every slot free."""
    from export import serving_graph

    cfg, weights = serving_graph.load_weights(tiny_checkpoint)
    serving_graph.save(serving_graph.build(cfg, weights, ragged=False), tmp_path / "uniform.onnx")
    e = KVEngine(make_session(str(tmp_path / "uniform.onnx")), slots=3, slot_length=128, decode_graphs="on")
    widths = []
    real = e.runner.run
    e.runner.run = lambda call, lengths: widths.append(max(r.width for r in call)) or real(call, lengths)
    assert e.warm_up() > 0 and not e.table.seqs and e.table.free_slots() == 3
    assert sorted(set(widths)) == [1, 16, 32, 64] and all(g.runs for g in e.graphs.values())
    widths.clear()
    ids = tokens(95, 37)
    out = rows_of(e, [start(1, ids[:20]), start(2, ids[:3])])
    assert close(out[0], ref(ids[:20])) and close(out[1], ref(ids[:3]))
    out = rows_of(e, [then(1, ids[20:37])])  # 17 tokens after 20: width 32
    assert close(out[0], ref(ids)) and e.table[1].length == 37 and widths == [32, 16, 32]


@pytest.fixture(scope="module")
def uniform(tiny_checkpoint, tmp_path_factory):
    """A session on the graph without ragged chunks (onnxruntime-gpu 1.31's layout), on the CPU."""
    from export import serving_graph

    path = tmp_path_factory.mktemp("uniform") / "uniform.onnx"
    cfg, weights = serving_graph.load_weights(tiny_checkpoint)
    serving_graph.save(serving_graph.build(cfg, weights, ragged=False), path)
    return make_session(str(path), threads=1)


def test_first_chunks_of_several_prompts_share_a_call_and_equal_each_alone(uniform, ref):
    """Without ragged chunks, prompts' first chunks of one width in adjacent slots run as one call:
    candidates, whole rows and the cache (the decode steps after) equal each chunk run alone, to
    the bit on the CPU; a decoding row beside them keeps its own call."""
    on = KVEngine(uniform, slots=6, decode_graphs="off", prompt_batching="on")
    off = KVEngine(uniform, slots=6, decode_graphs="off", prompt_batching="off")
    assert on.prompt_batching == "first chunks" and off.prompt_batching.startswith("off")
    contexts = {1: tokens(60, 20)}
    contexts.update({k: tokens(60 + k, n) for k, n in ((2, 9), (3, 14), (4, 30), (5, 12), (6, 16))})
    for e in (on, off):
        e.step([start(1, contexts[1])])
    steps = [then(1, [7])] + [Step(k, np.array(contexts[k]), 0, full=True) for k in range(2, 7)]
    calls = on.calls, off.calls
    a, b = on.step(steps), off.step(steps)
    # decode row; slots 1-2 (width 16) together; slot 3 (width 32); slots 4-5 (width 16) together
    assert on.calls - calls[0] == 4 and off.calls - calls[1] == 6 and on.first_chunks_checked
    assert (
        (a.top_ids == b.top_ids).all() and (a.top_logits == b.top_logits).all() and (a.full == b.full).all()
    )
    for i, k in enumerate(range(2, 7)):
        assert close(a.full[i], ref(contexts[k]))
    for _ in range(8):
        steps = [Step(k, np.array([int(a.top_ids[i, 0])]), None) for i, k in enumerate(contexts)]
        a, b = on.step(steps), off.step(steps)
        assert (a.status == 0).all() and (a.top_ids == b.top_ids).all()
        assert (a.top_logits == b.top_logits).all()


def test_continuation_chunks_run_alone_as_the_graph_refuses_them_together(uniform):
    """GroupQueryAttention without query_seqlens takes several rows of a multi-token chunk only as
    first prompts: rows with a past are refused, so their chunks never share a call."""
    from engine.plan import Row

    e = KVEngine(uniform, slots=2, decode_graphs="off", prompt_batching="on")
    e.step([start(1, tokens(61, 20)), start(2, tokens(62, 40))])
    with pytest.raises(Exception, match="batch_size must be 1"):
        e.runner.run(
            [Row(0, 0, 20, np.ones(16, np.int64)), Row(1, 1, 40, np.ones(16, np.int64))], e.table.lengths()
        )
    calls = e.calls
    out = e.step([then(1, tokens(63, 16)), then(2, tokens(64, 16))])
    assert (out.status == 0).all() and e.calls - calls == 2


def test_first_chunks_that_fail_together_run_alone_and_batching_turns_off(uniform, ref, monkeypatch, caplog):
    """The first call of several first chunks is checked against each alone (a first chunk run
    again rewrites the same cache): one that fails turns prompt batching off, and the rows' own
    calls answer."""
    from engine.runner import Runner

    e = KVEngine(uniform, slots=3, decode_graphs="off", prompt_batching="on")
    real = Runner.run

    def refuse_several(self, call, lengths):
        if len(call) > 1 and call[0].width > 1:
            raise RuntimeError("several first chunks refused")
        return real(self, call, lengths)

    monkeypatch.setattr(Runner, "run", refuse_several)
    ids = [tokens(70, 10), tokens(71, 12)]
    out = rows_of(e, [start(1, ids[0]), start(2, ids[1])])
    assert close(out[0], ref(ids[0])) and close(out[1], ref(ids[1]))
    assert not e.first_chunks and "each runs alone from now on" in caplog.text
    assert e.step([then(1, [5]), then(2, [6])]).status.tolist() == [0, 0]


def test_auto_slots_are_the_cpu_default_logged_and_a_set_count_wins(session, caplog):
    caplog.set_level("INFO", logger="engine.core")
    e = KVEngine(session, slots=None, decode_graphs="on")
    assert e.slots == io.DEFAULT_KV_SLOTS == 8 and sorted(e.graphs) == [1, 2, 4, 8]
    assert "KV slots: 8 (auto on the cpu" in caplog.text and e.slots_why in caplog.text
    e = KVEngine(session, slots=3)
    assert e.slots == 3 and e.slots_why == "KV slots: 3 (set: kv_slots 3)"
    assert e.prompt_batching.startswith("any")  # the ragged graph: any chunks share calls already
