"""`python -m bench --shape small`: transformers vs onnxruntime vs the bot client → real Triton.

Builds a GPT-2 of the chosen shape with random weights offline, exports it twice (fp32 and
int8) into one Triton repository, starts the real tritonserver, and times 40 greedy tokens for
1, 4 and 8 concurrent conversations with ~50- and ~1000-token prompts: transformers `generate`
(its own KV cache), the server's engine in-process (the serving graph, KV slots written in place),
and the bot's client against Triton serving the fp32 and the int8 export. Then the many-chats
scenarios (bench/scenarios.py) against the same server.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from bench.report import write_report
from bench.runners import Timing, prompts, run_ort, run_transformers, run_triton
from bench.scenarios import run_scenarios
from bench.stats import ServerTimes, server_times
from contract import repository as layout
from contract import triton_io as io

INT8_MODEL = f"{io.DEFAULT_MODEL_NAME}_int8"  # the int8 export, served beside the fp32 one

log = logging.getLogger("bench")

SHAPES = {  # n_layer, n_head, n_embd, vocab, positions
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, vocab_size=2000, n_positions=2048),
    "small": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50261, n_positions=2048),  # ruDialoGPT-small
}


def build_model(shape: str, folder: Path) -> Path:
    """A random-weight GPT-2 of `shape` with a small dialogue tokenizer, saved as a checkpoint."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from training.data import load_examples
    from training.tiny import train_tokenizer

    if (folder / "model.safetensors").exists():
        return folder
    root = Path(__file__).resolve().parent.parent
    texts = [p + t for p, t in load_examples(root / "training" / "data.csv").pairs]
    tokenizer = train_tokenizer(texts)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(**SHAPES[shape], pad_token_id=0)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def summarize(t: Timing) -> dict:
    ms = np.array(t.token_s) * 1000
    return {
        "ms_per_token_median": float(np.median(ms)),
        "ms_per_token_p95": float(np.percentile(ms, 95)),
        "ttft_ms_median": float(statistics.median(t.ttft_s) * 1000),
        "tokens_per_s": t.tokens / t.wall_s,
        "wall_s": t.wall_s,
        **t.extra,
    }


def measure(
    backend: str,
    runner: Callable[[list[list[int]]], Timing],
    lengths: list[int],
    conc: list[int],
    vocab: int,
    server: Callable[[], ServerTimes] | None = None,
) -> list[dict]:
    """One row per prompt length and concurrency for `runner` (after a warm-up), each logged;
    with `server`, the server's own times over each run too (bench/stats.py)."""
    runner(prompts(1, 16, vocab, seed=99))  # warm-up: sessions, allocators, connections
    rows = []
    for length in lengths:
        for n in conc:
            before = server() if server else None
            result = summarize(runner(prompts(n, length, vocab, seed=n + length)))
            if server and before:
                result.update(server().since(before))
            rows.append({"backend": backend, "prompt": length, "concurrency": n, **result})
            log.info(
                "%-12s prompt %4d x%d: %6.1f ms/token (p95 %6.1f), ttft %7.1f ms, %6.1f tok/s",
                backend,
                length,
                n,
                result["ms_per_token_median"],
                result["ms_per_token_p95"],
                result["ttft_ms_median"],
                result["tokens_per_s"],
            )
    return rows


async def check_tokenizer(url: str, name: str, model_dir: Path) -> None:
    """The bot's start check (client/chat.py's ChatBot.check): the served version's tokenizer is the
    one in `model_dir` (TokenizerRefused names the folder that matches)."""
    from client.tokenizer import ModelVersions
    from client.transport import Transport

    transport = Transport(url, name)
    try:
        ModelVersions.open(model_dir).check(await transport.serving())
    finally:
        await transport.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--out", type=Path, default=Path("results"), help="folder for the table, JSON and plot")
    p.add_argument("--concurrency", default="1,4,8", help="conversations at once, comma separated")
    p.add_argument("--prompt-lengths", default="50,1000", help="prompt tokens, comma separated")
    p.add_argument("--new-tokens", type=int, default=40)
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch and onnxruntime")
    p.add_argument(
        "--no-scenarios", action="store_true", help="skip the many-chats scenarios (bench/scenarios.py)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("export").setLevel(logging.WARNING)

    import torch
    from transformers import AutoModelForCausalLM

    from engine.core import KVEngine, make_session
    from export import ServingConfig, export
    from serve.server import TritonServer, free_ports

    torch.set_num_threads(args.threads)
    work = args.out / f"work-{args.shape}"
    ckpt = build_model(args.shape, work / "checkpoint")
    repo = work / "model_repository"
    most = max(int(c) for c in args.concurrency.split(","))
    serving = ServingConfig(intra_op_threads=args.threads, kv_slots=most, max_batch_size=most)
    for name, quantize in ((io.DEFAULT_MODEL_NAME, None), (INT8_MODEL, "int8")):
        if layout.newest(repo / name) is None:
            t0 = time.monotonic()
            export(ckpt, repo, name=name, quantize=quantize, serving=serving)
            log.info("exported %s in %.0f s", name, time.monotonic() - t0)
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    newest = layout.newest(repo / io.DEFAULT_MODEL_NAME)
    assert newest is not None
    conc = [int(c) for c in args.concurrency.split(",")]
    engine = KVEngine(
        make_session(str(newest / io.ONNX_FILE), threads=args.threads),
        slots=max(conc),
    )
    vocab = SHAPES[args.shape]["vocab_size"]
    lengths = [int(n) for n in args.prompt_lengths.split(",")]

    rows = []
    http, grpc, metrics = free_ports(3)
    with TritonServer(repo, http, grpc, metrics, log_file=work / "tritonserver.log") as server:
        for name in (io.DEFAULT_MODEL_NAME, INT8_MODEL):  # what Triton serves is what was exported here
            asyncio.run(check_tokenizer(server.url, name, repo / name))
        runners = {
            "transformers": lambda b: run_transformers(model, b, args.new_tokens),
            "ort": lambda b: run_ort(engine, b, args.new_tokens),
            "triton_fp32": lambda b: run_triton(server.url, io.DEFAULT_MODEL_NAME, b, args.new_tokens),
            "triton_int8": lambda b: run_triton(server.url, INT8_MODEL, b, args.new_tokens),
        }
        served = {"triton_fp32": io.DEFAULT_MODEL_NAME, "triton_int8": INT8_MODEL}
        for backend, runner in runners.items():
            served_name = served.get(backend)
            times = (
                partial(server_times, server.url, server.metrics_url, served_name) if served_name else None
            )
            rows += measure(backend, runner, lengths, conc, vocab, times)
        scenarios = (
            None
            if args.no_scenarios
            else run_scenarios(
                server.url, engine, vocab, min(lengths), max(lengths), max(conc), args.new_tokens
            )
        )
    paths = write_report(rows, args.out, args.shape, vars(args), vocab, scenarios)
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
