"""The benchmark's outputs: a Markdown table with the target ratios, JSON, and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

from bench import scenario_report
from bench.targets import measured, overhead, target, target_table

LABELS = {
    "transformers": "transformers generate",
    "ort": "engine in-process: serving graph, KV slots in place",
    "triton_fp32": "client → Triton fp32",
    "triton_int8": "client → Triton int8",
}


def served_targets(
    rows: list[dict], vocab: int, served: str = "triton_fp32", engine: str = "ort"
) -> list[dict]:
    """What one served step costs beyond the engine's: time, bytes, model.py."""
    short, long_ = min(r["prompt"] for r in rows), max(r["prompt"] for r in rows)
    lo = min(r["concurrency"] for r in rows)
    ms = "ms_per_token_median"
    row_bytes = 4 * vocab  # what a step answered before: the whole row of float32 logits
    mine = [r for r in rows if r["backend"] == served]
    return [
        target(
            f"served/in-process ms/token, 1 conversation, prompt {short}",
            measured(rows, served, short, lo, ms) / measured(rows, engine, short, lo, ms),
            "le",
            1.1,
        ),
        *(
            target(
                f"bytes per conversation per step / a whole row ({row_bytes / 1000:.0f} kB), prompt {p}",
                measured(rows, served, p, lo, "bytes_per_row") / row_bytes,
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
    names = {"ort": "engine in-process", "triton_fp32": "Triton fp32"}
    return [
        *served_targets(rows, vocab),
        target(
            f"Triton int8 / transformers ms/token, 1 conversation, prompt {short}",
            measured(rows, "triton_int8", short, lo, ms) / measured(rows, "transformers", short, lo, ms),
            "le",
            0.5,
        ),
        *(  # KV slots written in place: a step costs about the same whatever the context
            target(
                f"{name} ms/token at prompt {long_} / at {short}, 1 conversation",
                measured(rows, b, long_, lo, ms) / measured(rows, b, short, lo, ms),
                "le",
                1.15,
            )
            for b, name in names.items()
        ),
        # The engine against transformers' own cache (DynamicCache, the past concatenated each step)
        target(
            f"engine in-process / transformers ms/token, {hi} conversations, prompt {long_}",
            measured(rows, "ort", long_, hi, ms) / measured(rows, "transformers", long_, hi, ms),
        ),
        target(
            f"engine in-process / transformers prompt step (TTFT) of {long_} tokens, 1 conversation",
            measured(rows, "ort", long_, lo, "ttft_ms_median")
            / measured(rows, "transformers", long_, lo, "ttft_ms_median"),
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
    out.mkdir(parents=True, exist_ok=True)
    md, js, png = (out / f"bench-{shape}.{ext}" for ext in ("md", "json", "png"))
    md.write_text(
        markdown(rows, shape, vocab) + (scenario_report.markdown(rows, scenarios) if scenarios else "")
    )
    extra = (
        {"scenarios": scenarios, "scenario_targets": scenario_report.targets(rows, scenarios)}
        if scenarios
        else {}
    )
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
