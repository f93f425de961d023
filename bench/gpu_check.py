"""`python -m bench.gpu_check`: the GPU path measured on a machine with an NVIDIA GPU.

Exports a GPT-2 of ruDialoGPT-small's shape (random weights) with `--device cuda --fp16`, checks
it against PyTorch on the CUDA provider, asserts that the engine's KV buffers live on the GPU,
and times 40 greedy tokens in-process and through the real Triton (model.py on onnxruntime-gpu)
at 1 and 8 conversations, prompts of 50 and 1000 tokens. scripts/gpu_check.sh sets up the two
environments it needs; results go to results/gpu-check.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from functools import partial
from pathlib import Path

from bench.__main__ import SHAPES, build_model, measure
from bench.runners import run_ort, run_triton
from contract import triton_io as io

log = logging.getLogger("bench.gpu_check")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__)
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument(
        "--model-python",
        type=Path,
        required=True,
        help="venv with onnxruntime-gpu and numpy<2 that Triton's python backend runs model.py in",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print(
            "error: this onnxruntime has no CUDA provider: install onnxruntime-gpu (scripts/gpu_check.sh)",
            file=sys.stderr,
        )
        return 2
    from export import ServingConfig, export, verify
    from serve.engine import KVEngine, make_session
    from serve.server import TritonServer, free_ports

    work = args.out / f"gpu-{args.shape}"
    ckpt = build_model(args.shape, work / "checkpoint")
    repo = work / "model_repository"
    serving = ServingConfig(max_queue_delay_us=200)
    result = export(ckpt, repo, fp16=True, device="cuda", serving=serving)
    onnx_path = str(result.onnx_file)
    dev = verify.check_graph(result.onnx_file, verify.torch_reference(ckpt), "cuda")
    engine = KVEngine(make_session(onnx_path, "cuda"), slots=serving.kv_slots)
    on_device = engine.kv.values[0].device_name().lower()
    assert on_device == "cuda", f"KV buffers are on {on_device}, not the GPU"
    report = {
        "fp16_vs_pytorch_max_abs": dev.max_abs,
        "fp16_top1": dev.top1,
        "kv_device": on_device,
        "kv_bytes": engine.kv.nbytes,
        "rows": [],
    }
    vocab, lengths, conc = SHAPES[args.shape]["vocab_size"], [50, 1000], [1, 8]
    report["rows"] += measure("ort_cuda", partial(run_ort, engine, new_tokens=40), lengths, conc, vocab)
    del engine
    os.environ["RUDIALOGPT_EXECUTION_PROVIDER"] = "cuda"
    log_file = work / "tritonserver.log"
    http, grpc, metrics = free_ports(3)
    with TritonServer(repo, http, grpc, metrics, log_file=log_file, model_python=args.model_python) as server:
        served = measure(
            "triton_cuda",
            lambda b: run_triton(server.url, io.DEFAULT_MODEL_NAME, b, 40),
            lengths,
            conc,
            vocab,
        )
        report["rows"] += served
    served_on = "on cuda" in log_file.read_text()
    assert served_on, f"the served model did not report its KV cache on cuda ({log_file})"
    lines = [
        f"fp16 vs PyTorch: max |Δlogit| {dev.max_abs:.3f}, top-1 {dev.top1:.0%}; KV buffers on {on_device} "
        f"({report['kv_bytes'] / 1e6:.0f} MB)",
        "",
        "| backend | prompt | conversations | ms/token | p95 | TTFT ms | tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['backend']} | {r['prompt']} | {r['concurrency']} | {r['ms_per_token_median']:.2f} | "
            f"{r['ms_per_token_p95']:.2f} | {r['ttft_ms_median']:.1f} | {r['tokens_per_s']:.1f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-check.md").write_text("\n".join(lines) + "\n")
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
