"""`python -m bench.gpu_check`: the GPU path measured, in one run, with what the host has.

On a machine with an NVIDIA GPU, onnxruntime-gpu, torch and transformers (no package registry
needed): checks and names what is missing, then exports a GPT-2 of ruDialoGPT-small's shape
(random weights) with `--device cuda --fp16` (optimum's reference export only where optimum is
installed), and measures, each phase on its own (a failing phase is reported, the rest still run):

- parity: the fp16 serving graph against PyTorch on the CUDA provider; the KV buffers on the GPU;
- the engine in-process, decode graphs off and on (CUDA graphs): ms per step at 1, 8 and 32
  conversations, prompts of 50 and 1000 tokens; each graph's capture time and memory; greedy
  tokens of both engines over 200 steps with conversations joining and leaving;
- the bot's client through the real Triton (model.py on onnxruntime-gpu) at the same points, with
  Triton's own per-request times and model.py's own time per execute;
- bot processes: 1 and 4 (each its own client and process, started together) with the most
  conversations among them, Triton's dynamic batcher merging their rounds (bench/served_rounds.py);
- transformers on the same GPU, batched, eager and sdpa attention, its default (dynamic) cache;
  and at its fastest: a static cache and the decode step compiled with torch.compile
  (mode="reduce-overhead": CUDA graphs), fp16, at the shortest prompt, each shape's compile timed
  apart. With `--provider cpu` the static cache runs without compiling (minutes per shape on a
  small CPU) unless `--cpu-compile`.

Results: <out>/gpu-check.md and .json (docs/gpu-check.md is such a run, committed).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from bench.__main__ import SHAPES, build_model, measure
from bench.gpu_engine import engine_phases
from bench.gpu_report import Check, gpu_summary
from bench.runners import prompts, run_rounds, run_transformers, run_transformers_static, run_triton
from bench.served_rounds import run_processes
from contract import triton_io as io


def missing(model_python: Path, provider: str) -> list[str]:
    """What this host lacks for the check, each with what to do."""
    found = []
    for module, why in (
        ("torch", "PyTorch with CUDA (the reference and the transformers baseline)"),
        ("transformers", "transformers"),
        ("onnx", "onnx (the serving graph is built with it)"),
        ("onnxruntime", "onnxruntime-gpu"),
        ("tokenizers", "tokenizers"),
        ("tritonclient", "tritonclient[http] (the bot's client)"),
        ("aiohttp", "aiohttp (tritonclient's aio client)"),
        ("tenacity", "tenacity"),
        ("pytriton", "nvidia-pytriton==0.7.0 (its tritonserver binary; pip install --no-deps)"),
    ):
        if importlib.util.find_spec(module) is None:
            found.append(f"python module {module!r}: install {why}")
    if not found and provider == "cuda":
        import onnxruntime as ort
        import torch

        if not torch.cuda.is_available():
            found.append("torch sees no CUDA device")
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            found.append(f"onnxruntime {ort.__version__} has no CUDA provider: install onnxruntime-gpu")
    probe = "import numpy, onnxruntime; assert numpy.__version__ < '2', numpy.__version__"
    python = model_python / "bin" / "python3"
    result = (
        subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
        if python.exists()
        else None
    )
    if result is None or result.returncode:
        detail = result.stderr.strip().splitlines()[-1] if result else f"{python} not found"
        found.append(f"the model's venv {model_python} (numpy<2 and onnxruntime-gpu for model.py): {detail}")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__)
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument(
        "--model-python",
        type=Path,
        default=Path(os.environ.get("TRITON_MODEL_PYTHON", ".venv-triton")),
        help="venv with onnxruntime-gpu and numpy<2 that Triton's python backend runs model.py in",
    )
    p.add_argument("--threads", type=int, default=4, help="torch CPU threads (the transformers baseline)")
    p.add_argument(
        "--provider", choices=["cuda", "cpu"], default="cuda", help="cpu: the same run on the CPU (tests)"
    )
    p.add_argument("--concurrency", default="1,8,32", help="conversations at once, comma separated")
    p.add_argument("--prompt-lengths", default="50,1000", help="prompt tokens, comma separated")
    p.add_argument("--new-tokens", type=int, default=40)
    p.add_argument("--cpu-compile", action="store_true", help="with --provider cpu: compile transformers too")
    args = p.parse_args(argv)
    args.concurrency = [int(n) for n in args.concurrency.split(",")]
    args.lengths = [int(n) for n in args.prompt_lengths.split(",")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if lacking := missing(args.model_python, args.provider):
        print("error: this host lacks what the GPU check needs:\n  " + "\n  ".join(lacking), file=sys.stderr)
        return 2
    import torch

    from export import ServingConfig, export, verify
    from serve.server import TritonServer, free_ports

    torch.set_num_threads(args.threads)  # 16+ threads made transformers' generate 5x slower there
    check, vocab = Check(args.out), SHAPES[args.shape]["vocab_size"]
    rep, lines = check.report, check.lines
    cuda = args.provider == "cuda"
    rep["gpu"] = torch.cuda.get_device_name(0) if cuda else "none (a CPU run)"
    rep["onnxruntime"], rep["new_tokens"] = __import__("onnxruntime").__version__, args.new_tokens
    work = args.out / f"gpu-{args.shape}"
    ckpt = build_model(args.shape, work / "checkpoint")
    slots = max(args.concurrency)
    serving = ServingConfig(kv_slots=slots, max_batch_size=4)
    with_optimum = importlib.util.find_spec("optimum") is not None
    repo = work / "model_repository"
    result = export(ckpt, repo, fp16=cuda, device=args.provider, serving=serving, reference=with_optimum)
    onnx_path = str(result.onnx_file)

    def parity():
        dev = verify.check_graph(result.onnx_file, verify.torch_reference(ckpt), args.provider)
        rep["parity"] = {"max_abs": dev.max_abs, "top1": dev.top1, "vs_optimum": result.reference_diff}

    check.phase("parity", parity)
    # Its engines are freed when it returns.
    check.phase("engines", partial(engine_phases, check, args, onnx_path, slots, vocab))
    os.environ["RUDIALOGPT_EXECUTION_PROVIDER"] = args.provider
    log_file = work / "tritonserver.log"

    def served():
        from bench.stats import server_times

        http, grpc, metrics = free_ports(3)
        with TritonServer(
            repo, http, grpc, metrics, log_file=log_file, model_python=args.model_python
        ) as server:
            times = partial(server_times, server.url, server.metrics_url, io.DEFAULT_MODEL_NAME)
            runner = lambda b: run_triton(server.url, io.DEFAULT_MODEL_NAME, b, args.new_tokens)  # noqa: E731
            rep["rows"] += measure("triton_cuda", runner, args.lengths, args.concurrency, vocab, times)
            rep["rounds"] = [
                run_rounds(server.url, io.DEFAULT_MODEL_NAME, server.metrics_url, n, min(args.lengths), vocab)
                for n in args.concurrency
            ]
            most, url, model = max(args.concurrency), server.url, io.DEFAULT_MODEL_NAME
            rep["processes"] = [
                run_processes(url, model, most, n, min(args.lengths), args.new_tokens, vocab, "greedy", times)
                for n in sorted({1, min(4, most)})
            ]
        rep["served_kv_on"] = "on cuda" if "on cuda" in log_file.read_text() else "not on cuda"

    check.phase("triton_cuda", served)

    def baseline(attention: str):
        from transformers import AutoModelForCausalLM

        dtype = torch.float16 if cuda else torch.float32
        model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype, attn_implementation=attention)
        model = model.to(args.provider).eval()
        rows = measure(
            f"transformers_{attention}",
            lambda b: run_transformers(model, b, args.new_tokens, args.provider),
            args.lengths,
            args.concurrency,
            vocab,
        )
        rep["rows"] += rows

    for attention in ("eager", "sdpa"):
        check.phase(f"transformers_{attention}", partial(baseline, attention))

    def compiled():
        from transformers import AutoModelForCausalLM

        from bench.__main__ import summarize

        dtype = torch.float16 if cuda else torch.float32
        model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype).to(args.provider).eval()
        compile_now = cuda or args.cpu_compile
        name = "transformers_compiled" if compile_now else "transformers_static"
        short = min(args.lengths)
        for n in args.concurrency:
            batch = prompts(n, short, vocab, seed=n + short)
            run = partial(run_transformers_static, model, batch, args.new_tokens, args.provider, compile_now)
            t0 = time.perf_counter()
            run()  # this shape's compile
            first = time.perf_counter() - t0
            result = summarize(run())
            row = {"backend": name, "prompt": short, "concurrency": n, **result}
            rep["rows"].append({**row, "compile_s": first - result["wall_s"]})

    check.phase("transformers_compiled", compiled)
    lines += gpu_summary(rep, args.lengths, args.concurrency)
    check.write()
    print("\n".join(lines))
    return 0 if all(ph["ok"] for ph in rep["phases"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
