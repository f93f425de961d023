"""export/: the repository it writes, its checks, and its errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from contract import triton_io as io
from export import ExportError, ServingConfig, export
from export.triton_config import model_config, render, validate
from tests.helpers import ROOT


def test_repository_layout(model_repository):
    model = model_repository / "rudialogpt"
    for f in (
        "config.pbtxt",
        "1/model.onnx",
        "1/model.py",
        "1/engine.py",
        "1/contract/triton_io.py",
        f"{io.TOKENIZER_DIR}/tokenizer.json",
    ):
        assert (model / f).is_file(), f
    config = validate((model / "config.pbtxt").read_text())
    assert config.input[0].name == io.INPUT_IDS and config.output[0].name == io.LOGITS
    assert config.sequence_batching.max_sequence_idle_microseconds == 120_000_000
    assert config.parameters[io.PARAM_MAX_POSITIONS].string_value == "512"
    slots = int(config.parameters[io.PARAM_KV_SLOTS].string_value)
    assert config.sequence_batching.oldest.max_candidate_sequences == slots + 1  # one per slot + the probe


def test_the_served_graph_is_built_for_serving(model_repository):
    """GQA per layer on a cache bound in place, logits of the last position only, no past concatenated."""
    import onnx

    model = onnx.load(model_repository / "rudialogpt" / "1" / "model.onnx")
    ops = [n.op_type for n in model.graph.node]
    layers = int({p.key: p.value for p in model.metadata_props}[io.PARAM_NUM_LAYERS])
    assert ops.count("GroupQueryAttention") == layers and "Concat" not in ops
    inputs = {i.name for i in model.graph.input}
    outputs = [o.name for o in model.graph.output]
    assert {io.serving_past(0, "key"), io.ONNX_QUERY_SEQLENS, io.ONNX_SEQLENS_K} <= inputs
    assert outputs[0] == io.ONNX_LOGITS and outputs[1:] == [
        io.serving_present(i, k) for i in range(layers) for k in ("key", "value")
    ]
    logits_dims = model.graph.output[0].type.tensor_type.shape.dim
    assert len(logits_dims) == 2  # [rows, vocab]: no position axis


def test_export_checks_against_pytorch_and_optimum_and_keeps_the_given_config(tmp_path, tiny_checkpoint):
    given = ServingConfig(kv_slots=3, slot_length=100, max_batch_size=2)
    result = export(tiny_checkpoint, tmp_path, serving=given)
    assert result.max_abs_diff < 1e-4 and result.top1 == 1.0 and result.optimum_diff < 1e-4
    assert given == ServingConfig(kv_slots=3, slot_length=100, max_batch_size=2)  # not mutated
    config = validate((result.model_dir / "config.pbtxt").read_text())
    assert config.parameters[io.PARAM_SLOT_LENGTH].string_value == "100"
    assert config.parameters[io.PARAM_MAX_POSITIONS].string_value == "100"  # what the client may fill
    with pytest.raises(ExportError, match="--max-batch-size 4 exceeds --kv-slots 3"):
        export(tiny_checkpoint, tmp_path, serving=ServingConfig(kv_slots=3, max_batch_size=4))


def test_rendered_config_is_the_model_config_and_carries_every_setting():
    for cfg in (
        ServingConfig(),
        ServingConfig(
            execution_provider="cuda", max_batch_size=16, kv_slots=16, idle_seconds=5, max_queue_delay_us=7
        ),
    ):
        parsed = validate(render(cfg))
        assert parsed == model_config(cfg)  # the text is the protobuf, comments aside
        batching = parsed.sequence_batching
        assert parsed.max_batch_size == cfg.max_batch_size == batching.oldest.preferred_batch_size[0]
        assert batching.max_sequence_idle_microseconds == cfg.idle_seconds * 1_000_000
        assert batching.oldest.max_queue_delay_microseconds == cfg.max_queue_delay_us
        assert batching.oldest.max_candidate_sequences == cfg.kv_slots + 1
        assert parsed.parameters[io.PARAM_EXECUTION_PROVIDER].string_value == cfg.execution_provider
        assert parsed.parameters[io.PARAM_KV_SLOTS].string_value == str(cfg.kv_slots)
        assert parsed.output[0].dims == [cfg.vocab_size]


def test_broken_config_is_rejected():
    with pytest.raises(ValueError, match="ModelConfig"):
        validate(render(ServingConfig()).replace("max_batch_size", "max_batch_sise"))


def broken(tmp_path: Path, kind: str, good: Path) -> Path:
    ckpt = tmp_path / "ckpt"
    if kind == "missing":
        return ckpt
    ckpt.mkdir()
    if kind == "empty":
        return ckpt
    for f in good.iterdir():
        if f.is_file():
            (ckpt / f.name).write_bytes(f.read_bytes())
    if kind == "bad-config":
        (ckpt / "config.json").write_text("{not json")
    elif kind == "no-weights":
        (ckpt / "model.safetensors").unlink()
    elif kind == "no-tokenizer":
        for f in ("tokenizer.json", "vocab.json"):
            (ckpt / f).unlink(missing_ok=True)
    elif kind == "not-gpt2":
        (ckpt / "config.json").write_text('{"model_type": "bert"}')
    return ckpt


@pytest.mark.parametrize(
    "kind,message",
    [
        ("missing", "not found"),
        ("empty", "config.json"),
        ("bad-config", "broken"),
        ("no-weights", "weights"),
        ("no-tokenizer", "tokenizer"),
        ("not-gpt2", "GPT-2"),
    ],
)
def test_bad_checkpoint_is_a_clear_error(tmp_path, tiny_checkpoint, kind, message):
    with pytest.raises(ExportError, match=message):
        export(broken(tmp_path, kind, tiny_checkpoint), tmp_path / "repo")
    assert not (tmp_path / "repo" / "rudialogpt").exists()


def test_flag_conflicts_are_named(tmp_path, tiny_checkpoint):
    with pytest.raises(ExportError, match="--device cuda"):
        export(tiny_checkpoint, tmp_path, fp16=True)
    with pytest.raises(ExportError, match="int8"):
        export(tiny_checkpoint, tmp_path, quantize="int4")
    with pytest.raises(ExportError, match="--device cuda needs --fp16"):
        export(tiny_checkpoint, tmp_path, device="cuda")


def test_a_cuda_export_is_fp16_without_ragged_chunks_and_checked_here(tmp_path, tiny_checkpoint):
    """What `--device cuda --fp16` writes for onnxruntime-gpu, checked on this machine's CPU provider."""
    import onnx

    result = export(tiny_checkpoint, tmp_path, fp16=True, device="cuda")
    assert result.max_abs_diff < 5e-2 and result.top1 >= 0.9
    config = validate((result.model_dir / "config.pbtxt").read_text())
    assert config.parameters[io.PARAM_EXECUTION_PROVIDER].string_value == "cuda"
    model = onnx.load(result.onnx_file)
    assert {p.key: p.value for p in model.metadata_props}[io.META_RAGGED_CHUNKS] == "0"
    assert model.graph.input[-1].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16  # the KV buffers


def test_int8_export_reports_deviation_and_replaces_atomically(tmp_path, tiny_checkpoint):
    fp32_size = export(tiny_checkpoint, tmp_path).onnx_file.stat().st_size
    result = export(tiny_checkpoint, tmp_path, quantize="int8")
    assert result.max_abs_diff < 1e-3 and result.quantized_diff is not None
    assert 0.5 <= result.quantized_top1 <= 1.0
    assert result.onnx_file.stat().st_size < fp32_size  # int8 weights are smaller
    assert [p.name for p in tmp_path.iterdir()] == ["rudialogpt"]  # no staging left behind


def test_cli_refuses_bad_slot_settings(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "export", "--kv-slots", "0"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "--kv-slots must be at least 1" in proc.stderr


def test_cli_exits_2_with_the_fix(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            "--checkpoint",
            str(tmp_path / "nope"),
            "--repository",
            str(tmp_path / "repo"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "python -m training" in proc.stderr and "Traceback" not in proc.stderr
