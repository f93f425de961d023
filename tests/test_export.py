"""export/: the repository it writes, its checks, and its errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from contract import repository as layout
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
        *(f"1/{p.relative_to(ROOT)}" for pkg in layout.CODE_PACKAGES for p in (ROOT / pkg).glob("*.py")),
        f"1/{layout.TOKENIZER_DIR}/tokenizer.json",
        f"1/{layout.VERSION_INFO}",
        "1/__pycache__",  # files: Python writes nothing where Triton polls (export/versions.py)
        "1/engine/__pycache__",
        "1/contract/__pycache__",
    ):
        assert (model / f).is_file(), f
    assert [p.name for p in model.iterdir() if p.is_dir()] == ["1"]  # no staging left, no tokenizer/
    assert (model / "1" / layout.ENTRY_FILE).read_text() == layout.ENTRY_SOURCE
    config = validate((model / "config.pbtxt").read_text())
    assert {i.name for i in config.input} == set(io.REQUEST_INPUTS)
    assert {o.name for o in config.output} == set(io.RESPONSE_OUTPUTS)
    assert all(i.allow_ragged_batch for i in config.input)  # rounds of any size share an execute()
    assert config.dynamic_batching.max_queue_delay_microseconds == 0 and not config.HasField(
        "sequence_batching"
    )
    assert config.parameters[io.PARAM_IDLE_SECONDS].string_value == "120"
    assert config.parameters[io.PARAM_SLOT_LENGTH].string_value == "512"
    assert config.version_policy.latest.num_versions == 1  # the newest version serves


def test_the_served_graph_is_built_for_serving(model_repository):
    """GQA per layer on a cache bound in place, logits of the last position only, the K candidates
    on the device, no past concatenated; the model's shape in its metadata only."""
    import onnx

    model = onnx.load(model_repository / "rudialogpt" / "1" / "model.onnx")
    ops = [n.op_type for n in model.graph.node]
    meta = {p.key: p.value for p in model.metadata_props}
    layers = int(meta[io.META_NUM_LAYERS])
    assert ops.count("GroupQueryAttention") == layers and "Concat" not in ops and ops.count("TopK") == 1
    inputs = {i.name for i in model.graph.input}
    outputs = [o.name for o in model.graph.output]
    assert {io.serving_past(0, "key"), io.ONNX_QUERY_SEQLENS, io.ONNX_SEQLENS_K} <= inputs
    assert outputs[:3] == [io.ONNX_LOGITS, io.ONNX_TOP_LOGITS, io.ONNX_TOP_IDS]
    assert outputs[3:] == [io.serving_present(i, k) for i in range(layers) for k in ("key", "value")]
    logits_dims = model.graph.output[0].type.tensor_type.shape.dim
    assert len(logits_dims) == 2  # [rows, vocab]: no position axis
    assert model.graph.output[2].type.tensor_type.shape.dim[1].dim_value == int(meta[io.META_CANDIDATES])
    assert int(meta[io.META_CANDIDATES]) == min(io.CANDIDATES, int(meta[io.META_VOCAB_SIZE]))


def test_export_checks_against_pytorch_and_optimum_and_keeps_the_given_config(tmp_path, tiny_checkpoint):
    given = ServingConfig(kv_slots=3, slot_length=100, max_batch_size=2)
    result = export(tiny_checkpoint, tmp_path, serving=given)
    assert result.max_abs_diff < 1e-4 and result.top1 == 1.0 and result.reference_diff < 1e-4
    assert given == ServingConfig(kv_slots=3, slot_length=100, max_batch_size=2)  # not mutated
    config = validate((result.model_dir / "config.pbtxt").read_text())
    assert config.parameters[io.PARAM_SLOT_LENGTH].string_value == "100"  # what the client may fill
    assert config.parameters[io.PARAM_KV_SLOTS].string_value == "3" and config.max_batch_size == 2


def test_export_without_optimum_checks_against_pytorch_alone(tmp_path, tiny_checkpoint, monkeypatch):
    """A GPU host may lack optimum: without --skip-reference the error names it, with it the serving
    graph is still checked against PyTorch."""
    import builtins

    real_import = builtins.__import__

    def no_optimum(name, *args, **kwargs):
        if name.startswith("optimum"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_optimum)
    with pytest.raises(ExportError, match="--skip-reference"):
        export(tiny_checkpoint, tmp_path)
    result = export(tiny_checkpoint, tmp_path, reference=False)
    assert result.reference_diff is None and result.max_abs_diff < 1e-4


def test_export_fails_where_the_serving_graph_and_optimum_disagree(tmp_path, tiny_checkpoint, monkeypatch):
    """optimum's export checks the served graph, ONNX against ONNX: one logit of optimum's moved
    by 0.01 fails the export, and the repository stays as it was."""
    from export import reference

    real_logits = reference.logits

    def shifted(onnx_path, texts):
        out = real_logits(onnx_path, texts)
        out[1][-1, 0] += 0.01  # the second dialogue's last position: served on every path
        return out

    monkeypatch.setattr(reference, "logits", shifted)
    with pytest.raises(ExportError, match=r"differ from those of optimum's ONNX export by 0\.01 \(tolerance"):
        export(tiny_checkpoint, tmp_path)
    assert not (tmp_path / "rudialogpt").exists()


def test_cli_export_logs_its_checks_without_the_libraries_known_warnings(tmp_path, tiny_checkpoint):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            "--checkpoint",
            str(tiny_checkpoint),
            "--repository",
            str(tmp_path),
            "--quantize",
            "int8",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "vs PyTorch: max |Δlogit|" in proc.stderr and "vs optimum's ONNX" in proc.stderr
    for known in ("Warning", "torch_dtype", "candidate ONNX initializers", "pre-processing"):
        assert known not in proc.stderr, proc.stderr
    assert "(vs optimum " in proc.stdout


def test_rendered_config_is_the_model_config_and_carries_every_setting():
    for cfg in (
        ServingConfig(),
        ServingConfig(
            execution_provider="cuda",
            max_batch_size=16,
            kv_slots=32,
            idle_seconds=5,
            decode_graphs="off",
            prompt_batching="on",
        ),
    ):
        parsed = validate(render(cfg))
        assert parsed == model_config(cfg)  # the text is the protobuf, comments aside
        assert parsed.max_batch_size == cfg.max_batch_size
        assert parsed.parameters[io.PARAM_IDLE_SECONDS].string_value == str(cfg.idle_seconds)
        assert parsed.parameters[io.PARAM_EXECUTION_PROVIDER].string_value == cfg.execution_provider
        assert parsed.parameters[io.PARAM_KV_SLOTS].string_value == cfg.kv_slots_text
        assert parsed.parameters[io.PARAM_DECODE_GRAPHS].string_value == cfg.decode_graphs
        assert parsed.parameters[io.PARAM_PROMPT_BATCHING].string_value == cfg.prompt_batching
        assert f"KV slots: {cfg.kv_slots_text} x" in render(cfg)
    # By default the slots are sized at load ("auto"); the engine reads every spelling of it.
    assert ServingConfig().kv_slots_text == "auto" and "sized at load" in render(ServingConfig())
    from engine.memory import parse_slots

    assert (
        parse_slots(ServingConfig().kv_slots_text) is None
        and parse_slots(ServingConfig(kv_slots=32).kv_slots_text) == 32
    )


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
    for value, message in (("0", "--kv-slots must be at least 1 (or auto)"), ("many", "a count or auto")):
        proc = subprocess.run(
            [sys.executable, "-m", "export", "--kv-slots", value], cwd=ROOT, capture_output=True, text=True
        )
        assert proc.returncode == 2 and message in proc.stderr


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
