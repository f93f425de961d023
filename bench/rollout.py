"""`python -m bench.rollout --shape small [--chats 8] [--poll-seconds 2] [--out results/] [--docs docs]`

A new model version while chats talk to the bot, measured on the real tritonserver (polling): checkpoint
A exported as version 1 and served; `--chats` conversations through the bot's ChatBot, each sending its
next message when its reply came; meanwhile checkpoint B (same shape, other weights) exported as version
2 (`reference=False`: no optimum reference export, the serving graph is still checked against PyTorch).
Recorded: export time, export end → first reply from v2, failed replies, v1 replies after that one,
Triton's RSS (server + stubs, every 50 ms), how long two versions were held; plus the GPU memory a host
needs during a switch. Writes rollout-<shape>.json and .md to --out (and --docs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.__main__ import SHAPES, build_model
from bench.rollout_report import gpu_estimate, params, report
from bench.server_watch import HELD, Watch, children_of, rss_mib
from client.chat import ChatBot
from contract import triton_io as io

MODEL = io.DEFAULT_MODEL_NAME
TOKENS = 16  # greedy tokens per reply
KEEP_TURNS = 6  # history kept per chat (the bot trims to the model's context anyway)


@dataclass
class Said:
    started: float
    finished: float
    version: str | None


@dataclass
class Chats:
    said: list[Said] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def converse(bot: ChatBot, k: int, chats: Chats) -> None:
    """One conversation: its next message as soon as the reply came, until told to stop."""
    history: list[str] = []
    m = 0
    while not chats.stop.is_set():
        message = f"Привет, я собеседник {k}. Сообщение {m}: как дела?"
        m += 1
        started = time.monotonic()
        try:
            reply = await bot.reply([*history, message])
        except Exception as exc:  # counted: must stay 0
            chats.failed.append(repr(exc))
            await asyncio.sleep(0.1)
            continue
        chats.said.append(Said(started, time.monotonic(), reply.version))
        history = [*history, message, reply.text][-KEEP_TURNS:]


def variant(checkpoint: Path, folder: Path) -> Path:
    """Checkpoint B: the same shape and tokenizer as `checkpoint`, other random weights (seed 1),
    so that its greedy replies differ."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    if (folder / "model.safetensors").exists():
        return folder
    torch.manual_seed(1)
    GPT2LMHeadModel(GPT2Config.from_pretrained(checkpoint)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(checkpoint).save_pretrained(folder)
    return folder


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s")
        await asyncio.sleep(0.1)


def run(shape: str, out: Path, chats: int = 8, poll_seconds: int = 2, threads: int = 2) -> dict:
    """The rollout under `chats` conversations; every figure, as written to rollout-<shape>.json."""
    from client.rounds import TritonClient
    from client.sampling import SamplingConfig
    from client.tokenizer import ModelVersions
    from export import ServingConfig, export
    from serve.server import TritonServer, free_ports

    work = out / f"rollout-{shape}"
    ckpt_a = build_model(shape, work / "a")
    ckpt_b = variant(ckpt_a, work / "b")
    repo = work / "model_repository"
    shutil.rmtree(repo, ignore_errors=True)
    serving = ServingConfig(intra_op_threads=threads, kv_slots=chats, max_batch_size=chats, slot_length=1024)
    t = time.monotonic()
    first = export(ckpt_a, repo, serving=serving, reference=False)
    export_a_s = time.monotonic() - t
    http, grpc, metrics = free_ports(3)
    triton_log = out / f"rollout-{shape}-triton.log"
    triton_log.unlink(missing_ok=True)
    server = TritonServer(repo, http, grpc, metrics, log_file=triton_log, poll_seconds=poll_seconds)
    restarts: list[float] = []  # the bot's "starting the sequence again": a step found its cache gone

    def restarted(record: logging.LogRecord) -> bool:
        if "starting the sequence again" in record.getMessage():
            restarts.append(time.monotonic())
        return True

    logging.getLogger("client.generate").addFilter(restarted)
    f: dict = {}
    with server:
        assert server.process is not None
        time.sleep(2)
        f["rss_idle_mib"] = rss_mib(server.process.pid, children_of(server.process.pid))
        watch = Watch(server.process.pid, server.url, server.metrics_url)
        talk = Chats()

        async def scenario() -> None:
            client = TritonClient(server.url, MODEL, timeout=120)
            bot = ChatBot(
                client, ModelVersions.open(repo / MODEL), SamplingConfig.greedy(max_new_tokens=TOKENS)
            )
            tasks = [asyncio.create_task(converse(bot, k, talk)) for k in range(chats)]
            try:
                await until(lambda: len(talk.said) >= 2 * chats, 600, "replies from version 1")
                f["t_export_start"] = time.monotonic()
                second = await asyncio.to_thread(export, ckpt_b, repo, serving=serving, reference=False)
                f["t_export_end"] = time.monotonic()
                assert second.version == 2, second.version
                await until(lambda: any(s.version == "2" for s in talk.said), 600, "a reply from version 2")
                first_v2 = min(s.finished for s in talk.said if s.version == "2")
                f["t_first_v2"] = first_v2
                await until(
                    lambda: sum(s.started > first_v2 for s in talk.said) >= 2 * chats and watch.held() == 1,
                    600,
                    "version 1 unloaded",
                )
                f["t_settled"] = time.monotonic()
                await asyncio.sleep(3)  # "after": v2 alone, chatting
                f["t_end"] = time.monotonic()
            finally:
                talk.stop.set()
                await asyncio.gather(*tasks)
                await client.close()

        try:
            asyncio.run(scenario())
        finally:
            watch.close()
            logging.getLogger("client.generate").removeFilter(restarted)
    t0, end = f["t_export_start"], f["t_export_end"]

    def since_export(check: Callable[[dict[str, str], set[str]], bool]) -> float | None:
        t = watch.first(check)
        return None if t is None else t - end

    v2_loading = since_export(lambda i, g: i.get("2") in HELD)
    v1_gone = since_export(lambda i, g: "2" in i and i.get("1") not in HELD)
    shape_params = params(*(SHAPES[shape][k] for k in ("n_layer", "n_embd", "vocab_size", "n_positions")))
    late_v1 = [s for s in talk.said if s.started > f["t_first_v2"] and s.version != "2"]
    onnx_bytes = first.onnx_file.stat().st_size
    rss = {
        "idle": f["rss_idle_mib"],
        "before": statistics.median(watch.between(t0 - 3, t0)),
        "peak": max(watch.between(t0, f["t_settled"])),
        "peak_switch": max(watch.between(end, f["t_settled"])),
        "after": statistics.median(watch.between(f["t_settled"], f["t_end"])),
    }
    return {
        "shape": shape, "model": SHAPES[shape], "chats": chats, "poll_seconds": poll_seconds,
        "threads": threads, "tokens_per_reply": TOKENS, "reference_export": False,
        "serving": {"kv_slots": serving.kv_slots, "slot_length": serving.slot_length, "dtype": "fp32"},
        "onnx_bytes": onnx_bytes, "export_a_s": export_a_s, "export_s": end - t0,
        "export_end_to_first_v2_reply_s": f["t_first_v2"] - end,
        "replies": len(talk.said),
        "replies_by_version": {v: sum(s.version == v for s in talk.said) for v in ("1", "2")},
        "failed": len(talk.failed), "failures": talk.failed[:5],
        "v1_replies_started_after_first_v2": len(late_v1),
        **{f"rss_{k}_mib": v for k, v in rss.items()},
        "v2_loading_after_export_end_s": v2_loading,
        "v2_ready_after_export_end_s": since_export(lambda i, g: i.get("2") == "READY"),
        "v1_unloaded_after_export_end_s": v1_gone,
        "two_versions_held_s": None if v1_gone is None or v2_loading is None else v1_gone - v2_loading,
        "gauges_of_both_after_export_end_s": since_export(lambda i, g: {"1", "2"} <= g),
        "v1_gauge_left_after_unload": "1" in watch.states[-1][2],
        # Triton loading the serving version again (poll saw the model's folder change): each
        # reload drops the KV caches of the sequences in flight; the bot starts them again.
        "v1_reloads": triton_log.read_text(errors="replace").count(f'"loading: {MODEL}:1"') - 1,
        # Steps that found their cache gone (SequenceLost), from the export's start on; the switch to
        # v2 itself restarts replies through VersionChanged, which this does not count.
        "sequences_restarted": sum(t >= t0 for t in restarts),
        "file_ratio": onnx_bytes / (4 * shape_params),
        "gpu_estimate": gpu_estimate(onnx_bytes / (4 * shape_params)),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.rollout", description=__doc__)
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--chats", type=int, default=8)
    p.add_argument("--poll-seconds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads per version")
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--docs", type=Path, help="also write rollout-<shape>.json/.md here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args.shape, args.out, args.chats, args.poll_seconds, args.threads)
    for folder in [args.out, *([args.docs] if args.docs else [])]:
        (folder / f"rollout-{args.shape}.json").write_text(json.dumps(result, indent=2) + "\n")
        (folder / f"rollout-{args.shape}.md").write_text(report(result))
        print(folder / f"rollout-{args.shape}.md")
    print(report(result))
    return 0 if result["failed"] == 0 and result["v1_replies_started_after_first_v2"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
