"""The GPU check's report (bench/gpu_check.py): written after every phase, and its summary in Markdown."""

from __future__ import annotations

import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

from bench.report import table
from bench.targets import measured, overhead, target, target_table

log = logging.getLogger("bench.gpu_check")

LABELS = {
    "ort_cuda": "engine in-process, ordinary calls",
    "ort_cuda_graphs": "engine in-process, decode graphs",
    "triton_cuda": "bot client → Triton",
    "transformers_eager": "transformers, eager attention",
    "transformers_sdpa": "transformers, sdpa attention",
    "transformers_compiled": "transformers, static cache + torch.compile (reduce-overhead)",
    "transformers_static": "transformers, static cache, not compiled (a CPU run)",
}


class Check:
    """The report, written after every phase; a phase that raises is recorded and the next runs."""

    def __init__(self, out: Path):
        self.out, self.lines = out, list[str]()
        self.report: dict[str, Any] = {"phases": {}, "rows": []}
        out.mkdir(parents=True, exist_ok=True)

    def phase(self, name: str, fn) -> object:
        t0 = time.monotonic()
        try:
            result = fn()
            self.report["phases"][name] = {"ok": True, "seconds": round(time.monotonic() - t0, 1)}
            return result
        except Exception as exc:
            log.error("phase %s failed: %r", name, exc)
            self.report["phases"][name] = {"ok": False, "error": traceback.format_exc()[-2000:]}
            return None
        finally:
            self.write()

    def write(self) -> None:
        (self.out / "gpu-check.json").write_text(json.dumps(self.report, indent=2, default=str))
        (self.out / "gpu-check.md").write_text("\n".join(self.lines) + "\n")


def gpu_summary(rep: dict, lengths: list[int], concurrency: list[int]) -> list[str]:
    """bench.gpu_check's report in Markdown: setup, parity, graphs, where a step goes, the table,
    the targets."""
    rows, short, lo, hi = rep["rows"], min(lengths), min(concurrency), max(concurrency)
    par, kv = rep.get("parity", {}), rep.get("kv", {})
    lines = [
        f"GPU: {rep['gpu']}; onnxruntime {rep['onnxruntime']}; 124M GPT-2 (random weights), fp16, greedy, "
        f"{rep['new_tokens']} new tokens; ms per token = ms per step.",
        "",
        f"- fp16 serving graph vs PyTorch: max |Δlogit| {par.get('max_abs', float('nan')):.3g}, "
        f"top-1 {par.get('top1', float('nan')):.1%}"
        + (f"; vs optimum's ONNX export {par['vs_optimum']:.3g}" if par.get("vs_optimum") is not None else "")
        + f"; KV buffers on {kv.get('device')} "
        f"({kv.get('bytes', 0) / 1e9:.2f} GB)",
        "- phases: " + ", ".join(f"{k} {'ok' if v['ok'] else 'FAILED'}" for k, v in rep["phases"].items()),
    ]
    if "churn" in rep:
        c = rep["churn"]
        lines.append(
            f"- decode graphs vs ordinary calls, {c['rounds']} rounds, conversations joining and leaving: "
            f"{c['rows_differing']} of {c['rows']} greedy tokens differ ({c['graph_steps']} graph steps; "
            f"{c['rows_refused']} rows refused for want of a slot)"
        )
    for g in rep.get("graphs", []):
        lines.append(
            f"- decode graph of {g['bucket']} slots: first run (capture) {g['first_run_ms']:.1f} ms, "
            f"{g['memory_mb']:.0f} MB, max |Δ| vs ordinary {g['max_abs_vs_ordinary']:.2g}"
        )
    if compiles := [r for r in rows if r["backend"] == "transformers_compiled"]:
        lines.append(
            "- transformers' compile (static cache, reduce-overhead), each shape's first run beyond a run: "
            + ", ".join(f"{r['concurrency']} conversations {r['compile_s']:.0f} s" for r in compiles)
        )
    if "warm_up_s" in rep:
        warm = ", ".join(f"{k} {v:.1f} s" for k, v in rep["warm_up_s"].items())
        lines.append(f"- warm-up at load (every chunk width, each decode graph): {warm}")
    if "prompt_chunks" in rep:
        chunks = ", ".join(
            f"{c['position']}: {c['ms']:.1f}" for c in rep["prompt_chunks"] if c["attempt"] == 1
        )
        lines.append(
            f"- a 1000-token prompt in 256-token chunks, ms per chunk by position (second prompt): {chunks}"
        )
    if "first_chunks" in rep:
        f = rep["first_chunks"]
        lines.append(
            f"- prompt batching ({f['batching']}): first chunks together vs alone "
            f"max |Δ| {f['max_abs']:.2g}, "
            f"top-1 equal {f['top1_equal']}; TTFT of 8 prompts arriving together, median ms off -> on: "
            f"200 tokens {f['ttft_200_off_ms']:.1f} -> {f['ttft_200_on_ms']:.1f}, "
            f"1000 tokens {f['ttft_1000_off_ms']:.1f} -> {f['ttft_1000_on_ms']:.1f}"
        )
    if "slots_auto" in rep:
        lines.append(f"- {rep['slots_auto']}")
    if "rounds" in rep:
        lines += [
            "",
            "Where a served decode step goes (bare round requests, greedy, no gate; ms per round):",
            "",
            "| conversations | round | client request | Triton's phases | model.py | engine |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rep["rounds"]:
            triton = sum(r[f"{k}_ms"] for k in ("queue", "compute_input", "compute_infer", "compute_output"))
            lines.append(
                f"| {r['concurrency']} | {r['round_ms']:.2f} | {r['request_ms']:.2f} | {triton:.2f} "
                f"| {r['model_py_ms_per_execute']:.2f} | {r['engine_ms_per_execute']:.2f} |"
            )
    if rep.get("processes"):
        lines += [
            "",
            "Bot processes started together, the most conversations among them (Triton's dynamic "
            "batcher merges their rounds; ms per round, parts as above, per request):",
            "",
            "| processes | conversations | tokens/s | round | requests/execute | rows/execute | client "
            "| HTTP | Triton's request | model.py | engine |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rep["processes"]:
            lines.append(
                f"| {r['processes']} | {r['conversations']} | {r['tokens_per_s']:.0f} | {r['round_ms']:.2f} "
                f"| {r['requests_per_execute']:.2f} | {r['rows_per_execute']:.1f} | {r['client_ms']:.2f} "
                f"| {r['http_ms']:.2f} | {r['triton_request_ms']:.2f} | {r['model_py_ms']:.2f} "
                f"| {r['engine_ms']:.2f} |"
            )
    lines += ["", *table(rows, LABELS)]
    targets = []
    served, engine = "triton_cuda", "ort_cuda_graphs"
    if any(r["backend"] == served for r in rows) and any(r["backend"] == engine for r in rows):
        ms = "ms_per_token_median"
        targets += [
            target(
                f"engine decode step, {lo} conversation(s), ms",
                measured(rows, engine, short, lo, ms),
                "le",
                1.0,
            ),
            target(
                f"engine decode step, {hi} conversations, ms",
                measured(rows, engine, short, hi, ms),
                "le",
                1.5,
            ),
            target(
                f"served / in-process ms/token, {lo} conversation(s)",
                measured(rows, served, short, lo, ms) / measured(rows, engine, short, lo, ms),
                "le",
                1.3,
            ),
            *(
                target(
                    f"served / in-process tokens/s, {n} conversations",
                    measured(rows, served, short, n, "tokens_per_s")
                    / measured(rows, engine, short, n, "tokens_per_s"),
                    "ge",
                    0.8,
                )
                for n in concurrency
                if n > lo
            ),
            *(
                target(
                    f"served / transformers eager tokens/s, {n} conversations",
                    measured(rows, served, short, n, "tokens_per_s")
                    / measured(rows, "transformers_eager", short, n, "tokens_per_s"),
                    "gt",
                    1.0,
                )
                for n in concurrency
            ),
            *(
                target(
                    f"served / transformers compiled tokens/s, {n} conversations",
                    measured(rows, served, short, n, "tokens_per_s")
                    / measured(rows, "transformers_compiled", short, n, "tokens_per_s"),
                )
                for n in concurrency
                if any(r["backend"] == "transformers_compiled" for r in rows)
            ),
            target(
                "model.py per execute / (0.3 ms + 5 % of the engine's step), worst row",
                max(overhead(r) for r in rows if r["backend"] == served),
                "le",
                1.0,
            ),
        ]
    return lines + target_table(targets)
