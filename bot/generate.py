"""The generate loop: prompt ids in, reply ids out, one Triton step per token."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from bot.sampling import SamplingConfig, next_token
from bot.triton_client import SequenceLost, TritonClient, TritonUnavailable

log = logging.getLogger(__name__)


@dataclass
class Generation:
    """A finished generation with its timings."""

    tokens: list[int]  # the reply's ids, without the stop token
    stopped: bool  # True: a stop id ended it; False: max_new_tokens did
    first_token_s: float = 0.0  # time to the first logits (prompt step)
    step_s: list[float] = field(default_factory=list)  # time of every later step


def new_sequence_id() -> int:
    """A random correlation id (uint64, never 0: Triton reserves 0 for 'no sequence')."""
    return secrets.randbits(63) or 1


PROMPT_CHUNK = 256  # prompt tokens per step: a long prompt delays the other chats by one chunk per round


async def generate(
    client: TritonClient,
    prompt_ids: list[int],
    cfg: SamplingConfig,
    rng: np.random.Generator,
    resumes: int = 2,
    max_positions: int | None = None,
    on_tokens: Callable[[list[int]], Awaitable[None] | None] | None = None,
    *,
    prompt_chunk: int | None = PROMPT_CHUNK,
) -> Generation:
    """Sample a reply to `prompt_ids`; END is always sent, also on errors and cancellation.

    The prompt goes in chunks of `prompt_chunk` tokens (START with the first, continuation
    steps for the rest; only the last chunk's logits are used; None sends it whole). If Triton
    becomes unavailable or loses the sequence mid-reply, the sequence is restarted (START over
    the whole context, which is idempotent) up to `resumes` times before the error is raised.
    With `max_positions`, generation also stops where the model's context ends.
    `on_tokens(tokens)`, if given, gets the reply's ids so far after each sampled token (awaited)."""
    if prompt_chunk is not None and prompt_chunk < 1:
        raise ValueError(
            f"prompt_chunk must be >= 1 token (or None for the whole prompt), got {prompt_chunk}"
        )
    seq = new_sequence_id()
    context = list(prompt_ids)
    tokens: list[int] = []
    chunk = prompt_chunk or max(len(context), 1)

    async def feed(new: list[int] | None) -> np.ndarray:
        """Logits after `new` (None: the whole context from START, in chunks), resuming on loss."""
        nonlocal resumes
        while True:
            steps = (
                [(context[i : i + chunk], i == 0) for i in range(0, max(len(context), 1), chunk)]
                if new is None
                else [(new, False)]
            )
            start = False
            try:
                for ids, start in steps:
                    logits = await client.step(seq, ids, start=start)
                return logits
            except (TritonUnavailable, SequenceLost) as exc:
                if start or resumes <= 0:  # a START was retried already
                    raise
                resumes -= 1
                log.warning("step failed (%s): restarting the sequence over %d tokens", exc, len(context))
                await asyncio.sleep(0.2)
                new = None

    t0 = time.perf_counter()
    try:
        logits = await feed(None)
        gen = Generation(tokens, stopped=False, first_token_s=time.perf_counter() - t0)
        while True:
            token = next_token(logits, np.asarray(context, dtype=np.int64), cfg, rng)
            if token in cfg.stop_ids:
                gen.stopped = True
                return gen
            tokens.append(token)
            context.append(token)
            if on_tokens and (pending := on_tokens(tokens)) is not None:
                await pending
            if len(tokens) >= cfg.max_new_tokens or (max_positions and len(context) >= max_positions):
                return gen
            t = time.perf_counter()
            logits = await feed([token])
            gen.step_s.append(time.perf_counter() - t)
    finally:
        # Shielded so that a cancelled reply still frees the server's cache.
        await asyncio.shield(client.end(seq))
