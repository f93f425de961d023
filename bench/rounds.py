"""`python -m bench.rounds`: conversations and bot processes through the real Triton on this
machine, where a round's time goes, and transformers beside it.

Builds a GPT-2 of `--shape` with random weights (bench/__main__.py), exports it with
`--kv-slots` slots of `--slot-length` positions, starts the real tritonserver and, `--repeats`
times over, runs:

- 1 bot process with each of `--conversations` conversations at once: tokens/s, ms per round and
  the round's parts (bench/served_rounds.py: the client's own work, the codec, the HTTP call,
  Triton's phases and the rest of its request time, model.py's own time, the engine's step);
- each of `--processes` bot processes (each its own TritonClient, in its own process) with the
  largest conversation count among them, started together: tokens/s, ms per round, requests and
  rows per Triton execute() (its dynamic batcher merging the processes' rounds);

and beside each single-process run (Triton idle meanwhile), transformers on the same model and
prompts (`--transformers`, at `--transformers-conversations`):
`eager` (generate batched, its dynamic cache), `static` (a static cache, not compiled) and
`compiled` (a static cache and the decode step compiled with torch.compile,
mode="reduce-overhead"; on the CPU that is fp32 and inductor's C++ kernels), each shape's
compile timed apart from the run. Results: <out>/rounds-<shape>.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from bench.machine import machine
from bench.rounds_report import markdown
from bench.served_rounds import run_processes

log = logging.getLogger("bench.rounds")


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def median_rows(samples: list[dict], key: tuple[str, ...]) -> list[dict]:
    """The median of every number over the samples of each `key` (their first sample's other
    fields kept), and how many samples each row has."""
    groups: dict[tuple, list[dict]] = {}
    for s in samples:
        groups.setdefault(tuple(s[k] for k in key), []).append(s)
    rows = []
    for group in groups.values():
        row = {k: v for k, v in group[0].items() if k != "each"}
        for k, v in row.items():
            if isinstance(v, float):
                row[k] = statistics.median(g[k] for g in group)
        rows.append({**row, "repeats": len(group)})
    return rows


def export_once(args: argparse.Namespace, work: Path, ckpt: Path) -> Path:
    """The repository with the checkpoint exported for `--kv-slots` x `--slot-length` (reused)."""
    from contract import repository as layout
    from contract import triton_io as io
    from export import ServingConfig, export

    repo = work / "model_repository"
    if layout.newest(repo / io.DEFAULT_MODEL_NAME) is None:
        serving = ServingConfig(
            intra_op_threads=args.threads,
            kv_slots=args.kv_slots,
            slot_length=args.slot_length,
            max_batch_size=max(8, *args.processes),
        )
        t0 = time.monotonic()
        export(ckpt, repo, serving=serving)
        log.info("exported in %.0f s", time.monotonic() - t0)
    return repo


class Transformers:
    """transformers on the same model and prompts: each runner of `--transformers` at n
    conversations, after a warm-up run of that shape (for `compiled`, its compile)."""

    def __init__(self, args: argparse.Namespace, ckpt: Path, vocab: int):
        from transformers import AutoModelForCausalLM

        from bench.runners import run_transformers, run_transformers_static

        model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
        tokens = args.new_tokens
        self.runners = {
            "eager": lambda b: run_transformers(model, b, tokens),
            "static": lambda b: run_transformers_static(model, b, tokens, compiled=False),
            "compiled": lambda b: run_transformers_static(model, b, tokens, compiled=True),
        }
        self.args, self.vocab, self.first_run_s = args, vocab, dict[tuple[str, int], float]()

    def run(self, n: int, repeat: int) -> list[dict]:
        from bench.__main__ import summarize
        from bench.runners import prompts

        batch, rows = prompts(n, self.args.prompt, self.vocab, seed=n), []
        for name in self.args.transformers:
            runner = self.runners[name]
            if (name, n) not in self.first_run_s:
                t0 = time.perf_counter()
                runner(batch)
                self.first_run_s[name, n] = time.perf_counter() - t0
            row = {"runner": name, "conversations": n, "repeat": repeat, **summarize(runner(batch))}
            row["first_run_s"] = self.first_run_s[name, n]
            row["compile_s"] = row["first_run_s"] - row["wall_s"] if name == "compiled" else 0.0
            rows.append(row)
            log.info(
                "transformers %-8s x%3d: %7.1f tokens/s, %6.2f ms/token, first run %.0f s",
                name,
                n,
                row["tokens_per_s"],
                row["ms_per_token_median"],
                row["first_run_s"],
            )
        return rows


def measure_all(args: argparse.Namespace, work: Path, ckpt: Path, vocab: int) -> tuple[list, list]:
    """`--repeats` times: the bot processes' runs against the real Triton and, beside each
    single-process run, transformers at the same conversations (see the module's docstring)."""
    from bench.stats import server_times
    from contract import triton_io as io
    from serve.server import TritonServer, free_ports

    repo = export_once(args, work, ckpt)
    hf = Transformers(args, ckpt, vocab) if args.transformers else None
    most, samples, hf_samples = max(args.conversations), [], []
    http, grpc, metrics = free_ports(3)
    with TritonServer(repo, http, grpc, metrics, log_file=work / "tritonserver.log") as server:
        times = partial(server_times, server.url, server.metrics_url, io.DEFAULT_MODEL_NAME)
        run = partial(
            run_processes,
            server.url,
            io.DEFAULT_MODEL_NAME,
            prompt=args.prompt,
            tokens=args.new_tokens,
            vocab=vocab,
            sampling=args.sampling,
            server=times,
        )
        for repeat in range(args.repeats):
            plan = [(n, 1) for n in args.conversations]
            plan += [(most, p) for p in args.processes if (most, p) not in plan]
            for total, processes in plan:
                r = run(total=total, processes=processes)
                samples.append({**r, "repeat": repeat})
                log.info(
                    "%3d conversations in %d process(es): %7.1f tokens/s, %6.2f ms/round "
                    "(client %.2f, codec %.2f, HTTP %.2f, Triton %.2f; %.1f requests/execute)",
                    total,
                    processes,
                    r["tokens_per_s"],
                    r["round_ms"],
                    r["client_ms"],
                    r["codec_ms"],
                    r["http_ms"],
                    r["triton_request_ms"],
                    r["requests_per_execute"],
                )
                if hf and processes == 1 and total in args.transformers_conversations:
                    hf_samples += hf.run(total, repeat)  # Triton idle meanwhile
    return samples, hf_samples


def main(argv: list[str] | None = None) -> int:
    from bench.__main__ import SHAPES

    p = argparse.ArgumentParser(prog="python -m bench.rounds", description=__doc__)
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--conversations", type=ints, default=ints("1,32,128,256"))
    p.add_argument("--processes", type=ints, default=ints("1,4"), help="bot processes (most conversations)")
    p.add_argument("--prompt", type=int, default=50, help="prompt tokens")
    p.add_argument("--new-tokens", type=int, default=40)
    p.add_argument("--kv-slots", type=int, default=256)
    p.add_argument("--slot-length", type=int, default=256, help="positions per KV slot (the export's)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime's and torch's CPU threads")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sampling", choices=["card", "greedy"], default="card")
    p.add_argument("--transformers", type=lambda s: [x for x in s.split(",") if x and x != "none"],
                   default=["eager", "compiled"], help="eager,static,compiled or none")  # fmt: skip
    p.add_argument("--transformers-conversations", type=ints, help="default: --conversations")
    args = p.parse_args(argv)
    args.transformers_conversations = args.transformers_conversations or args.conversations
    if max(args.conversations) > args.kv_slots:
        p.error(f"--kv-slots {args.kv_slots} holds fewer than {max(args.conversations)} conversations")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("export").setLevel(logging.WARNING)
    import torch

    from bench.__main__ import build_model

    torch.set_num_threads(args.threads)
    work = args.out / f"work-{args.shape}-rounds-{args.kv_slots}x{args.slot_length}"
    ckpt = build_model(args.shape, work / "checkpoint")
    vocab = SHAPES[args.shape]["vocab_size"]
    samples, hf = measure_all(args, work, ckpt, vocab)
    report: dict[str, Any] = {
        "shape": args.shape,
        "machine": machine("torch", "transformers", "onnxruntime", "aiohttp", "tritonclient"),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "rows": median_rows(samples, ("conversations", "processes")),
        "transformers": median_rows(hf, ("runner", "conversations")),
        "torch_threads": torch.get_num_threads(),
        "samples": samples,
        "transformers_samples": hf,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    md, js = (args.out / f"rounds-{args.shape}.{ext}" for ext in ("md", "json"))
    js.write_text(json.dumps(report, indent=2))
    md.write_text(markdown(report))
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
