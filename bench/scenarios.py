"""Many chats at once, each scenario against the real Triton in the same run as the main table.

- sampled: 8 conversations, prompt 50, the card's default sampling: served vs the in-process
  engine with the same sampling;
- long prompts: 8 conversations, prompt 1000 (from the main table): served vs in-process and
  transformers (compared in scenario_report.py);
- churn: users x replies with random prompt and reply lengths and pauses, before (whole prompts
  in one step) and after (256-token chunks, the bot's default);
- newcomer: 7 conversations decoding while a 1000-token prompt arrives: their step times,
  before/after;
- the client's sampling cost per token at the shape's vocabulary.

Their targets and table: scenario_report.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.runners import prompts, run_ort, run_triton
from contract import triton_io as io

log = logging.getLogger("bench.scenarios")


@dataclass(frozen=True)
class Mode:
    prompt_chunk: int | None  # prompt tokens per step; None: the whole prompt in one


MODES = {
    "before": Mode(prompt_chunk=None),  # prompts whole: one long step delays every other chat
    "after": Mode(prompt_chunk=256),  # the bot's default
}


def _client(url: str, model: str):
    from client.rounds import TritonClient

    return TritonClient(url, model, timeout=120)


def _steps(gens) -> dict:
    ms = np.array([s for g in gens for s in g.step_s]) * 1000
    return {
        "ms_per_token_median": float(np.median(ms)),
        "ms_per_token_p95": float(np.percentile(ms, 95)),
        "ms_per_token_max": float(ms.max()),
    }


def sampled(url: str, engine, n: int, prompt: int, vocab: int, new_tokens: int) -> list[dict]:
    """The card's sampling, served and in-process, n conversations."""
    from client.sampling import SamplingConfig

    cfg = SamplingConfig(max_new_tokens=new_tokens)
    batch = prompts(n, prompt, vocab, seed=7)

    rows = []
    for backend in ("ort", "triton_fp32"):
        timing = (
            run_ort(engine, batch, new_tokens, sampling=cfg)
            if backend == "ort"
            else run_triton(url, io.DEFAULT_MODEL_NAME, batch, new_tokens, sampling=cfg)
        )
        rows.append(
            {
                "scenario": "sampled",
                "backend": backend,
                "prompt": prompt,
                "concurrency": n,
                "tokens_per_s": timing.tokens / timing.wall_s,
                "ms_per_token_median": float(np.median(timing.token_s) * 1000),
                **timing.extra,
            }
        )
    return rows


def churn(
    url: str,
    users: int,
    replies: int,
    max_prompt: int,
    vocab: int,
    new_tokens: int,
    mode: str,
    max_pause_s: float = 0.3,
) -> dict:
    """Users chatting at random: each sends `replies` messages with random prompt and reply
    lengths and pauses; the same draws before and after."""
    from client.rounds import generate
    from client.sampling import SamplingConfig

    rng = np.random.default_rng(11)
    plan = [
        [
            (
                rng.integers(10, vocab, int(rng.integers(20, max_prompt + 1))).tolist(),
                int(rng.integers(5, new_tokens + 1)),
                float(rng.uniform(0, max_pause_s)),
            )
            for _ in range(replies)
        ]
        for _ in range(users)
    ]

    async def user(client, u):
        out = []
        for ids, length, pause in plan[u]:
            await asyncio.sleep(pause)
            t = time.perf_counter()
            g = await generate(
                client,
                ids,
                SamplingConfig(max_new_tokens=length),
                np.random.default_rng(u),
                prompt_chunk=MODES[mode].prompt_chunk,
            )
            out.append((g, time.perf_counter() - t))
        return out

    async def everyone():
        client = _client(url, io.DEFAULT_MODEL_NAME)
        try:
            t0 = time.perf_counter()
            done = await asyncio.gather(*(user(client, u) for u in range(users)))
            return [r for d in done for r in d], time.perf_counter() - t0
        finally:
            await client.close()

    results, wall = asyncio.run(everyone())
    gens = [g for g, _ in results]
    return {
        "scenario": "churn",
        "mode": mode,
        "users": users,
        "replies": replies,
        "tokens_per_s": sum(len(g.tokens) for g in gens) / wall,
        "reply_tokens_per_s_median": float(np.median([len(g.tokens) / s for g, s in results])),
        **_steps(gens),
    }


def newcomer(url: str, n: int, prompt: int, long_prompt: int, vocab: int, new_tokens: int, mode: str) -> dict:
    """n conversations decoding; after 5 tokens each, one more arrives with a long prompt."""
    from client.rounds import generate
    from client.sampling import SamplingConfig

    cfg = SamplingConfig.greedy(max_new_tokens=new_tokens, stop_ids=())
    batch, late = prompts(n, prompt, vocab, seed=3), prompts(1, long_prompt, vocab, seed=4)[0]
    chunk = MODES[mode].prompt_chunk

    async def run():
        client = _client(url, io.DEFAULT_MODEL_NAME)
        rounds, arrived = [0], asyncio.Event()
        real_send = client.send

        async def counting_send(arrays, *args, **kwargs):
            rounds[0] += 1  # the prompts' round, then one token step of each conversation per round
            if rounds[0] > 5:
                arrived.set()
            return await real_send(arrays, *args, **kwargs)

        client.send = counting_send

        async def newcomer_reply():
            await arrived.wait()
            return await generate(client, late, cfg, np.random.default_rng(0), prompt_chunk=chunk)

        try:
            late_task = asyncio.create_task(newcomer_reply())
            gens = await asyncio.gather(
                *(generate(client, p, cfg, np.random.default_rng(0), prompt_chunk=chunk) for p in batch)
            )
            return gens, await late_task
        finally:
            await client.close()

    gens, late_gen = asyncio.run(run())
    return {
        "scenario": "newcomer",
        "mode": mode,
        "concurrency": n,
        "long_prompt": long_prompt,
        "newcomer_ttft_ms": late_gen.first_token_s * 1000,
        **_steps(gens),
    }


def sampling_cost(vocab: int, repeats: int = 200) -> dict[str, float]:
    """ms per token of the card's sampling, 600 tokens of context: from one vocab-sized row of
    logits, and from its K candidates (what the server answers)."""
    from client.sampling import Contexts, SamplingConfig, choose, next_token

    rng = np.random.default_rng(0)
    logits, context = rng.normal(size=vocab).astype(np.float32) * 3, rng.integers(0, vocab, 600)
    ids = np.argsort(-logits)[: io.CANDIDATES].astype(np.int32)
    cfg, table = SamplingConfig(), Contexts.of(context)
    t0 = time.perf_counter()
    for _ in range(repeats):
        next_token(logits, table, 0, cfg, rng)
    t1 = time.perf_counter()
    for _ in range(repeats):
        choose(ids, logits[ids], table, 0, cfg, rng)
    t2 = time.perf_counter()
    return {"row": (t1 - t0) / repeats * 1000, "candidates": (t2 - t1) / repeats * 1000}


def run_scenarios(
    url: str, engine, vocab: int, prompt: int, long_prompt: int, n: int, new_tokens: int
) -> dict:
    """Every scenario, in one run against the server at `url`."""
    out: dict[str, Any] = {"sampled": sampled(url, engine, n, prompt, vocab, new_tokens)}
    log.info("sampled x%d: %s", n, out["sampled"])
    out["churn"] = [
        churn(url, n, 3, max(20, long_prompt // 2), vocab, new_tokens, m) for m in ("before", "after")
    ]
    log.info("churn: %s", out["churn"])
    out["newcomer"] = [
        newcomer(url, n - 1, prompt, long_prompt, vocab, new_tokens, m) for m in ("before", "after")
    ]
    log.info("newcomer: %s", out["newcomer"])
    out["sampling_ms_per_token"] = sampling_cost(vocab)
    return out
