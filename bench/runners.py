"""The ways to generate that the benchmark compares, each timed per token the same way.

Every runner generates `new_tokens` greedy tokens for `n` conversations at once from random
prompts of `prompt_len` ids and returns, per conversation, the time to the first token and the
time of each later token.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from contract import triton_io as io


@dataclass
class Timing:
    """One run: n conversations generated together."""

    ttft_s: list[float] = field(default_factory=list)  # per conversation
    token_s: list[float] = field(default_factory=list)  # every later token, all conversations
    wall_s: float = 0.0  # the whole run
    tokens: int = 0  # tokens generated in all
    extra: dict = field(default_factory=dict)  # what else the runner measured (the client's counts)


def prompts(n: int, prompt_len: int, vocab: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(10, vocab, prompt_len).tolist() for _ in range(n)]


def run_transformers(
    model, batch: list[list[int]], new_tokens: int, device: str = "cpu", **generate_kwargs
) -> Timing:
    """transformers `generate` in-process, with its KV cache (DynamicCache unless
    `generate_kwargs` say otherwise), the model's own attention implementation; one batch of all
    conversations."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    stamps: list[float] = []

    class Clock(StoppingCriteria):  # called once per generated token
        def __call__(self, input_ids, scores, **kwargs):
            stamps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    ids = torch.tensor(batch, device=device)
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=0,
            stopping_criteria=StoppingCriteriaList([Clock()]),
            **generate_kwargs,
        )
    wall = time.perf_counter() - t0
    steps = np.diff([t0, *stamps])
    return Timing(
        [float(steps[0])] * len(batch),
        [float(s) for s in steps[1:] for _ in batch],
        wall,
        len(batch) * new_tokens,
    )


def run_transformers_static(
    model, batch: list[list[int]], new_tokens: int, device: str = "cpu", compiled: bool = True
) -> Timing:
    """transformers `generate` at its fastest as documented: a static KV cache and, `compiled`,
    the decode step compiled with torch.compile(mode="reduce-overhead", fullgraph=True), which
    generate() does itself (the prompt step runs eager). On CUDA, reduce-overhead is CUDA graphs;
    on the CPU it is inductor's C++ kernels (no graphs) and transformers compiles there only when
    asked (CompileConfig's _compile_all_devices). Each batch shape (conversations, prompt length)
    compiles anew on its first run: warm up on the same shape before timing."""
    from transformers import CompileConfig

    config = CompileConfig(fullgraph=True, mode="reduce-overhead", dynamic=False)
    config._compile_all_devices = True  # on the CPU too (transformers' own switch for it)
    return run_transformers(
        model,
        batch,
        new_tokens,
        device,
        cache_implementation="static",
        compile_config=config,
        disable_compile=not compiled,
    )


def run_ort(engine, batch: list[list[int]], new_tokens: int, sampling=None) -> Timing:
    """onnxruntime in-process: the server's engine, without Triton or HTTP, all conversations
    in one call per step, choosing each step's tokens as the bot's rounds do (greedy unless
    `sampling`): from the candidates in one call over all rows, or from the whole row where they
    cannot prove the choice."""
    from client.sampling import Contexts, SamplingConfig, next_token, sample
    from engine.core import Step

    cfg = sampling or SamplingConfig.greedy()
    table, rows, rng = Contexts.of(*batch), np.arange(len(batch)), np.random.default_rng(0)

    def last(i: int, end: bool = False, full: bool = False) -> Step:
        n = int(table.length[i])
        return Step(i + 1, table.tokens[i, n - 1 : n], n - 1, end=end, full=full)

    def choose(out) -> np.ndarray:
        logits, uniforms = out.top_logits, lambda drawing: rng.random(int(drawing.sum()))
        tokens = sample(out.top_ids, logits, logits.min(axis=1), table, rows, cfg, uniforms)
        for i in np.flatnonzero(tokens < 0).tolist():  # the same step again, for the whole row
            tokens[i] = next_token(engine.step([last(i, full=True)]).logits(0), table, i, cfg, rng)
        return tokens

    t0 = time.perf_counter()
    out = engine.step([Step(i + 1, np.array(p), 0) for i, p in enumerate(batch)])
    stamps = [time.perf_counter()]
    for k in range(new_tokens - 1):
        table.append(rows, choose(out))
        out = engine.step([last(i, end=k == new_tokens - 2) for i in range(len(batch))])
        stamps.append(time.perf_counter())
    return _timing(batch, t0, stamps, new_tokens)


def _timing(batch: list[list[int]], t0: float, stamps: list[float], new_tokens: int) -> Timing:
    steps = np.diff([t0, *stamps])
    return Timing(
        [float(steps[0])] * len(batch),
        [float(s) for s in steps[1:] for _ in batch],
        stamps[-1] - t0,
        len(batch) * new_tokens,
    )


def run_triton(
    url: str, model: str, batch: list[list[int]], new_tokens: int, sampling=None, **generate_kwargs
) -> Timing:
    """The bot's own client and its rounds against the real Triton, conversations concurrent
    (greedy unless `sampling`; the rest goes to generate())."""
    from client.rounds import TritonClient, generate
    from client.sampling import SamplingConfig

    cfg = (sampling or SamplingConfig.greedy()).with_(max_new_tokens=new_tokens, stop_ids=())

    async def all_at_once():
        client = TritonClient(url, model, timeout=120)
        try:
            await client.model_info()  # fetched once per client: not part of the first token's time
            t0 = time.perf_counter()
            gens = await asyncio.gather(
                *(
                    generate(client, p, cfg, np.random.default_rng(i), **generate_kwargs)
                    for i, p in enumerate(batch)
                )
            )
            return (gens, time.perf_counter() - t0), client
        finally:
            await client.close()

    (gens, wall), client = asyncio.run(all_at_once())
    return Timing(
        [g.first_token_s for g in gens],
        [s for g in gens for s in g.step_s],
        wall,
        sum(len(g.tokens) for g in gens),
        {
            "rows_per_request": client.rows_sent / max(client.rounds_sent, 1),
            "bytes_per_row": client.bytes_received / max(client.rows_answered, 1),
            "full_rows": sum(g.full_rows for g in gens),
        },
    )


def run_rounds(
    url: str, model: str, metrics_url: str, n: int, prompt_len: int, vocab: int, steps: int = 100
) -> dict:
    """Where a served decode step's time goes: `n` sequences started, then `steps` greedy rounds
    sent as bare round requests (no rounds loop, no sampling), against the server's own times
    over exactly those rounds (bench/stats.py). ms per round: the client's whole round, its
    request (tensors, HTTP, parsing), Triton's phases, model.py's own time and the engine's."""
    from bench.stats import server_times
    from client.transport import Transport, round_arrays

    async def main() -> dict:
        client = Transport(url, model, timeout=120)
        try:
            seqs = [70_000 + i for i in range(n)]
            batch = prompts(n, prompt_len, vocab, seed=17)
            first = await client.send(round_arrays([(s, 0, p, 0) for s, p in zip(seqs, batch, strict=True)]))
            tokens = first.ids[:, 0].tolist()
            positions = [len(p) for p in batch]
            before = await asyncio.to_thread(server_times, url, metrics_url, model)
            sending = 0.0
            t0 = time.perf_counter()
            for _ in range(steps):
                rows = [(s, p, [t], 0) for s, p, t in zip(seqs, positions, tokens, strict=True)]
                t = time.perf_counter()
                answer = await client.send(round_arrays(rows))
                sending += time.perf_counter() - t
                tokens = answer.ids[:, 0].tolist()
                positions = [p + 1 for p in positions]
            wall = time.perf_counter() - t0
            after = await asyncio.to_thread(server_times, url, metrics_url, model)
            await client.send(round_arrays([(s, 0, [], io.ROW_END) for s in seqs]))
        finally:
            await client.close()
        server = after.since(before)
        return {
            "concurrency": n,
            "round_ms": wall / steps * 1000,
            "request_ms": sending / steps * 1000,
            **{k: v for k, v in server.items() if k.endswith("_ms") or k.endswith("execute")},
        }

    return asyncio.run(main())
