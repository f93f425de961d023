"""One generation: prompt ids in, reply ids out, one step per round (client/rounds.py runs them).

A `Sequence` is what a generation brings and keeps between rounds besides its context, which the
rounds hold as arrays (client/sampling.py's Contexts): its settings, its caller's future, its
result and what it still may try. Each round it steps (the next prompt chunk, or its last token);
where the candidates cannot prove the choice the same step goes again for the whole row. A step
names its position, so sending it again is safe: after Triton was unavailable the step is sent
again, after the server lost the sequence it starts again over the whole context; `resumes` times
in all. With `version`, an answer from another model version ends it with VersionChanged.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from client.sampling import SamplingConfig
from client.transport import NoFreeSlot, SequenceLost, TritonError, TritonUnavailable

log = logging.getLogger(__name__)

PROMPT_CHUNK = 256  # prompt tokens per step: a long prompt delays the other chats by one chunk per round
RESUME_WAIT_S = 0.2  # pause before a step is sent again after a failure
OnTokens = Callable[[list[int]], Awaitable[None] | None]  # the reply's ids so far, after each token


@dataclass
class Generation:
    """A finished generation with its timings."""

    tokens: list[int]  # the reply's ids, without the stop token
    stopped: bool  # True: a stop id ended it; False: max_new_tokens or the context's end did
    first_token_s: float = 0.0  # time to the first answer (the prompt's steps)
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


class Sequence:
    """One generation between rounds (see the module's docstring); `row` is its context's row."""

    def __init__(
        self,
        prompt: list[int],
        cfg: SamplingConfig,
        rng: np.random.Generator,
        *,
        max_positions: int | None = None,
        on_tokens: OnTokens | None = None,
        prompt_chunk: int | None = PROMPT_CHUNK,
        version: str | None = None,
        resumes: int = 2,
        busy_s: float = 10.0,
    ):
        if prompt_chunk is not None and prompt_chunk < 1:
            raise ValueError(
                f"prompt_chunk must be >= 1 token (or None for the whole prompt), got {prompt_chunk}"
            )
        self.id = new_sequence_id()
        self.prompt = prompt
        self.cfg, self.rng, self.on_tokens, self.version = cfg, rng, on_tokens, version
        self.limit = min(cfg.max_new_tokens, (max_positions or 1 << 62) - len(prompt))  # reply tokens
        self.chunk = prompt_chunk or max(len(prompt), 1)
        self.resumes, self.busy_left = resumes, busy_s  # failures it may still meet; time to wait for a slot
        self.row = -1  # its context's row in the rounds' Contexts, once admitted
        self.started = False  # a step was sent: END must follow
        self.not_before = 0.0  # loop time before which it does not step (a pause after a failure)
        self.callback: asyncio.Future[None] | None = None  # an async on_tokens it waits for
        self.result = Generation([], stopped=False)
        loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Generation] = loop.create_future()
        self.t0 = loop.time()  # times are the event loop's clock (monotonic)

    def failed(self, exc: TritonError, now: float) -> str:
        """Its step failed with `exc`: "again" (the same step, after a pause), "restart" (from
        position 0, after a pause) or "over"; VersionChanged where another version answered."""
        if self.version is not None and exc.version and exc.version != self.version:
            raise VersionChanged(exc.version, self.version) from exc
        self.not_before = now + RESUME_WAIT_S
        if isinstance(exc, NoFreeSlot) and self.busy_left > 0:
            self.busy_left -= RESUME_WAIT_S  # every slot held: wait, not counted as a failure
            return "restart"
        if isinstance(exc, (TritonUnavailable, SequenceLost)) and self.resumes > 0:
            self.resumes -= 1
            lost = isinstance(exc, SequenceLost)
            log.warning("step failed (%s): %s", exc, "starting again" if lost else "sending it again")
            return "restart" if lost else "again"
        return "over"
