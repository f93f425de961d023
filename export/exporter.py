"""Checkpoint → Triton model repository: the serving graph (checked against PyTorch and against
optimum's standard ONNX export), model.py, config."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from contract import repository as layout
from contract import triton_io as io
from export import versions
from export.triton_config import ServingConfig, render

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent


class ExportError(RuntimeError):
    """The checkpoint or the export is unusable; the message names the fix."""


@dataclass
class ExportResult:
    model_dir: Path  # model_repository/<name>
    onnx_file: Path  # model_repository/<name>/<version>/model.onnx
    max_abs_diff: float  # the serving graph vs PyTorch (served path and ragged batch)
    quantized_diff: float | None = None  # the int8 model vs PyTorch
    quantized_top1: float | None = None  # share of positions where int8 and PyTorch agree on argmax
    seconds: float = 0.0
    serving: dict = field(default_factory=dict)  # the ServingConfig written to config.pbtxt
    top1: float = 1.0  # share of positions where the serving graph and PyTorch agree on argmax
    reference_diff: float | None = None  # the serving graph vs optimum's export, ONNX vs ONNX; None: skipped
    version: int = 1  # the version folder written: the next number after those in model_dir


def check_checkpoint(checkpoint: Path) -> dict:
    """The checkpoint's config.json, or an ExportError that says what is missing."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise ExportError(
            f"checkpoint {checkpoint} not found: train one with `python -m training "
            "--output <dir>` and pass it with --checkpoint"
        )
    try:
        config = json.loads((checkpoint / "config.json").read_text())
    except FileNotFoundError:
        raise ExportError(
            f"{checkpoint} has no config.json: pass the folder `python -m training` wrote with --output"
        ) from None
    except json.JSONDecodeError as exc:
        raise ExportError(f"{checkpoint}/config.json is broken ({exc}): re-run training") from exc
    if config.get("model_type") != "gpt2":
        raise ExportError(
            f"{checkpoint} holds a {config.get('model_type')!r} model; only GPT-2 "
            "(ruDialoGPT) checkpoints are supported"
        )
    if not any((checkpoint / f).exists() for f in ("model.safetensors", "pytorch_model.bin")):
        raise ExportError(f"{checkpoint} has no weights (model.safetensors): re-run training")
    if not any((checkpoint / f).exists() for f in ("tokenizer.json", "vocab.json")):
        raise ExportError(f"{checkpoint} has no tokenizer files: the bot needs them; re-run training")
    return config


# max |Δlogit| of the serving graph, by its precision, vs PyTorch fp32 and vs optimum's fp32 export
DEFAULT_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}
MIN_TOP1 = {"fp32": 1.0, "fp16": 0.9}  # share of positions whose most likely token must agree


def export(
    checkpoint: Path,
    repository: Path,
    name: str = io.DEFAULT_MODEL_NAME,
    quantize: str | None = None,
    fp16: bool = False,
    device: str = "cpu",
    tolerance: float | None = None,
    serving: ServingConfig | None = None,
    ragged: bool | None = None,
    reference: bool = True,
    keep: int = versions.DEFAULT_KEEP,
) -> ExportResult:
    """Export `checkpoint` as a new version of `repository/name`, verified against PyTorch and optimum.

    Nothing in the repository changes until every check passed; then the version appears in one
    rename (export/versions.py: Triton, polling, loads it while the previous one serves) and the
    versions beyond the `keep` newest are deleted.

    The served model is the serving graph (export/serving_graph.py) built from the checkpoint's
    weights. Its logits, computed the way Triton serves them (on the served path and on a ragged
    batch, export/verify.py), are checked against PyTorch's, and then against those of optimum's
    standard ONNX export (task text-generation-with-past, export/reference.py: the reference) at
    the same positions, both graphs in onnxruntime; either may differ by `tolerance` at most.
    `ragged` (default: on for the CPU, off for CUDA, whose newest onnxruntime-gpu lacks it) lets
    rows of one call carry chunks of different lengths (export/serving_graph.build).
    `reference=False` skips optimum's export (for hosts without optimum): the serving graph is
    still checked against PyTorch."""
    from export import quiet, serving_graph, verify
    from export import reference as optimum_reference

    if reference:
        try:
            import optimum.exporters.onnx  # noqa: F401  (here: before the work, not at its end)
        except ImportError:
            raise ExportError(
                "optimum is not installed (its export is the reference): `pip install optimum-onnx`, "
                "or pass --skip-reference to check the serving graph against PyTorch alone"
            ) from None

    t0 = time.monotonic()
    checkpoint, repository = Path(checkpoint), Path(repository)
    versions.check_repository(repository, name)  # VersionError: a file, not a folder (before the work)
    config = check_checkpoint(checkpoint)
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize {quantize!r} is not supported: use --quantize int8")
    if fp16 and device != "cuda":
        raise ExportError("--fp16 exports for GPU serving: add --device cuda (on a machine with a GPU)")
    if fp16 and quantize:
        raise ExportError("choose one of --fp16 (GPU) and --quantize int8 (CPU)")
    if device == "cuda" and not fp16:
        raise ExportError("--device cuda needs --fp16: onnxruntime's CUDA GroupQueryAttention runs fp16 only")
    ragged = device != "cuda" if ragged is None else ragged
    precision = "fp16" if fp16 else "fp32"
    tolerance = DEFAULT_TOLERANCE[precision] if tolerance is None else tolerance
    serving = replace(
        serving or ServingConfig(),
        name=name,
        max_positions=int(config.get("n_positions", config.get("n_ctx", 1024))),
        layers=int(config["n_layer"]),
        hidden=int(config["n_embd"]),
        kv_dtype_bytes=2 if fp16 else 4,
    )
    if device == "cuda":
        serving = replace(serving, execution_provider="cuda")
    provider = serving.execution_provider
    if provider == "cuda" and "CUDAExecutionProvider" not in _ort_providers():
        log.info("this onnxruntime has no CUDA provider: the fp16 graph is checked on the CPU provider")
        provider = "cpu"

    try:
        versions.check_keep(keep)  # before the work: publish() would refuse it only at the end
    except versions.VersionError as exc:
        raise ExportError(str(exc)) from None
    model_dir = repository / name
    new_model = not model_dir.exists()
    staging = versions.staging(model_dir)  # beside the repository: Triton never sees it
    try:
        texts = verify.torch_reference(checkpoint)
        cfg, weights = serving_graph.load_weights(checkpoint)
        onnx_path = staging / "model.onnx"
        try:
            graph = serving_graph.build(
                cfg,
                weights,
                np.float16 if fp16 else np.float32,
                lm_head_matmul=quantize == "int8",
                ragged=ragged,
            )
        except ValueError as exc:
            raise ExportError(f"{checkpoint}: {exc}") from exc
        serving_graph.save(graph, onnx_path)
        del graph, weights
        served = verify.serve(onnx_path, texts, provider)
        dev = verify.worst([served.against(texts.logits), served.candidates])
        log.info(
            "serving graph (%s, served path and ragged batch) vs PyTorch: max |Δlogit| = %.2e "
            "(tolerance %.0e), same top-1 token at %.0f%% of positions",
            precision,
            dev.max_abs,
            tolerance,
            100 * dev.top1,
        )
        if not (dev.max_abs <= tolerance and dev.top1 >= MIN_TOP1[precision]):
            raise ExportError(
                f"the serving graph's logits differ from PyTorch's by {dev.max_abs:.3g} "
                f"(tolerance {tolerance:g}, top-1 agreement {dev.top1:.0%}); the export is "
                "wrong (pass --tolerance only if you know why)"
            )
        ref = None
        if reference:
            log.info("exporting %s with optimum (task %s): the reference", checkpoint, optimum_reference.TASK)
            optimum_onnx = optimum_reference.export(checkpoint, staging / "optimum")
            ref = served.against(optimum_reference.logits(optimum_onnx, texts.ids))
            shutil.rmtree(staging / "optimum")
            log.info(
                "serving graph (%s, served path and ragged batch) vs optimum's ONNX (each text in one "
                "call), both in onnxruntime: max |Δlogit| = %.2e, same top-1 token at %.0f%% of positions",
                precision,
                ref.max_abs,
                100 * ref.top1,
            )
            if not (ref.max_abs <= tolerance and ref.top1 >= MIN_TOP1[precision]):
                raise ExportError(
                    f"the serving graph's logits differ from those of optimum's ONNX export by "
                    f"{ref.max_abs:.3g} (tolerance {tolerance:g}, top-1 agreement {ref.top1:.0%}) "
                    f"though they match PyTorch's to {dev.max_abs:.3g}: one of the two graphs is "
                    "wrong for this checkpoint (pass --skip-reference only if you know which)"
                )
        else:
            log.warning(
                "optimum's reference export skipped: the serving graph is checked against PyTorch alone"
            )
        qdiff = qtop1 = None
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = staging / "model.int8.onnx"
            with quiet.quantization():
                quantize_dynamic(
                    onnx_path,
                    quantized,
                    weight_type=QuantType.QInt8,
                    op_types_to_quantize=["MatMul"],
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
                )
            q = verify.check_graph(quantized, texts, provider)
            qdiff, qtop1 = q.max_abs, q.top1
            log.info(
                "int8 vs PyTorch: max |Δlogit| = %.3f, same top-1 token at %.0f%% of positions",
                qdiff,
                100 * qtop1,
            )
            onnx_path.unlink()
            onnx_path = quantized

        version = staging / "version"
        version.mkdir()
        serving = replace(serving, onnx_file=io.ONNX_FILE)
        for f in staging.glob(onnx_path.name + "*"):  # the model and any external-data file
            shutil.move(str(f), version / f.name.replace(onnx_path.stem, "model", 1))
        for package in layout.CODE_PACKAGES:  # the model Triton runs, each package whole
            shutil.copytree(ROOT / package, version / package, ignore=shutil.ignore_patterns("__pycache__"))
        (version / layout.ENTRY_FILE).write_text(layout.ENTRY_SOURCE)
        tokenizer = version / layout.TOKENIZER_DIR
        _save_tokenizer(checkpoint, tokenizer)
        vocab = int(config["vocab_size"])
        if problems := layout.tokenizer_problems(tokenizer, vocab):
            raise ExportError(
                f"{checkpoint}'s tokenizer does not fit the model ({'; '.join(problems)}): the bot "
                "could not talk to it; train from a ruDialoGPT checkpoint (its tokenizer has the markers)"
            )
        info = {
            "checkpoint": str(checkpoint.resolve()),
            "precision": precision,
            "quantize": quantize,
            "max_abs_diff": dev.max_abs,
            "top1": dev.top1,
            "reference_diff": ref.max_abs if ref else None,
            "tokenizer_sha256": layout.tokenizer_digest(tokenizer),
        }
        number = versions.publish(version, model_dir, render(serving), info, keep)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if new_model and model_dir.is_dir() and not any(model_dir.iterdir()):  # a failed first export
            model_dir.rmdir()
    final = layout.version_dir(model_dir, number)
    size = sum(f.stat().st_size for f in final.glob(io.ONNX_FILE + "*"))
    log.info(
        "wrote version %d: %s (model %.1f MB; KV slots %s x %d positions = %.1f MB%s) in %.1f s",
        number,
        final,
        size / 1e6,
        serving.kv_slots_text,
        serving.context,
        serving.kv_bytes / 1e6,
        " on the CPU; a GPU sizes its own" if serving.kv_slots is None else "",
        time.monotonic() - t0,
    )
    return ExportResult(
        model_dir,
        final / io.ONNX_FILE,
        dev.max_abs,
        qdiff,
        qtop1,
        time.monotonic() - t0,
        asdict(serving),
        dev.top1,
        ref.max_abs if ref else None,
        number,
    )


def _ort_providers() -> list[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()


def _save_tokenizer(checkpoint: Path, dest: Path) -> None:
    """The tokenizer for the bot, as tokenizer.json (what the `tokenizers` library loads)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    tok.save_pretrained(dest)
    if not (dest / "tokenizer.json").exists():
        raise ExportError(f"{checkpoint}'s tokenizer has no fast version (tokenizer.json): the bot needs one")
