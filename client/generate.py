"""One generation between rounds: prompt ids in, reply ids out, one step per round.

A `Sequence` is a generation's state: its context (prompt, then the reply so far), how much of
it the server holds (`held`: its next step starts there), and what it still may try. Each round
it gives its next step as a row (the next prompt chunk, or the last token) and takes the row's
answer: it holds more; its next token is chosen (client/rounds.py samples all rows at once);
where the candidates cannot prove the choice the same step goes again asking for the whole row.
A step names its position, so sending it again is safe: after Triton was unavailable the step is
sent again, after the server lost the sequence it starts again over the whole context; `resumes`
times in all. With `version`, an answer from another model version ends it with VersionChanged.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from client.sampling import Context, SamplingConfig, needs_full_row
from client.transport import NoFreeSlot, SequenceLost, TritonError, TritonUnavailable
from contract import triton_io as io

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
    """One generation's state between rounds (see the module's docstring)."""

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
        self.context = Context(prompt, cfg.no_repeat_ngram_size)
        self.cfg, self.rng, self.on_tokens, self.version = cfg, rng, on_tokens, version
        self.limit = min(cfg.max_new_tokens, (max_positions or 1 << 62) - len(self.context))
        self.chunk = prompt_chunk or max(len(self.context), 1)
        self.resumes, self.busy_left = resumes, busy_s  # failures it may still meet; time to wait for a slot
        self.held = 0  # context tokens the server holds: the next step starts here
        self.full = needs_full_row(cfg, io.CANDIDATES)  # the next step asks for the whole row
        self.refetch = False  # the next step is the last one again, for its whole row
        self.started = False  # a step was sent: END must follow
        self.not_before = 0.0  # loop time before which it does not step (a pause after a failure)
        self.callback: asyncio.Future[None] | None = None  # an async on_tokens it waits for
        self.result = Generation([], stopped=False)
        loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Generation] = loop.create_future()
        self.t0 = self.sent_at = loop.time()  # times are the event loop's clock (monotonic)

    def step(self) -> tuple[int, list[int], bool]:
        """The next row: (position, ids, whole row wanted)."""
        ids = self.context.tokens[self.held : self.held + self.chunk]
        return self.held, ids, self.full and self.held + len(ids) >= len(self.context)

    def answered(self, count: int, now: float) -> bool:
        """The step of `count` tokens went through; whether the next token is to be chosen now."""
        self.held += count
        if self.held < len(self.context):
            return False  # more of the prompt to feed
        if not self.result.first_token_s:
            self.result.first_token_s = now - self.t0
        elif not self.refetch:
            self.result.step_s.append(now - self.sent_at)
        return True

    def unproven(self) -> None:
        """The candidates cannot prove the choice: the same step again, for the whole row."""
        self.full, self.refetch, self.held = True, True, len(self.context) - 1
        self.result.full_rows += 1

    def take(self, token: int) -> bool:
        """Append the chosen token; whether the generation is over (then its result is set)."""
        self.full, self.refetch = needs_full_row(self.cfg, io.CANDIDATES), False
        if token in self.cfg.stop_ids:
            self.result.stopped = True
        else:
            self.result.tokens.append(token)
            self.context.append(token)
            if self.on_tokens and (pending := self.on_tokens(self.result.tokens)) is not None:
                self.callback = asyncio.ensure_future(pending)  # it steps again once that is done
        return self.result.stopped or len(self.result.tokens) >= self.limit

    def failed(self, exc: TritonError, now: float) -> bool:
        """Its step failed with `exc`: whether it goes on (its next step is set up); else it is over."""
        if self.version is not None and exc.version and exc.version != self.version:
            raise VersionChanged(exc.version, self.version) from exc
        if isinstance(exc, NoFreeSlot) and self.held == 0 and self.busy_left > 0:
            self.busy_left -= RESUME_WAIT_S  # every slot held: wait, not counted as a failure
        elif isinstance(exc, (TritonUnavailable, SequenceLost)) and self.resumes > 0:
            self.resumes -= 1
            lost = isinstance(exc, SequenceLost)
            log.warning(
                "step failed (%s): %s", exc, "starting the sequence again" if lost else "sending it again"
            )
            if lost:
                self.held = 0
        else:
            return False
        self.not_before = now + RESUME_WAIT_S
        return True
