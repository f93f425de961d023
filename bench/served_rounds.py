"""Bot processes against the real Triton, each timing its own parts of a round (bench/rounds.py).

A bot process is the bot's TritonClient (client/rounds.py) running its conversations at once,
here with `send` and the HTTP call under it timed. Per round it splits into: the client's own
work (the rounds loop, the request gathered, the tokens chosen and appended: the run's time
outside `send`), the codec (the request's serialization and the answer's parsing: `send` outside
the HTTP call) and the HTTP call (aiohttp and Triton's front end, and Triton's own time, which
bench/stats.py reads from the server). Several processes start together (a barrier) so that
Triton's dynamic batcher can merge their rounds.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.canned import steps_in
from bench.runners import prompts
from client.rounds import TritonClient, generate
from client.sampling import SamplingConfig
from client.transport import Answer
from contract import triton_io as io


class Timed(TritonClient):
    """The bot's client with its request (`send`) and the HTTP call under it timed."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.reset()

    def reset(self) -> None:
        self.stamps: list[float] = []  # when each round that stepped was sent
        self.send_s = self.http_s = 0.0
        self.rows_all = 0  # every row sent (END rows too)

    async def send(self, arrays: dict[str, np.ndarray], *args: Any, **kwargs: Any) -> Answer:
        t = time.perf_counter()
        flags = arrays[io.FLAGS][0]
        self.rows_all += flags.size
        if steps_in(flags):
            self.stamps.append(t)
        try:
            return await super().send(arrays, *args, **kwargs)
        finally:
            self.send_s += time.perf_counter() - t

    async def _http(self, *args: Any, **kwargs: Any) -> tuple[int, Any, bytes]:
        t = time.perf_counter()
        try:
            return await super()._http(*args, **kwargs)
        finally:
            self.http_s += time.perf_counter() - t


async def settle(client: TritonClient) -> None:
    """Until the rounds loop has nothing left (the last END round answered): closing the client
    earlier could cancel that round and leave the server's slots held until their idle timeout."""
    task = getattr(client, "_task", None)
    if task is not None and not task.done():
        await asyncio.wait({task}, timeout=60)


def bot_process(
    url: str,
    model: str,
    n: int,
    prompt: int,
    tokens: int,
    vocab: int,
    seed: int,
    sampling: str,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    """One bot process: `n` conversations of `tokens` tokens from `prompt`-token prompts, after
    a warm-up (connections, the client's tables); `ready` once warm, then waits for `go`."""

    async def run() -> dict[str, Any]:
        client = Timed(url, model, timeout=600)
        base = SamplingConfig.greedy() if sampling == "greedy" else SamplingConfig()
        cfg, rng = base.with_(max_new_tokens=tokens, stop_ids=()), np.random.default_rng(seed)
        try:
            await client.model_info()
            warm = base.with_(max_new_tokens=2, stop_ids=())
            await asyncio.gather(*(generate(client, p, warm, rng) for p in prompts(n, 8, vocab, seed + 1)))
            await settle(client)
            await asyncio.to_thread(ready.wait)
            await asyncio.to_thread(go.wait)
            client.reset()
            t0 = time.perf_counter()
            batch = prompts(n, prompt, vocab, seed)
            gens = await asyncio.gather(*(generate(client, p, cfg, rng) for p in batch))
            wall = time.perf_counter() - t0
            send_s, http_s, stamps = client.send_s, client.http_s, list(client.stamps)
            await settle(client)
        finally:
            await client.close()
        steps = [s for g in gens for s in g.step_s]
        return {
            "conversations": n,
            "wall_s": wall,
            "rounds": len(stamps),
            "rows_sent": client.rows_all,
            "tokens": sum(len(g.tokens) for g in gens),
            "full_rows": sum(g.full_rows for g in gens),
            "send_s": send_s,
            "http_s": http_s,
            "step_ms_median": statistics.median(steps) * 1000 if steps else 0.0,
            "ttft_ms_median": statistics.median(g.first_token_s for g in gens) * 1000,
        }

    results.put(asyncio.run(run()))


def split(total: int, processes: int) -> list[int]:
    """`total` conversations over `processes` as evenly as can be."""
    return [total // processes + (i < total % processes) for i in range(processes)]


def run_processes(
    url: str,
    model: str,
    total: int,
    processes: int,
    prompt: int,
    tokens: int,
    vocab: int,
    sampling: str,
    server: Callable[[], Any],
) -> dict[str, Any]:
    """`processes` bot processes with `total` conversations among them, started together; the
    figures of the run (see `breakdown`), each process's, and the server's over exactly it."""
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch or event loop
    ready, go, results = ctx.Barrier(processes + 1), ctx.Barrier(processes + 1), ctx.Queue()
    procs = [
        ctx.Process(
            target=bot_process,
            args=(url, model, n, prompt, tokens, vocab, 1000 * i + total, sampling, ready, go, results),
        )
        for i, n in enumerate(split(total, processes))
    ]
    for p in procs:
        p.start()
    try:
        ready.wait(timeout=600)
        before = server()
        go.wait(timeout=60)
        each = [results.get(timeout=1800) for _ in procs]
        after = server()
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    return breakdown(total, processes, each, after.since(before))


def breakdown(total: int, processes: int, each: list[dict], server: dict[str, float]) -> dict[str, Any]:
    """Per round, ms (the processes' mean): the round, the client's own work, the codec, the HTTP
    call beyond Triton's request time, Triton's phases (per request) and the rest of its request
    time, model.py's own and the engine's (per execute); tokens/s of all processes together; rows
    and requests per Triton execute (the probe that reads the server's gauges adds one of each)."""

    def mean(key: Callable[[dict], float]) -> float:
        return statistics.fmean(key(e) for e in each)

    phases = ("queue", "compute_input", "compute_infer", "compute_output")
    triton = sum(server[f"{k}_ms"] for k in phases)
    http_ms = mean(lambda e: e["http_s"] / e["rounds"] * 1000)
    return {
        "conversations": total,
        "processes": processes,
        "tokens_per_s": sum(e["tokens"] for e in each) / max(e["wall_s"] for e in each),
        "round_ms": mean(lambda e: e["wall_s"] / e["rounds"] * 1000),
        "client_ms": mean(lambda e: (e["wall_s"] - e["send_s"]) / e["rounds"] * 1000),
        "codec_ms": mean(lambda e: (e["send_s"] - e["http_s"]) / e["rounds"] * 1000),
        "http_ms": http_ms - server["request_ms"],
        "triton_request_ms": server["request_ms"],
        **{f"{k}_ms": server[f"{k}_ms"] for k in phases},
        "triton_other_ms": server["request_ms"] - triton,
        "model_py_ms": server["model_py_ms_per_execute"],
        "engine_ms": server["engine_ms_per_execute"],
        "requests_per_execute": server["requests_per_execute"],
        "rows_per_execute": (sum(e["rows_sent"] for e in each) + 1) / max(server["executions"], 1),
        "rounds": sum(e["rounds"] for e in each),
        "full_rows": sum(e["full_rows"] for e in each),
        "step_ms_median": statistics.median(e["step_ms_median"] for e in each),
        "ttft_ms_median": statistics.median(e["ttft_ms_median"] for e in each),
        "each": each,
    }
