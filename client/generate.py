"""The generate loop: prompt ids in, reply ids out, one Triton step per token."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from client.sampling import Context, SamplingConfig, choose, needs_full_row, next_token
from client.transport import (
    NoFreeSlot,
    SequenceLost,
    StepOutput,
    TritonClient,
    TritonError,
    TritonUnavailable,
)
from contract import triton_io as io

log = logging.getLogger(__name__)


@dataclass
class Generation:
    """A finished generation with its timings."""

    tokens: list[int]  # the reply's ids, without the stop token
    stopped: bool  # True: a stop id ended it; False: max_new_tokens did
    first_token_s: float = 0.0  # time to the first answer (prompt step)
    step_s: list[float] = field(default_factory=list)  # time of every later step
    full_rows: int = 0  # steps whose candidates could not prove the choice: the whole row was fetched


class VersionChanged(Exception):
    """Another model version answered than the one the generation is for: its tokens so far are
    dropped (a reply comes from one model) and the caller starts it again for `version`."""

    def __init__(self, version: str, expected: str):
        super().__init__(f"model version {version} answered a generation for version {expected}")
        self.version, self.expected = version, expected


def new_sequence_id() -> int:
    """A random sequence id (uint64, never 0, below the probe's io.PROBE_SEQUENCE_ID)."""
    return secrets.randbits(63) or 1


PROMPT_CHUNK = 256  # prompt tokens per step: a long prompt delays the other chats by one chunk per round
RESUME_WAIT_S = 0.2  # pause before a step is sent again after a failure


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
    version: str | None = None,
) -> Generation:
    """Sample a reply to `prompt_ids`; END is always sent, also on errors and cancellation.

    The prompt goes in chunks of `prompt_chunk` tokens (None: whole), each a step at its
    position; only the last chunk's answer is used. Each step's answer is the server's K most
    likely tokens; where they cannot prove the sampler's choice (client/sampling.py), the same step
    is sent again asking for the whole row. If Triton becomes unavailable the step is sent again
    (it names its position, so that is safe); if the server lost the sequence, it is started
    again over the whole context: `resumes` times in all before the error is raised. With
    `max_positions`, generation also stops where the model's context ends. `on_tokens(tokens)`,
    if given, gets the reply's ids so far after each sampled token (awaited). With `version` (the
    model version `prompt_ids` were encoded for), an answer from another version raises
    VersionChanged: a new version loaded on the server (it holds none of this sequence)."""
    if prompt_chunk is not None and prompt_chunk < 1:
        raise ValueError(
            f"prompt_chunk must be >= 1 token (or None for the whole prompt), got {prompt_chunk}"
        )
    seq = new_sequence_id()
    context = Context(prompt_ids, cfg.no_repeat_ngram_size)
    tokens: list[int] = []
    chunk = prompt_chunk or max(len(context), 1)
    full = needs_full_row(cfg, io.CANDIDATES)

    async def feed(at: int, whole: bool = full) -> StepOutput:
        """The answer after the context's tokens from position `at` on (in chunks), recovering."""
        nonlocal resumes
        waited = 0.0  # for a free slot, at most the client's timeout
        while True:
            try:
                out = None
                for i in range(at, max(len(context), 1), chunk):
                    last = i + chunk >= len(context)
                    out = await client.step(seq, context.tokens[i : i + chunk], i, full=whole and last)
                    if version is not None and out.version and out.version != version:
                        raise VersionChanged(out.version, version)
                    at = i + chunk
                assert out is not None
                return out
            except TritonError as exc:
                if version is not None and exc.version and exc.version != version:
                    raise VersionChanged(exc.version, version) from exc
                if isinstance(exc, NoFreeSlot):  # every slot held: wait, not counted as a failure
                    if at > 0 or waited >= client.timeout:
                        raise
                    await asyncio.sleep(RESUME_WAIT_S)
                    waited += RESUME_WAIT_S
                    continue
                if not isinstance(exc, (TritonUnavailable, SequenceLost)) or resumes <= 0:
                    raise
                resumes -= 1
                lost = isinstance(exc, SequenceLost)
                log.warning(
                    "step failed (%s): %s", exc, "starting the sequence again" if lost else "sending it again"
                )
                await asyncio.sleep(RESUME_WAIT_S)
                at = 0 if lost else min(at, len(context) - 1)

    async def pick(out: StepOutput) -> int:
        token = choose(out.ids, out.logits, context, cfg, rng) if out.full is None else None
        if token is None:
            if out.full is None:  # the candidates could not prove it: the same step, whole row
                gen.full_rows += 1
                out = await feed(len(context) - 1, whole=True)
            assert out.full is not None
            token = next_token(out.full, context, cfg, rng)
        return token

    t0 = time.perf_counter()
    gen = Generation(tokens, stopped=False)
    sent = False
    try:
        async with client.admitted():
            sent = True
            out = await feed(0)
            gen.first_token_s = time.perf_counter() - t0
            while True:
                token = await pick(out)
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
                out = await feed(len(context) - 1)
                gen.step_s.append(time.perf_counter() - t)
    finally:
        if sent:
            client.end(seq)
