"""bench/rounds.py's report in Markdown: conversations with a round's parts, processes, transformers."""

from __future__ import annotations

from bench.machine import line
from bench.served_rounds import split


def _f(value: object, fmt: str = ".2f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else ""


def conversations_table(rows: list[dict]) -> list[str]:
    lines = [
        "| conversations | tokens/s | ms/round | client | codec | HTTP | queue | compute_input "
        "| compute_infer | compute_output | Triton other | model.py | engine | rows/execute "
        "| step ms (median) | TTFT ms |",
        "|---:|" + "---:|" * 15,
    ]
    for r in sorted((r for r in rows if r["processes"] == 1), key=lambda r: r["conversations"]):
        parts = ("client", "codec", "http", "queue", "compute_input", "compute_infer", "compute_output")
        lines.append(
            f"| {r['conversations']} | {r['tokens_per_s']:.0f} | {r['round_ms']:.2f} | "
            + " | ".join(_f(r[f"{k}_ms"]) for k in parts)
            + f" | {r['triton_other_ms']:.2f} | {r['model_py_ms']:.2f} | {r['engine_ms']:.2f} "
            f"| {r['rows_per_execute']:.1f} | {r['step_ms_median']:.2f} | {r['ttft_ms_median']:.1f} |"
        )
    return lines


def processes_table(rows: list[dict]) -> list[str]:
    most = max(r["conversations"] for r in rows)
    mine = sorted((r for r in rows if r["conversations"] == most), key=lambda r: r["processes"])
    lines = [
        "| processes | conversations each | tokens/s | ms/round | requests/execute | rows/execute "
        "| client | HTTP | queue | compute_infer | model.py | engine |",
        "|---:|" + "---:|" * 11,
    ]
    for r in mine:
        lines.append(
            f"| {r['processes']} | {'/'.join(map(str, sorted(set(split(most, r['processes'])))))} "
            f"| {r['tokens_per_s']:.0f} | {r['round_ms']:.2f} "
            f"| {r['requests_per_execute']:.2f} | {r['rows_per_execute']:.1f} | {r['client_ms']:.2f} "
            f"| {r['http_ms']:.2f} | {r['queue_ms']:.2f} | {r['compute_infer_ms']:.2f} "
            f"| {r['model_py_ms']:.2f} | {r['engine_ms']:.2f} |"
        )
    return lines


def transformers_table(report: dict) -> list[str]:
    served = {r["conversations"]: r for r in report["rows"] if r["processes"] == 1}
    lines = [
        "| runner | conversations | tokens/s | ms/token (median) | TTFT ms | compile s "
        "| client → Triton tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    names = {
        "eager": "transformers eager, batched",
        "static": "transformers static cache, not compiled",
        "compiled": "transformers static cache + torch.compile",
    }
    for r in report["transformers"]:
        triton = served.get(r["conversations"], {}).get("tokens_per_s")
        lines.append(
            f"| {names[r['runner']]} | {r['conversations']} | {r['tokens_per_s']:.0f} "
            f"| {r['ms_per_token_median']:.2f} | {r['ttft_ms_median']:.1f} "
            f"| {_f(r['compile_s'], '.0f') if r['runner'] == 'compiled' else ''} | {_f(triton, '.0f')} |"
        )
    return lines


def markdown(report: dict) -> str:
    s, m = report["settings"], report["machine"]
    lines = [
        f"Machine: {line(m)}. Shape `{report['shape']}`, `--kv-slots {s['kv_slots']} --slot-length "
        f"{s['slot_length']}`, {s['threads']} threads, prompt {s['prompt']} tokens, {s['new_tokens']} new "
        f"tokens, {s['sampling']} sampling; medians of {s['repeats']} repeats.",
        "",
        "Conversations in one bot process, ms per round: the client's own work (the run's time "
        "outside `send`), the codec (serialization and parsing), the HTTP call beyond Triton's "
        "request time, Triton's phases per request and the rest of its request time, model.py's own "
        "time and the engine's step per execute():",
        "",
        *conversations_table(report["rows"]),
        "",
        "Bot processes, the most conversations among them, started together:",
        "",
        *processes_table(report["rows"]),
    ]
    if report["transformers"]:
        lines += [
            "",
            f"transformers on the same model and prompts (fp32 on the CPU, torch threads "
            f"{report['torch_threads']}; medians of {s['repeats']} runs, each beside the client's run at "
            "the same conversations, after a warm-up run of that shape, which for `compile` compiles it: "
            "compile s = the warm-up's time beyond a run's):",
            "",
            *transformers_table(report),
        ]
    return "\n".join(lines) + "\n"
