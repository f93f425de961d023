"""The benchmark's outputs: a Markdown table with the target ratios, JSON, and a PNG plot."""

from __future__ import annotations

import json
import operator
from pathlib import Path

LABELS = {
    "transformers": "(1) transformers generate",
    "ort_v1": "(2a) engine v1: optimum graph, past concatenated",
    "ort": "(2) engine v2: serving graph, KV slots in place",
    "triton_fp32": "(3) client → Triton fp32",
    "triton_int8": "(4) client → Triton int8",
}


_OPS = {
    "le": ("<=", operator.le),
    "ge": (">=", operator.ge),
    "lt": ("<", operator.lt),
    "gt": (">", operator.gt),
}


def target(name: str, value: float, op: str | None = None, bound: float = 0.0) -> dict:
    """A target row: `value` must be `op` `bound` ("le", "ge", "lt", "gt"); without `op` it is reported."""
    return {
        "name": name,
        "target": f"{_OPS[op][0]} {bound:g}" if op else "report",
        "value": value,
        "ok_if": (op, bound) if op else None,
    }


def target_table(targets: list[dict]) -> list[str]:
    """Markdown lines: each target, what is wanted, the value and whether it is met."""
    lines = ["", "| target | wanted | measured | met |", "|---|---:|---:|:---:|"]
    for t in targets:
        met = (
            "–"
            if t["ok_if"] is None
            else "yes"
            if _OPS[t["ok_if"][0]][1](t["value"], t["ok_if"][1])
            else "no"
        )
        lines.append(f"| {t['name']} | {t['target']} | {t['value']:.2f} | {met} |")
    return lines


def _get(rows, backend, prompt, n, key):
    for r in rows:
        if (r["backend"], r["prompt"], r["concurrency"]) == (backend, prompt, n):
            return r[key]
    return float("nan")


def overhead(row: dict) -> float:
    """model.py's own time per execute over what it may take: 0.3 ms + 5 % of the engine's step."""
    return row["model_py_ms_per_execute"] / (0.3 + 0.05 * row["engine_ms_per_execute"])


def served_targets(
    rows: list[dict], vocab: int, served: str = "triton_fp32", engine: str = "ort"
) -> list[dict]:
    """What one served step costs beyond the engine's (the served path issue): time, bytes, model.py."""
    short, long_ = min(r["prompt"] for r in rows), max(r["prompt"] for r in rows)
    lo = min(r["concurrency"] for r in rows)
    ms = "ms_per_token_median"
    row_bytes = 4 * vocab  # what a step answered before: the whole row of float32 logits
    mine = [r for r in rows if r["backend"] == served]
    return [
        target(
            f"served/in-process ms/token, 1 conversation, prompt {short}",
            _get(rows, served, short, lo, ms) / _get(rows, engine, short, lo, ms),
            "le",
            1.1,
        ),
        *(
            target(
                f"bytes per conversation per step / a whole row ({row_bytes / 1000:.0f} kB), prompt {p}",
                _get(rows, served, p, lo, "bytes_per_row") / row_bytes,
                "le",
                bound,
            )
            for p, bound in ((short, 1 / 25), (long_, 1 / 10))
        ),
        target(
            "model.py per execute / (0.3 ms + 5 % of the engine's step), worst row",
            max(overhead(r) for r in mine) if mine else float("nan"),
            "le",
            1.0,
        ),
    ]


def ratios(rows: list[dict], vocab: int) -> list[dict]:
    """The targets of the benchmark, measured in this run."""
    short, long_ = min(r["prompt"] for r in rows), max(r["prompt"] for r in rows)
    lo, hi = min(r["concurrency"] for r in rows), max(r["concurrency"] for r in rows)
    ms = "ms_per_token_median"
    return [
        *served_targets(rows, vocab),
        target(
            f"(4)/(1) ms/token, 1 conversation, prompt {short}",
            _get(rows, "triton_int8", short, lo, ms) / _get(rows, "transformers", short, lo, ms),
            "le",
            0.5,
        ),
        *(  # Engine v2
            target(
                f"{LABELS[b][:3]} ms/token at prompt {long_} / at {short}, 1 conversation",
                _get(rows, b, long_, lo, ms) / _get(rows, b, short, lo, ms),
                "le",
                1.15,
            )
            for b in ("ort", "triton_fp32")
        ),
        target(
            f"(2)/(2a) ms/token, {hi} conversations, prompt {long_}",
            _get(rows, "ort", long_, hi, ms) / _get(rows, "ort_v1", long_, hi, ms),
            "le",
            0.5,
        ),
        target(
            f"(2)/(2a) prompt step (TTFT) of {long_} tokens, 1 conversation",
            _get(rows, "ort", long_, lo, "ttft_ms_median")
            / _get(rows, "ort_v1", long_, lo, "ttft_ms_median"),
            "le",
            0.7,
        ),
    ]


def table(rows: list[dict], labels: dict[str, str]) -> list[str]:
    """The measured rows; served rows also with their rows per request, bytes per row and the
    server's times (Triton's compute_infer per request, model.py's own work per execute)."""
    lines = [
        "| backend | prompt | conversations | ms/token | p95 | TTFT ms | tokens/s "
        "| rows/request | bytes/row | compute_infer ms | model.py ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def f(r: dict, key: str, fmt: str) -> str:
        return format(r[key], fmt) if key in r else ""

    for r in rows:
        lines.append(
            f"| {labels.get(r['backend'], r['backend'])} | {r['prompt']} | {r['concurrency']} "
            f"| {r['ms_per_token_median']:.2f} | {r['ms_per_token_p95']:.2f} | {r['ttft_ms_median']:.1f} "
            f"| {r['tokens_per_s']:.1f} | {f(r, 'rows_per_request', '.1f')} | {f(r, 'bytes_per_row', '.0f')} "
            f"| {f(r, 'compute_infer_ms', '.2f')} | {f(r, 'model_py_ms_per_execute', '.3f')} |"
        )
    return lines


def markdown(rows: list[dict], shape: str, vocab: int) -> str:
    lines = [
        f"Shape `{shape}`; greedy, ms per token after the first (median / p95), time to first token, "
        "aggregate tokens/s.",
        "",
        *table(rows, LABELS),
    ]
    lines += target_table(ratios(rows, vocab))
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, shape: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prompts = sorted({r["prompt"] for r in rows})
    fig, axes = plt.subplots(1, len(prompts), figsize=(6 * len(prompts), 4), squeeze=False)
    for ax, prompt in zip(axes[0], prompts, strict=True):
        for backend, label in LABELS.items():
            pts = sorted(
                (r["concurrency"], r["ms_per_token_median"])
                for r in rows
                if r["backend"] == backend and r["prompt"] == prompt
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=label)
        ax.set(
            title=f"{shape}: prompt {prompt} tokens",
            xlabel="concurrent conversations",
            ylabel="ms per token (median)",
        )
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    rows: list[dict], out: Path, shape: str, settings: dict, vocab: int, scenarios: dict | None = None
) -> list[Path]:
    from bench import scenarios as sc

    out.mkdir(parents=True, exist_ok=True)
    md, js, png = (out / f"bench-{shape}.{ext}" for ext in ("md", "json", "png"))
    md.write_text(markdown(rows, shape, vocab) + (sc.markdown(rows, scenarios) if scenarios else ""))
    extra = {"scenarios": scenarios, "scenario_targets": sc.targets(rows, scenarios)} if scenarios else {}
    js.write_text(
        json.dumps(
            {
                "shape": shape,
                "settings": {k: str(v) for k, v in settings.items()},
                "rows": rows,
                "ratios": ratios(rows, vocab),
                **extra,
            },
            indent=2,
        )
    )
    plot(rows, png, shape)
    return [md, js, png]


def gpu_summary(rep: dict, lengths: list[int], concurrency: list[int], labels: dict[str, str]) -> list[str]:
    """bench.gpu_check's report in Markdown: setup, parity, graphs, where a step goes, the table,
    the targets."""
    rows, short, lo, hi = rep["rows"], min(lengths), min(concurrency), max(concurrency)
    par, kv = rep.get("parity", {}), rep.get("kv", {})
    lines = [
        f"GPU: {rep['gpu']}; onnxruntime {rep['onnxruntime']}; 124M GPT-2 (random weights), fp16, greedy, "
        f"{rep['new_tokens']} new tokens; ms per token = ms per step.",
        "",
        f"- fp16 serving graph vs PyTorch: max |Δlogit| {par.get('max_abs', float('nan')):.3g}, "
        f"top-1 {par.get('top1', float('nan')):.1%}; KV buffers on {kv.get('device')} "
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
    lines += ["", *table(rows, labels)]
    targets = []
    served, engine = "triton_cuda", "ort_cuda_graphs"
    if any(r["backend"] == served for r in rows) and any(r["backend"] == engine for r in rows):
        ms = "ms_per_token_median"
        targets += [
            target(
                f"engine decode step, {lo} conversation(s), ms",
                _get(rows, engine, short, lo, ms),
                "le",
                1.0,
            ),
            target(
                f"engine decode step, {hi} conversations, ms", _get(rows, engine, short, hi, ms), "le", 1.5
            ),
            target(
                f"served / in-process ms/token, {lo} conversation(s)",
                _get(rows, served, short, lo, ms) / _get(rows, engine, short, lo, ms),
                "le",
                1.3,
            ),
            *(
                target(
                    f"served / in-process tokens/s, {n} conversations",
                    _get(rows, served, short, n, "tokens_per_s")
                    / _get(rows, engine, short, n, "tokens_per_s"),
                    "ge",
                    0.8,
                )
                for n in concurrency
                if n > lo
            ),
            *(
                target(
                    f"served / transformers eager tokens/s, {n} conversations",
                    _get(rows, served, short, n, "tokens_per_s")
                    / _get(rows, "transformers_eager", short, n, "tokens_per_s"),
                    "gt",
                    1.0,
                )
                for n in concurrency
            ),
            target(
                "model.py per execute / (0.3 ms + 5 % of the engine's step), worst row",
                max(overhead(r) for r in rows if r["backend"] == served),
                "le",
                1.0,
            ),
        ]
    return lines + target_table(targets)
