"""Rounds: all generations of this process step through Triton together, one request per round.

A round carries a row per active generation (its next prompt chunk, or its last token) and the
END rows of those that finished. Its work is array operations over all rows: the request is
gathered from the contexts' table (client/sampling.py's Contexts), and when the answer comes the
next token of every row whose step completed is chosen in one call of the sampling pipeline and
appended in one; only what is rare (a failed row, a finished generation, a whole row) is handled
row by row. Rows whose candidates cannot prove the choice ask for their whole row next round. The
next round leaves at once: generations that arrived meanwhile join, finished ones leave. At most
the server's KV slots of generations are active; the others wait here, not at the server. Each
bot process runs its own rounds; Triton's dynamic batcher runs the rounds of several processes
that arrive together in one execute().
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
from client.sampling import Contexts, SamplingConfig, needs_full_row, next_token, sample
from client.transport import Answer, Transport, TritonError, round_arrays, round_columns
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
        self.contexts = Contexts(0)  # a row per active generation (Sequence.row)
        self._free: list[int] = []  # rows of `contexts` no generation holds
        self._held = np.zeros(0, np.int64)  # per row: context tokens the server holds
        self._full = np.zeros(0, bool)  # per row: its next step asks for the whole row
        self._refetch = np.zeros(0, bool)  # per row: ... because its candidates proved nothing
        self._new = np.zeros(0, np.int64)  # per row: reply tokens so far
        self._limit = np.zeros(0, np.int64)  # per row: reply tokens at most
        self._wants_full = np.zeros(0, bool)  # per row: its sampling needs whole rows (needs_full_row)
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
            if not (self._active or self._waiting):  # only END rows left: let them go
                await asyncio.wait({self._task}, timeout=self.timeout)
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
                self._take_row(seq)
                self._active.append(seq)

    def _take_row(self, seq: Sequence) -> None:
        if not self._free:  # twice the rows: the arrays grow rarely
            old, new = self._held.size, max(8, 2 * self._held.size)
            self.contexts.grow(new)
            for name in ("_held", "_full", "_refetch", "_new", "_limit", "_wants_full"):
                array = getattr(self, name)
                setattr(self, name, np.concatenate([array, np.zeros(new - old, array.dtype)]))
            self._free = list(range(new - 1, old - 1, -1))
        seq.row = row = self._free.pop()
        self.contexts.fill(row, seq.prompt)
        self._held[row], self._new[row], self._limit[row] = 0, 0, seq.limit
        self._wants_full[row] = self._full[row] = needs_full_row(seq.cfg, io.CANDIDATES)
        self._refetch[row] = False

    def _leave(self, seq: Sequence, error: BaseException | None = None) -> None:
        """`seq` is over: its result (or `error`) to its caller, END for its cache, its row free."""
        if not seq.future.done():
            seq.future.set_exception(error) if error else seq.future.set_result(seq.result)
        if seq.callback is not None:  # an async on_tokens still running: nobody waits for it now
            seq.callback.cancel()
        if seq.row < 0:  # it left already
            return
        self._active.remove(seq)
        self._free.append(seq.row)
        seq.row = -1
        if seq.started:
            self._ends.append(seq.id)

    async def _round(self, seqs: list[Sequence]) -> None:
        loop, n, ends = asyncio.get_running_loop(), len(seqs), self._ends
        self._ends = []
        rows = np.fromiter((s.row for s in seqs), np.int64, n)
        held, length = self._held[rows], self.contexts.length[rows]
        count = np.minimum(length - held, np.fromiter((s.chunk for s in seqs), np.int64, n))
        full = self._full[rows] & (held + count >= length)
        at = np.repeat(held - np.cumsum(count) + count, count) + np.arange(int(count.sum()))
        request = round_columns(
            np.concatenate([np.fromiter((s.id for s in seqs), np.uint64, n), np.array(ends, np.uint64)]),
            np.concatenate([held, np.zeros(len(ends), np.int64)]),
            np.concatenate([count, np.zeros(len(ends), np.int64)]),
            np.concatenate([io.ROW_FULL * full, np.full(len(ends), io.ROW_END)]),
            self.contexts.tokens[np.repeat(rows, count), at],
        )
        sent = loop.time()
        for seq in seqs:
            seq.started = True
        self.rounds_sent += 1
        self.rows_sent += n + len(ends)
        try:
            answer = await self.send(request)
        except TritonError as exc:
            for seq in seqs:
                self._failed(seq, exc)
            return
        except asyncio.CancelledError:
            self._ends = ends + self._ends  # close() sends them
            raise
        self._answered(seqs, rows, count, full, answer, loop.time(), sent)

    def _answered(
        self,
        seqs: list[Sequence],
        rows: np.ndarray,
        count: np.ndarray,
        full: np.ndarray,
        answer: Answer,
        now: float,
        sent: float,
    ) -> None:
        """Take a round's answer: each row's step done (or failed), the next tokens chosen."""
        served = answer.status[: len(seqs)] == io.ROW_OK
        ok, failed = served.copy(), 0
        for i, seq in enumerate(seqs):  # what happens row by row is rare: failures, leavers
            if not ok[i]:
                self._failed(seq, answer.error(i, failed))
                failed += 1
            elif seq.future.done():  # its caller gave up meanwhile
                ok[i] = False
                self._leave(seq)
            elif seq.version is not None and answer.version and answer.version != seq.version:
                ok[i] = False
                self._leave(seq, VersionChanged(answer.version, seq.version))
        self._held[rows[ok]] += count[ok]
        ready = ok & (self._held[rows] == self.contexts.length[rows])
        for i in np.flatnonzero(ready).tolist():
            result = seqs[i].result
            if not result.first_token_s:
                result.first_token_s = now - seqs[i].t0
            elif not self._refetch[rows[i]]:  # (a whole row fetched again is not a step of its own)
                result.step_s.append(now - sent)
        tokens, stops = np.full(len(seqs), -1, np.int64), np.zeros(len(seqs), bool)
        full_at = np.cumsum(full & served) - 1  # LOGITS holds the whole rows of answered rows
        for i in np.flatnonzero(ready & full).tolist():  # a whole row: rare, one by one
            seq = seqs[i]
            tokens[i] = next_token(answer.full[full_at[i]], self.contexts, seq.row, seq.cfg, seq.rng)
            stops[i] = tokens[i] in seq.cfg.stop_ids
        chosen = np.flatnonzero(ready & ~full)
        for cfg, group in _by_setting(seqs, chosen):  # one call of the pipeline per setting
            logits = answer.logits[group]
            bound = logits.min(axis=1)  # no token outside a row's K has a larger logit
            uniforms = _uniforms([seqs[i].rng for i in group.tolist()])
            tokens[group] = sample(
                answer.ids[group], logits, bound, self.contexts, rows[group], cfg, uniforms
            )
            stops[group] = np.isin(tokens[group], cfg.stop_ids)
        unproven = ready & (tokens < 0)
        for i in np.flatnonzero(unproven).tolist():
            seqs[i].result.full_rows += 1
        bad = rows[unproven]  # the same step again, for the whole row
        self._full[bad], self._refetch[bad], self._held[bad] = True, True, self.contexts.length[bad] - 1
        self._took(seqs, rows, np.flatnonzero(ready & ~unproven), tokens, stops)

    def _took(
        self,
        seqs: list[Sequence],
        rows: np.ndarray,
        chosen: np.ndarray,
        tokens: np.ndarray,
        stops: np.ndarray,
    ) -> None:
        """The chosen rows' next tokens: a stop id ends a generation, any other is appended."""
        going = chosen[~stops[chosen]]
        self.contexts.append(rows[going], tokens[going])
        self._new[rows[going]] += 1
        self._full[rows[chosen]], self._refetch[rows[chosen]] = self._wants_full[rows[chosen]], False
        over = stops[chosen] | (self._new[rows[chosen]] >= self._limit[rows[chosen]])
        for i in chosen[over].tolist():
            seq = seqs[i]
            seq.result.stopped = bool(stops[i])
            seq.result.tokens = self.contexts.ids(seq.row, len(seq.prompt))
            self._leave(seq)
        for i in chosen[~over].tolist():
            seq = seqs[i]
            if seq.on_tokens and (pending := seq.on_tokens(self.contexts.ids(seq.row, len(seq.prompt)))):
                seq.callback = asyncio.ensure_future(pending)  # it steps again once that is done
                seq.callback.add_done_callback(functools.partial(self._resume, seq))

    def _resume(self, seq: Sequence, _: object = None) -> None:
        callback, seq.callback = seq.callback, None
        if callback is not None and not callback.cancelled() and (error := callback.exception()):
            self._leave(seq, error)  # the caller's on_tokens failed: so does its generation
        self._wake.set()

    def _failed(self, seq: Sequence, exc: TritonError) -> None:
        try:
            action = seq.failed(exc, asyncio.get_running_loop().time())
        except VersionChanged as changed:
            action, exc = "over", changed  # type: ignore[assignment]
        if action == "over":
            self._leave(seq, exc)
        elif action == "restart":
            self._held[seq.row] = 0


def _by_setting(seqs: list[Sequence], chosen: np.ndarray) -> list[tuple[SamplingConfig, np.ndarray]]:
    """The chosen rows grouped by their SamplingConfig object (one ChatBot's replies share one)."""
    configs = [seqs[i].cfg for i in chosen.tolist()]
    if all(cfg is configs[0] for cfg in configs):
        return [(configs[0], chosen)] if configs else []
    groups: dict[int, list[int]] = {}
    for i, cfg in zip(chosen.tolist(), configs, strict=True):
        groups.setdefault(id(cfg), []).append(i)
    return [(seqs[rows[0]].cfg, np.array(rows)) for rows in groups.values()]


def _uniforms(rngs: list[np.random.Generator]) -> Callable[[np.ndarray], np.ndarray]:
    """One uniform from each drawing row's own generator, in row order (client/sampling.py's
    Uniforms); rows of one generator (one ChatBot's) draw theirs in one call."""
    if all(rng is rngs[0] for rng in rngs):
        return lambda drawing: rngs[0].random(int(drawing.sum()))
    return lambda drawing: np.array([rng.random() for rng, d in zip(rngs, drawing, strict=True) if d])


async def generate(client: TritonClient, prompt: list[int], *args: Any, **options: Any) -> Generation:
    """`client.generate(...)`: the reply to `prompt` through the client's rounds."""
    return await client.generate(prompt, *args, **options)
