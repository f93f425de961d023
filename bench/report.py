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


_OPS = {"le": ("<=", operator.le), "ge": (">=", operator.ge), "lt": ("<", operator.lt)}


def target(name: str, value: float, op: str | None = None, bound: float = 0.0) -> dict:
    """A target row: `value` must be `op` `bound` ("le", "ge", "lt"); without `op` it is reported."""
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


def ratios(rows: list[dict]) -> list[dict]:
    """The four targets of the benchmark, measured in this run."""
    short, long_ = min(r["prompt"] for r in rows), max(r["prompt"] for r in rows)
    lo, hi = min(r["concurrency"] for r in rows), max(r["concurrency"] for r in rows)
    ms = "ms_per_token_median"
    return [
        target(
            f"(3)/(2) ms/token, 1 conversation, prompt {short}",
            _get(rows, "triton_fp32", short, lo, ms) / _get(rows, "ort", short, lo, ms),
            "le",
            1.15,
        ),
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


def markdown(rows: list[dict], shape: str) -> str:
    lines = [
        f"Shape `{shape}`; greedy, ms per token after the first (median / p95), time to first token, "
        "aggregate tokens/s.",
        "",
        "| backend | prompt | conversations | ms/token | p95 | TTFT ms | tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {LABELS[r['backend']]} | {r['prompt']} | {r['concurrency']} | {r['ms_per_token_median']:.1f} "
            f"| {r['ms_per_token_p95']:.1f} | {r['ttft_ms_median']:.0f} | {r['tokens_per_s']:.1f} |"
        )
    lines += target_table(ratios(rows))
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
    rows: list[dict], out: Path, shape: str, settings: dict, scenarios: dict | None = None
) -> list[Path]:
    from bench import scenarios as sc

    out.mkdir(parents=True, exist_ok=True)
    md, js, png = (out / f"bench-{shape}.{ext}" for ext in ("md", "json", "png"))
    md.write_text(markdown(rows, shape) + (sc.markdown(rows, scenarios) if scenarios else ""))
    extra = {"scenarios": scenarios, "scenario_targets": sc.targets(rows, scenarios)} if scenarios else {}
    js.write_text(
        json.dumps(
            {
                "shape": shape,
                "settings": {k: str(v) for k, v in settings.items()},
                "rows": rows,
                "ratios": ratios(rows),
                **extra,
            },
            indent=2,
        )
    )
    plot(rows, png, shape)
    return [md, js, png]
