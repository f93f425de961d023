"""Targets of the benchmark's reports: a measured value against what is wanted, and their table.

report.py (the main table), scenario_report.py (the many-chats scenarios) and gpu_report.py (the
GPU check) build their targets here."""

from __future__ import annotations

import operator

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


def measured(rows: list[dict], backend: str, prompt: int, n: int, key: str) -> float:
    """`key` of the row of `backend` at `prompt` tokens and `n` conversations (nan: not measured)."""
    for r in rows:
        if (r["backend"], r["prompt"], r["concurrency"]) == (backend, prompt, n):
            return float(r[key])
    return float("nan")


def overhead(row: dict) -> float:
    """model.py's own time per execute over what it may take: 0.3 ms + 5 % of the engine's step."""
    return float(row["model_py_ms_per_execute"] / (0.3 + 0.05 * row["engine_ms_per_execute"]))
