"""The report of `python -m bench.rollout`: the figures as markdown, and the GPU memory a host needs."""

from __future__ import annotations

from contract import triton_io as io

RSS = ("idle", "before", "peak", "peak_switch", "after")  # the rss_<k>_mib figures
CUDA_CONTEXT_GB = 0.5  # per python-backend stub (process) with a CUDA session: assumed, not measured
GPU_SHAPES = {  # name: n_layer, n_embd, vocab, positions (GPT-2 layout), served fp16
    "small": (12, 768, 50261, 2048),  # ruDialoGPT-small, 124M
    "medium": (24, 1024, 50261, 2048),  # ruDialoGPT-medium, 355M
}


def params(layers: int, hidden: int, vocab: int, positions: int) -> int:
    """GPT-2's parameter count (LM head tied to the embedding)."""
    return vocab * hidden + positions * hidden + layers * (12 * hidden * hidden + 13 * hidden) + 2 * hidden


def gpu_estimate(file_ratio: float, slots: int = 32, context: int = 1024) -> list[dict]:
    """GPU memory of one version served fp16: weights (parameters × 2 bytes × `file_ratio`, the
    fp32 ONNX file's bytes over 4 per parameter, measured) + KV slots as ServingConfig.kv_bytes
    counts them + an assumed CUDA context per stub; a switch holds two versions."""
    rows = []
    for name, shape in GPU_SHAPES.items():
        layers, hidden = shape[0], shape[1]
        weights = params(*shape) * 2 * file_ratio / 1e9
        kv = (slots + io.PROBE_SLOTS) * context * layers * 2 * hidden * 2 / 1e9
        one = weights + kv + CUDA_CONTEXT_GB
        rows.append(dict(model=name, params_m=params(*shape) / 1e6, weights_gb=weights, kv_gb=kv, slots=slots,
                         context=context, one_version_gb=one, switch_gb=2 * one))  # fmt: skip
    return rows


def report(r: dict) -> str:
    def s(key: str) -> str:
        return "–" if r[key] is None else f"{r[key]:.1f}"

    rows = [
        ("chats (each sends its next message when its reply came)", r["chats"]),
        ("replies (from v1 / v2)", f"{r['replies']} ({r['replies_by_version']['1']} / "
                                   f"{r['replies_by_version']['2']})"),
        ("failed replies", r["failed"]),
        ("replies started after the first v2 reply, answered by v1", r["v1_replies_started_after_first_v2"]),
        ("export of v2, s (fp32, no reference, beside the serving Triton)", f"{r['export_s']:.1f}"),
        ("export end → first reply from v2, s", f"{r['export_end_to_first_v2_reply_s']:.2f}"),
        ("export end → v2 LOADING / v2 READY / v1 unloaded, s (index, every 0.25 s)",
         f"{s('v2_loading_after_export_end_s')} / {s('v2_ready_after_export_end_s')} / "
         f"{s('v1_unloaded_after_export_end_s')}"),
        ("two versions held (v2 LOADING → v1 UNAVAILABLE), s", s("two_versions_held_s")),
        ("Triton RSS (server + stubs) idle / chatting on v1 / peak from export start / peak from export "
         "end / after, MiB", " / ".join(f"{r[f'rss_{k}_mib']:.0f}" for k in RSS)),
        ("Triton reloads of v1 while the export wrote its staging folder", r["v1_reloads"]),
        ("sequences the bot started again because their KV cache was gone", r["sequences_restarted"]),
    ]  # fmt: skip
    notes = [
        "Random weights: most greedy replies decode to nothing, so the bot's retry with sampling runs "
        "as well (two generations for such a reply)."
    ]
    if r["v1_reloads"]:
        notes.append(
            f"While the export ran, Triton (poll) loaded v1 "
            f"again {r['v1_reloads']} time(s), each a second copy in memory; each reload dropped the KV "
            f"caches of the sequences in flight: the bot started {r['sequences_restarted']} again (none "
            "failed), and v2 began loading only once the last reload was done."
        )
    if r["v1_gauge_left_after_unload"]:
        notes.append("v1's `rudialogpt_*` gauges stayed on Triton's /metrics after v1 was unloaded.")
    gpu = [
        f"| {g['model']} | {g['params_m']:.0f}M | {g['weights_gb']:.2f} | {g['kv_gb']:.2f} "
        f"({g['slots']}+1 × {g['context']}) | {g['one_version_gb']:.1f} | {g['switch_gb']:.1f} |"
        for g in r["gpu_estimate"]
    ]
    return "\n".join(
        [
            f"# A new model version under {r['chats']} chats: shape {r['shape']} (`bench/rollout.py`)",
            "",
            f"Real tritonserver on this CPU (poll {r['poll_seconds']} s, {r['threads']} onnxruntime "
            f"threads, fp32, {r['serving']['kv_slots']} KV slots × {r['serving']['slot_length']} positions), "
            f"the bot's ChatBot, greedy {r['tokens_per_reply']} tokens per reply. Exports skip optimum's "
            "reference export (`reference=False`); the serving graph is still checked against PyTorch.",
            "",
            "| | |",
            "|---|---|",
            *(f"| {k} | {v} |" for k, v in rows),
            "",
            *(f"- {n}" for n in notes),
            "",
            "## GPU memory a host needs (fp16, estimate, not measured)",
            "",
            "| model | params | weights GB | KV GB (slots × positions) | one version GB | in a switch GB |",
            "|---|---|---|---|---|---|",
            *gpu,
            "",
            f"Weights: parameters × 2 bytes × {r['file_ratio']:.2f} (the fp32 ONNX file's bytes over 4 per "
            "parameter, measured on this export); KV slots as ServingConfig.kv_bytes counts them (the probe "
            f"slot included); plus {CUDA_CONTEXT_GB} GB of CUDA context per python-backend stub (one per "
            "loaded version): an assumption for recent GPUs, not measured here; onnxruntime's activation "
            "workspace comes on top. A switch holds two versions at once.",
            "",
            f"Rerun: `python -m bench.rollout --shape {r['shape']} --chats {r['chats']} --poll-seconds "
            f"{r['poll_seconds']} --out results --docs docs` (writes rollout-{r['shape']}.json and .md).",
            "",
        ]
    )
