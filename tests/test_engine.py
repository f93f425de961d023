"""serve/engine.py in-process, against PyTorch: slots written in place, ragged calls, errors."""

from __future__ import annotations

import numpy as np
import pytest

from serve.engine import KVEngine, Step, StepError, make_session


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


def test_ragged_prompts_then_lockstep_decoding_match_pytorch_in_one_call_each(session, ref):
    e = KVEngine(session, slots=4)
    seqs = {k: tokens(k, 3 + 4 * k) for k in range(1, 5)}  # prompts of 7..19 tokens
    out = e.step([Step(k, np.array(p), start=True) for k, p in seqs.items()])
    assert all(close(o, ref(p)) for o, p in zip(out, seqs.values(), strict=True))
    calls = e.calls
    for t in range(6):
        out = e.step([Step(k, np.array([10 + t])) for k in seqs])
        for (_k, p), logits in zip(seqs.items(), out, strict=True):
            p.append(10 + t)
            assert close(logits, ref(p))
    assert e.calls - calls == 6 and e.rows_idle == 0  # lockstep: one call per step, no idle row


def test_a_prompt_beside_decoding_rows_runs_in_its_own_call(session, ref):
    e = KVEngine(session, slots=4)
    seqs = {k: tokens(20 + k, 5) for k in range(1, 4)}
    e.step([Step(k, np.array(p), start=True) for k, p in seqs.items()])
    newcomer = tokens(30, 40)
    calls = e.calls
    steps = [Step(k, np.array([7])) for k in seqs] + [Step(9, np.array(newcomer[:30]), start=True)]
    out = e.step(steps)
    assert e.calls - calls == 2  # decode rows are not padded to the prompt's width
    for p, logits in zip(seqs.values(), out[:3], strict=True):
        p.append(7)
        assert close(logits, ref(p))
    assert close(out[3], ref(newcomer[:30]))
    # The rest of the prompt as a continuation chunk, beside single tokens again.
    out = e.step([Step(1, np.array([8])), Step(9, np.array(newcomer[30:]))])
    assert close(out[0], ref(seqs[1] + [8])) and close(out[1], ref(newcomer))


def test_a_row_that_skips_steps_is_idle_and_keeps_its_cache(session, ref):
    e = KVEngine(session, slots=4)
    seqs = {k: tokens(10 + k, 6) for k in range(1, 5)}
    e.step([Step(k, np.array(p), start=True) for k, p in seqs.items()])
    for t in range(4):
        present = [k for k in seqs if not (k == 2 and t in (1, 2))]  # sequence 2 misses two steps
        out = e.step([Step(k, np.array([20 + t])) for k in present])
        for k, logits in zip(present, out, strict=True):
            seqs[k].append(20 + t)
            assert close(logits, ref(seqs[k]))
    assert e.rows_idle == 2  # slot 2 was bound but idle in the two steps it missed


def test_the_kv_cache_is_written_in_place_in_the_engines_buffers(session, torch_model):
    import torch

    e = KVEngine(session, slots=2)
    ids = tokens(40, 9)
    e.step([Step(5, np.array(ids[:6]), start=True)])
    e.step([Step(5, np.array(ids[6:]))])
    slot = e.seqs[5].slot
    with torch.no_grad():
        past = torch_model(torch.tensor([ids]), use_cache=True).past_key_values
    for layer in range(e.layers):
        key, value = (t[0].numpy() for t in (past.layers[layer].keys, past.layers[layer].values))
        assert np.abs(e.kv.slot_numpy(2 * layer, slot)[:, :9] - key).max() < 1e-5
        assert np.abs(e.kv.slot_numpy(2 * layer + 1, slot)[:, :9] - value).max() < 1e-5


def test_end_frees_the_slot_and_the_lowest_free_slot_is_taken(session):
    e = KVEngine(session, slots=3)
    e.step([Step(k, np.array([1, 2]), start=True) for k in (1, 2, 3)])
    assert [e.seqs[k].slot for k in (1, 2, 3)] == [0, 1, 2]
    e.step([Step(2, np.array([4]), end=True), Step(3, np.array([], np.int64), end=True)])
    assert sorted(e.seqs) == [1]
    e.step([Step(4, np.array([1]), start=True)])
    assert e.seqs[4].slot == 1 and e.usage().tokens == 3


def test_full_slots_free_the_least_recently_used_sequence(session):
    e = KVEngine(session, slots=2)
    e.step([Step(1, np.array([1, 2]), start=True)])
    e.step([Step(2, np.array([1, 2]), start=True)])
    e.step([Step(1, np.array([3]))])  # 2 is now the least recently used
    e.step([Step(3, np.array([1]), start=True)])
    assert sorted(e.seqs) == [1, 3]
    out = e.step([Step(k, np.array([1]), start=True) for k in (4, 5, 6)])  # more than the slots
    refused = [o for o in out if isinstance(o, StepError)]
    assert len(refused) == 1 and "KV slots" in str(refused[0]) and refused[0].kind == StepError.BUSY


def test_the_liveness_probe_has_its_own_slot(session, ref):
    from contract import triton_io as io

    e = KVEngine(session, slots=2)
    e.step([Step(k, np.array([1, 2]), start=True) for k in (1, 2)])  # every slot held
    out = e.step([Step(io.PROBE_SEQUENCE_ID, np.array([3]), start=True, end=True), Step(1, np.array([4]))])
    assert close(out[0], ref([3])) and close(out[1], ref([1, 2, 4]))
    assert sorted(e.seqs) == [1, 2] and not e._free  # no generation lost its slot, the probe left none


def test_bad_steps_fail_alone(session, ref):
    e = KVEngine(session, slots=4, slot_length=16)
    out = e.step(
        [
            Step(1, np.arange(17), start=True),
            Step(2, np.array([1])),
            Step(3, np.array([1, 2]), start=True),
            Step(4, np.array([e.vocab_size]), start=True),
            Step(5, np.array([], np.int64), start=True),
        ]
    )
    assert isinstance(out[0], StepError) and "16 positions of a KV slot" in str(out[0])
    assert isinstance(out[1], StepError) and "START" in str(out[1])
    assert close(out[2], ref([1, 2]))
    assert isinstance(out[3], StepError) and f"[0, {e.vocab_size})" in str(out[3])
    assert isinstance(out[4], StepError) and "empty" in str(out[4])
    kinds = [o.kind if isinstance(o, StepError) else None for o in out]
    assert kinds == [StepError.INVALID, StepError.LOST, None, StepError.INVALID, StepError.INVALID]
    assert sorted(e.seqs) == [3]


def test_steps_of_one_sequence_in_one_batch_run_in_order(session, ref):
    e = KVEngine(session, slots=2)
    ids = tokens(50, 5)
    out = e.step(
        [Step(1, np.array(ids[:3]), start=True), Step(1, np.array(ids[3:4])), Step(1, np.array(ids[4:]))]
    )
    assert close(out[1], ref(ids[:4])) and close(out[2], ref(ids))
    out = e.step([Step(1, np.array([9]), end=True), Step(1, np.array([10]))])
    assert close(out[0], ref([*ids, 9]))
    assert isinstance(out[1], StepError) and "START" in str(out[1])  # ended in the round before
    assert not e.seqs


def test_an_ort_failure_drops_only_that_calls_sequences(session, ref, monkeypatch):
    e = KVEngine(session, slots=4)
    a, b = tokens(60, 4), tokens(61, 30)
    e.step([Step(1, np.array(a), start=True)])
    real, calls = session.run_with_iobinding, []

    def failing_once(binding, *args):
        calls.append(1)
        if len(calls) == 2:  # the second call of the next batch: the prompt's
            raise RuntimeError("device lost")
        return real(binding, *args)

    monkeypatch.setattr(session, "run_with_iobinding", failing_once)
    out = e.step([Step(1, np.array([5])), Step(2, np.array(b), start=True)])
    assert close(out[0], ref([*a, 5]))
    assert isinstance(out[1], StepError) and "START" in str(out[1])  # the client restarts it
    assert out[1].kind == StepError.FAILED
    assert sorted(e.seqs) == [1] and len(e._free) == 3
    out = e.step([Step(1, np.array([6])), Step(2, np.array(b), start=True)])
    assert close(out[0], ref([*a, 5, 6])) and close(out[1], ref(b))


def test_idle_sequences_are_evicted(session):
    e = KVEngine(session, slots=3, idle_seconds=5)
    e.step([Step(k, np.array([1, 2]), start=True) for k in (1, 2)])
    e.seqs[1].last_used -= 10
    assert e.evict_idle() == 1 and sorted(e.seqs) == [2] and e.usage().tokens == 2


def test_fp16_graph_runs_the_same_engine_within_fp16_tolerance(tiny_checkpoint, tmp_path):
    """The GPU's precision through the same functions, on the CPU provider."""
    from export import serving_graph, verify

    cfg, weights = serving_graph.load_weights(tiny_checkpoint)
    serving_graph.save(serving_graph.build(cfg, weights, np.float16), tmp_path / "fp16.onnx")
    dev = verify.check_graph(tmp_path / "fp16.onnx", verify.torch_reference(tiny_checkpoint))
    assert dev.max_abs < 5e-2 and dev.top1 >= 0.9
    e = KVEngine(make_session(str(tmp_path / "fp16.onnx")), slots=1)
    assert e.dtype == np.float16 and e.kv.values[0].data_type() == "tensor(float16)"


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
    e = KVEngine(session, slots=4)
    assert not e.ragged
    seqs = {k: tokens(70 + k, 2 + k) for k in range(1, 4)}
    e.step([Step(k, np.array(p), start=True) for k, p in seqs.items()])
    assert e.calls == 3  # prompts of different lengths: one call each
    for t in range(4):
        present = [k for k in seqs if not (k == 2 and t in (1, 2))]  # an idle row in the middle
        out = e.step([Step(k, np.array([30 + t])) for k in present])
        for k, logits in zip(present, out, strict=True):
            seqs[k].append(30 + t)
            assert close(logits, ref(seqs[k]))
    assert e.calls == 3 + 4 and e.rows_idle == 2
