"""Rounds: all generations of this process step through Triton together, one request per round.

A round carries a row per active generation (its next prompt chunk, or its last token) and the
END rows of those that finished. When its answer comes, the next token of every row whose step
completed is chosen in one call of the sampling pipeline over all of them (client/sampling.py);
rows whose candidates cannot prove the choice ask for their whole row in the next round. The next
round leaves at once: generations that arrived meanwhile join it, finished ones leave it. At most
the server's KV slots of generations are active; the others wait here, not at the server. Each
bot process runs its own rounds; Triton's dynamic batcher runs rounds that arrive together from
several processes in one execute().
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from client.generate import Generation, Sequence, VersionChanged
from client.sampling import next_token, sample
from client.transport import RoundRow, Transport, TritonError, round_arrays
from contract import triton_io as io

log = logging.getLogger(__name__)


class TritonClient(Transport):
    """The served model for this process's generations: the transport (client/transport.py) and
    the rounds that carry every generation's steps."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._waiting: deque[Sequence] = deque()  # admitted in order as slots free up
        self._active: list[Sequence] = []
        self._ends: list[int] = []  # sequences whose cache the next round frees
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.rounds_sent = 0
        self.rows_sent = 0  # rows_sent / rounds_sent: the mean round size

    async def generate(self, prompt: list[int], *args: Any, **options: Any) -> Generation:
        """The reply to `prompt` (client/generate.py's Sequence takes the arguments); END is sent
        also on errors and cancellation."""
        seq = Sequence(prompt, *args, busy_s=self.timeout, **options)
        self._waiting.append(seq)
        self._kick()
        try:
            return await seq.future
        finally:
            seq.future.cancel()  # no-op once done; else the caller gave up and the rounds drop it
            self._kick()

    async def close(self) -> None:
        """Stop the rounds (their pending END rows go first, best effort) and the connections."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
        self._task, self._wake = None, asyncio.Event()  # it may be used again, in another event loop
        if self._ends:
            with contextlib.suppress(TritonError):
                await self.send(round_arrays([(s, 0, [], io.ROW_END) for s in self._ends]))
            self._ends = []
        await super().close()

    def _kick(self) -> None:
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._active or self._waiting or self._ends:
            self._wake.clear()
            for seq in [s for s in self._active if s.future.done()]:  # cancelled by its caller
                self._leave(seq)
            await self._admit()
            now = loop.time()
            rows = [s for s in self._active if s.not_before <= now and not s.callback]
            if rows or self._ends:
                await self._round(rows)
                continue
            pauses = [s.not_before - now for s in self._active if s.not_before > now]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(pauses, default=None))

    async def _admit(self) -> None:
        """Waiting generations become active while the server has slots for them."""
        while self._waiting and self._waiting[0].future.done():
            self._waiting.popleft()
        if not self._waiting:
            return
        try:
            slots = (self._info or await self.model_info()).kv_slots
        except TritonError as exc:
            while self._waiting:
                self._waiting.popleft().future.set_exception(exc)
            return
        while self._waiting and len(self._active) < slots:
            if not (seq := self._waiting.popleft()).future.done():
                self._active.append(seq)

    def _leave(self, seq: Sequence, error: BaseException | None = None) -> None:
        """`seq` is over: its result (or `error`) to its caller, END for its cache."""
        if not seq.future.done():
            seq.future.set_exception(error) if error else seq.future.set_result(seq.result)
        if seq.callback is not None:  # an async on_tokens still running: nobody waits for it now
            seq.callback.cancel()
        self._active.remove(seq)
        if seq.started:
            self._ends.append(seq.id)

    async def _round(self, rows: list[Sequence]) -> None:
        loop = asyncio.get_running_loop()
        ends, self._ends = self._ends, []
        steps = [s.step() for s in rows]
        request: list[RoundRow] = [
            (s.id, at, ids, io.ROW_FULL * full) for s, (at, ids, full) in zip(rows, steps, strict=True)
        ]
        request += [(seq_id, 0, [], io.ROW_END) for seq_id in ends]
        for seq in rows:
            seq.started, seq.sent_at = True, loop.time()
        self.rounds_sent += 1
        self.rows_sent += len(request)
        try:
            answer = await self.send(round_arrays(request))
        except TritonError as exc:
            for seq in rows:
                self._failed(seq, exc)
            return
        now, failed, full_at = loop.time(), 0, 0
        chosen: list[int] = []  # rows whose next token is chosen from their candidates
        for i, (seq, (_, ids, full)) in enumerate(zip(rows, steps, strict=True)):
            if answer.status[i] != io.ROW_OK:
                self._failed(seq, answer.error(i, failed))
                failed += 1
            elif seq.future.done():  # its caller gave up meanwhile
                self._leave(seq)
            elif seq.version is not None and answer.version and answer.version != seq.version:
                self._leave(seq, VersionChanged(answer.version, seq.version))
            elif seq.answered(len(ids), now):
                if full:
                    self._take(seq, next_token(answer.full[full_at], seq.context, seq.cfg, seq.rng))
                else:
                    chosen.append(i)
            full_at += full and answer.status[i] == io.ROW_OK
        for cfg in {rows[i].cfg for i in chosen}:  # one call of the pipeline per sampling setting
            group = [i for i in chosen if rows[i].cfg == cfg]
            logits, contexts = answer.logits[group], [rows[i].context for i in group]
            tokens = sample(
                answer.ids[group], logits, logits.min(axis=1), contexts, cfg, _uniforms(rows, group)
            )
            for i, token in zip(group, tokens.tolist(), strict=True):
                if token < 0:
                    rows[i].unproven()
                else:
                    self._take(rows[i], token)

    def _take(self, seq: Sequence, token: int) -> None:
        if seq.take(token):
            self._leave(seq)
        elif seq.callback is not None:  # an async on_tokens: the sequence steps again when it is done
            seq.callback.add_done_callback(functools.partial(self._resume, seq))

    def _resume(self, seq: Sequence, _: object = None) -> None:
        callback, seq.callback = seq.callback, None
        if callback is not None and not callback.cancelled() and (error := callback.exception()):
            self._leave(seq, error)  # the caller's on_tokens failed: so does its generation
        self._wake.set()

    def _failed(self, seq: Sequence, exc: TritonError) -> None:
        try:
            if not seq.failed(exc, asyncio.get_running_loop().time()):
                self._leave(seq, exc)
        except VersionChanged as changed:
            self._leave(seq, changed)


def _uniforms(rows: list[Sequence], group: list[int]) -> Callable[[np.ndarray], np.ndarray]:
    """One uniform from each drawing row's own generator (client/sampling.py's Uniforms)."""
    rngs = [rows[i].rng for i in group]
    return lambda drawing: np.array([rng.random() for rng, d in zip(rngs, drawing, strict=True) if d])


async def generate(client: TritonClient, prompt: list[int], *args: Any, **options: Any) -> Generation:
    """`client.generate(...)`: the reply to `prompt` through the client's rounds."""
    return await client.generate(prompt, *args, **options)
