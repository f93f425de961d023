"""The report of the many-chats scenarios (bench/scenarios.py): their targets and their table."""

from __future__ import annotations

from bench.targets import measured, target, target_table


def targets(rows: list[dict], sc: dict) -> list[dict]:
    """The scenarios' targets and the sampling cost, measured in this run."""
    hi, long_ = max(r["concurrency"] for r in rows), max(r["prompt"] for r in rows)
    ms = "ms_per_token_median"

    def long_prompts(backend: str) -> float:  # from the main table
        return measured(rows, backend, long_, hi, ms)

    sampled = {r["backend"]: r["tokens_per_s"] for r in sc["sampled"]}
    churn = {r["mode"]: r for r in sc["churn"]}
    newcomer = {r["mode"]: r for r in sc["newcomer"]}
    n = sc["sampled"][0]["concurrency"]
    return [
        target(
            f"sampled: served / in-process tokens/s, {n} conversations, card's sampling",
            sampled["triton_fp32"] / sampled["ort"],
            "ge",
            0.9,
        ),
        target(
            f"long prompts: served / in-process ms/token, {hi} conversations, prompt {long_}",
            long_prompts("triton_fp32") / long_prompts("ort"),
            "le",
            1.25,
        ),
        target(
            f"long prompts: served / transformers ms/token, {hi} conversations, prompt {long_}",
            long_prompts("triton_fp32") / long_prompts("transformers"),
            "lt",
            1.0,
        ),
        target(
            "churn: median reply tokens/s, after / before",
            churn["after"]["reply_tokens_per_s_median"] / churn["before"]["reply_tokens_per_s_median"],
        ),
        target(
            "churn: p95 step time, after / before",
            churn["after"]["ms_per_token_p95"] / churn["before"]["ms_per_token_p95"],
        ),
        target(
            f"newcomer: {newcomer['after']['concurrency']} decoding while a "
            f"{newcomer['after']['long_prompt']}-token prompt arrives: p95 / median step",
            newcomer["after"]["ms_per_token_p95"] / newcomer["after"][ms],
            "le",
            2.0,
        ),
        target(
            "newcomer, before (whole prompt): p95 / median step",
            newcomer["before"]["ms_per_token_p95"] / newcomer["before"][ms],
        ),
        target(
            "sampling from the whole row, card's settings: ms per token", sc["sampling_ms_per_token"]["row"]
        ),
        target(
            "sampling from the candidates, card's settings: ms per token",
            sc["sampling_ms_per_token"]["candidates"],
            "le",
            0.1,
        ),
    ]


def markdown(rows: list[dict], sc: dict) -> str:
    """The scenarios' section of the report."""

    def f(r, k, fmt=".1f"):
        return format(r[k], fmt) if k in r else ""

    lines = [
        "",
        "Many chats at once (before: whole prompts in one step; after: the bot's default, "
        "256-token prompt chunks). ms/token: the decoding conversations' steps.",
        "",
        "| scenario | mode | tokens/s | reply tok/s median | ms/token | p95 | max | newcomer TTFT ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sc["churn"] + sc["newcomer"]:
        lines.append(
            f"| {r['scenario']} | {r['mode']} | {f(r, 'tokens_per_s')} | {f(r, 'reply_tokens_per_s_median')} "
            f"| {f(r, 'ms_per_token_median')} | {f(r, 'ms_per_token_p95')} | {f(r, 'ms_per_token_max')} "
            f"| {f(r, 'newcomer_ttft_ms', '.0f')} |"
        )
    for r in sc["sampled"]:
        batch = f" ({r['rows_per_request']:.1f} rows per request)" if "rows_per_request" in r else ""
        lines.append(
            f"| sampled x{r['concurrency']}, prompt {r['prompt']} | {r['backend']}{batch} "
            f"| {f(r, 'tokens_per_s')} | | {f(r, 'ms_per_token_median')} | | | |"
        )
    lines += target_table(targets(rows, sc))
    return "\n".join(lines) + "\n"
