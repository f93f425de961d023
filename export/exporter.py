"""Checkpoint → Triton model repository: ONNX with KV cache (optimum), server model, config."""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from contract import triton_io as io
from contract.dialogue import build_prompt
from export.replace import replace_dir
from export.triton_config import ServingConfig, render, validate

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
SERVER_FILES = {ROOT / "serve" / "model.py": "model.py", ROOT / "serve" / "engine.py": "engine.py"}
SAMPLE_TURNS = ["Привет! Как прошли выходные?", "Отлично, ездили за город.", "Здорово! А погода была хорошая?"]
SAMPLE_REPLY = " Да, солнечно и тепло весь день."


class ExportError(RuntimeError):
    """The checkpoint or the export is unusable; the message names the fix."""


@dataclass
class ExportResult:
    model_dir: Path  # model_repository/<name>
    onnx_file: Path
    max_abs_diff: float  # served-path ORT logits vs PyTorch, fp32 export
    quantized_diff: float | None = None  # the int8 model vs PyTorch
    quantized_top1: float | None = None  # share of positions where int8 and PyTorch agree on argmax
    seconds: float = 0.0
    serving: dict = field(default_factory=dict)


def check_checkpoint(checkpoint: Path) -> dict:
    """The checkpoint's config.json, or an ExportError that says what is missing."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise ExportError(f"checkpoint {checkpoint} not found: train one with `python -m training "
                          "--output <dir>` and pass it with --checkpoint")
    try:
        config = json.loads((checkpoint / "config.json").read_text())
    except FileNotFoundError:
        raise ExportError(f"{checkpoint} has no config.json: pass the folder `python -m training` "
                          "wrote with --output") from None
    except json.JSONDecodeError as exc:
        raise ExportError(f"{checkpoint}/config.json is broken ({exc}): re-run training") from exc
    if config.get("model_type") != "gpt2":
        raise ExportError(f"{checkpoint} holds a {config.get('model_type')!r} model; only GPT-2 "
                          "(ruDialoGPT) checkpoints are supported")
    if not any((checkpoint / f).exists() for f in ("model.safetensors", "pytorch_model.bin")):
        raise ExportError(f"{checkpoint} has no weights (model.safetensors): re-run training")
    if not any((checkpoint / f).exists() for f in ("tokenizer.json", "vocab.json")):
        raise ExportError(f"{checkpoint} has no tokenizer files: the bot needs them; re-run training")
    return config


def _engine(onnx_path: Path, max_positions: int, provider: str):
    from serve.engine import KVEngine, make_session

    return KVEngine(make_session(str(onnx_path), provider), max_positions)


def served_logits(onnx_path: Path, ids: list[int], prompt_len: int, max_positions: int,
                  provider: str = "cpu") -> np.ndarray:
    """Logits at every position after the prompt's, computed the way Triton serves them:
    the prompt in one step, then one token per step on the cached past."""
    from serve.engine import Step

    engine = _engine(onnx_path, max_positions, provider)
    out = [engine.step([Step(1, np.array(ids[:prompt_len]), start=True)])[0]]
    for t in ids[prompt_len:]:
        out.append(engine.step([Step(1, np.array([t]))])[0])
    return np.concatenate(out)


def torch_reference(checkpoint: Path) -> tuple[list[int], int, np.ndarray]:
    """Token ids of the sample dialogue, its prompt length, and PyTorch's logits from there on."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    prompt = build_prompt(SAMPLE_TURNS)
    ids = tok(prompt + SAMPLE_REPLY)["input_ids"]
    prompt_len = len(tok(prompt)["input_ids"])
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].numpy()
    return ids, prompt_len, logits[prompt_len - 1:]


def export(checkpoint: Path, repository: Path, name: str = io.DEFAULT_MODEL_NAME,
           quantize: str | None = None, fp16: bool = False, device: str = "cpu",
           tolerance: float = 1e-3, serving: ServingConfig | None = None) -> ExportResult:
    """Export `checkpoint` into `repository/name`, verified against PyTorch; replaces it atomically."""
    from optimum.exporters.onnx import main_export

    t0 = time.monotonic()
    checkpoint, repository = Path(checkpoint), Path(repository)
    config = check_checkpoint(checkpoint)
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize {quantize!r} is not supported: use --quantize int8")
    if fp16 and device != "cuda":
        raise ExportError("--fp16 exports for GPU serving: add --device cuda (on a machine with a GPU)")
    if fp16 and quantize:
        raise ExportError("choose one of --fp16 (GPU) and --quantize int8 (CPU)")
    serving = serving or ServingConfig()
    serving.name = name
    serving.vocab_size = int(config["vocab_size"])
    serving.max_positions = int(config.get("n_positions", config.get("n_ctx", 1024)))
    if device == "cuda":
        serving.execution_provider = "cuda"
    provider = serving.execution_provider

    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=repository))
    try:
        onnx_dir = staging / "onnx"
        log.info("exporting %s to ONNX (task text-generation-with-past, %s)", checkpoint,
                 "fp16" if fp16 else "fp32")
        main_export(str(checkpoint), output=onnx_dir, task="text-generation-with-past", device=device,
                    dtype="fp16" if fp16 else None, do_validation=False)
        onnx_path = onnx_dir / "model.onnx"
        if not onnx_path.exists():
            raise ExportError(f"optimum wrote no model.onnx (found {sorted(p.name for p in onnx_dir.iterdir())})")

        ids, prompt_len, reference = torch_reference(checkpoint)
        diff = float(np.abs(served_logits(onnx_path, ids, prompt_len, serving.max_positions, provider)
                            - reference).max())
        log.info("ONNX (with KV cache, served path) vs PyTorch: max |Δlogit| = %.2e (tolerance %.0e)",
                 diff, tolerance)
        if not diff <= tolerance:
            raise ExportError(f"the ONNX model's logits differ from PyTorch's by {diff:.3g} > {tolerance:g}; "
                              "the export is wrong (pass --tolerance only if you know why)")

        qdiff = qtop1 = None
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic
            from onnxruntime.quantization.shape_inference import quant_pre_process

            # Folding constants first turns the tied lm_head weight (a Transpose of the embedding)
            # into a constant, so its MatMul, the largest, is quantized too: 44 -> 18.5 ms/token
            # on ruDialoGPT-small's shape (2 CPU threads).
            folded, quantized = onnx_dir / "model.folded.onnx", onnx_dir / "model.int8.onnx"
            quant_pre_process(onnx_path, folded, skip_symbolic_shape=True)
            quantize_dynamic(folded, quantized, weight_type=QuantType.QInt8)
            q = served_logits(quantized, ids, prompt_len, serving.max_positions, provider)
            qdiff = float(np.abs(q - reference).max())
            qtop1 = float(np.mean(q.argmax(-1) == reference.argmax(-1)))
            log.info("int8 vs PyTorch: max |Δlogit| = %.3f, same top-1 token at %.0f%% of positions",
                     qdiff, 100 * qtop1)
            onnx_path = quantized

        model_dir = staging / name
        version = model_dir / "1"
        version.mkdir(parents=True)
        serving.onnx_file = "model.onnx"
        for f in onnx_dir.glob(onnx_path.name + "*"):  # the model and any external-data file
            shutil.move(str(f), version / f.name.replace(onnx_path.stem, "model", 1))
        for src, dst in SERVER_FILES.items():
            shutil.copy2(src, version / dst)
        shutil.copytree(ROOT / "contract", version / "contract",
                        ignore=shutil.ignore_patterns("__pycache__"))
        _save_tokenizer(checkpoint, model_dir / io.TOKENIZER_DIR)
        text = render(serving)
        validate(text)
        (model_dir / "config.pbtxt").write_text(text)

        final = repository / name
        replace_dir(model_dir, final)  # the old or the new model is complete at every instant
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum(f.stat().st_size for f in (final / "1").glob("model.onnx*"))
    log.info("wrote %s (model %.1f MB) in %.1f s", final, size / 1e6, time.monotonic() - t0)
    return ExportResult(final, final / "1" / "model.onnx", diff, qdiff, qtop1,
                        time.monotonic() - t0, asdict(serving))


def _save_tokenizer(checkpoint: Path, dest: Path) -> None:
    """The tokenizer for the bot, as tokenizer.json (what the `tokenizers` library loads)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    tok.save_pretrained(dest)
    if not (dest / "tokenizer.json").exists():
        raise ExportError(f"{checkpoint}'s tokenizer has no fast version (tokenizer.json): the bot needs one")
