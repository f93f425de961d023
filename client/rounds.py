"""The step gate: the conversations of one bot process step through Triton as one request.

Every generation's next step (one row: its sequence, position, new tokens) waits at the gate
until every active generation of this process has its step there; then the gate sends all of
them as one round request and hands each row its answer. Without it, each conversation would send
its step the moment its previous answer arrived, and 8 conversations drift into phase-shifted
half rounds (measured: mean batch 3.1-3.4 with one request per step). The rules:

- a generation is a member from its first step until it leaves (END, failure, cancellation);
- a round is released when every member waits at the gate;
- a member whose step is still at Triton is waited for in full, up to `in_flight_s`: this is what
  rejoins a split round;
- a member that is sampling is waited for at most `busy_s` from the moment it got there;
- no step waits longer than `in_flight_s` in all, and a member stuck in sampling (a caller that
  never sends END) is not waited for at all once its `busy_s` has passed;
- END rows never wait: they ride with the next round, or go at once when nobody waits.

One process aligns only its own generations: several bot processes each send their own rounds,
and Triton's dynamic batcher runs rounds that arrive together in one execute().
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

_BUSY, _IN_FLIGHT, _WAITING = "busy", "in flight", "waiting"
_STALE_S = 60.0  # a member busy this long is forgotten
R = TypeVar("R")  # a row
A = TypeVar("A")  # its answer


@dataclass(frozen=True)
class GateConfig:
    """How long a step may be held for the others of its round."""

    enabled: bool = True  # False: every step goes to Triton at once (each conversation on its own)
    in_flight_s: float = 1.0  # wait for a member whose step is at Triton; also the most any step waits
    busy_s: float = 0.003  # wait for a member that is sampling, from when it got there


class _Member:
    __slots__ = ("since", "state")

    def __init__(self, state: str, since: float):
        self.state, self.since = state, since


class StepGate(Generic[R, A]):
    """Holds rows (by sequence id) until their round is complete, then sends them together with
    `send(rows) -> answers` (one answer or exception per row; raising fails them all). asyncio,
    one event loop."""

    def __init__(
        self, send: Callable[[list[R]], Awaitable[list[A | BaseException]]], config: GateConfig | None = None
    ):
        self.config = config or GateConfig()
        self._send = send
        self._members: dict[int, _Member] = {}
        self._waiters: dict[int, tuple[R, asyncio.Future[A]]] = {}
        self._ends: list[R] = []  # END rows for the next round
        self._first_end = 0.0  # when the oldest of them came
        self._first_wait = 0.0  # when the oldest waiter arrived
        self._timer: asyncio.TimerHandle | None = None
        self._check_pending = False
        self._sending: set[asyncio.Task[None]] = set()
        self.rounds = 0  # requests sent so far
        self.released = 0  # rows sent so far (released / rounds = mean round size)

    def __len__(self) -> int:
        return len(self._members)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    async def step(self, sequence_id: int, row: R) -> A:
        """The answer to `row`, sent with the rest of its round (at most `in_flight_s` later)."""
        now = self._now()
        member = self._members.get(sequence_id)
        if member is None:  # its first step: it joins
            for stale in [
                s for s, m in self._members.items() if m.state == _BUSY and now - m.since > _STALE_S
            ]:
                del self._members[stale]  # its owner never sent END (a bare client.step user)
            member = self._members[sequence_id] = _Member(_WAITING, now)
        if not self._waiters:
            self._first_wait = now
        member.state = _WAITING
        future: asyncio.Future[A] = asyncio.get_running_loop().create_future()
        self._waiters[sequence_id] = (row, future)
        if self.config.enabled:
            self._check_soon()
        else:  # each row on its own, at once
            self._release()
        try:
            return await future
        except asyncio.CancelledError:
            if self._waiters.get(sequence_id, (None, None))[1] is future:  # not sent yet
                del self._waiters[sequence_id]
            if sequence_id in self._members:
                member.state, member.since = _BUSY, self._now()
            self._check()
            raise

    def end(self, sequence_id: int, row: R | None) -> None:
        """The sequence leaves; its END `row` (if any) goes with the next round, or at once."""
        self._members.pop(sequence_id, None)
        if row is not None:
            if not self._ends:
                self._first_end = self._now()
            self._ends.append(row)
        self._check_soon()

    async def close(self) -> None:
        """Send the END rows still pending and wait for the rounds in flight."""
        if self._ends:
            self._release()
        if self._sending:
            await asyncio.wait(self._sending, timeout=5)

    def _deadline(self) -> float:
        """When the current round goes without whoever is still missing."""
        cfg = self.config
        latest = max(
            (
                m.since + (cfg.in_flight_s if m.state == _IN_FLIGHT else cfg.busy_s)
                for m in self._members.values()
                if m.state != _WAITING
            ),
            default=0.0,
        )
        return min(latest, self._first_wait + cfg.in_flight_s)

    def _check_soon(self) -> None:
        """_check() once the steps that arrive in this turn of the event loop are all in (rows
        submitted together, e.g. by tasks started together, then go in one round)."""
        if not self._check_pending:
            self._check_pending = True
            asyncio.get_running_loop().call_soon(self._check)

    def _check(self) -> None:
        self._check_pending = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._waiters:
            if self._ends and not self._members:  # nobody will step: the END rows go on their own
                self._release()
            elif self._ends:  # they ride with the next round, or go on their own after in_flight_s
                self._timer = asyncio.get_running_loop().call_at(
                    self._first_end + self.config.in_flight_s, self._release
                )
            return
        if self.config.enabled:
            deadline = self._deadline()
            if self._now() < deadline - 1e-4:  # timers may fire a hair early
                self._timer = asyncio.get_running_loop().call_at(deadline, self._check)
                return
        self._release()

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = self._now()
        waiters, self._waiters = self._waiters, {}
        for sequence_id in waiters:
            member = self._members.get(sequence_id)
            if member is not None:
                member.state, member.since = _IN_FLIGHT, now
        rows = [row for row, _ in waiters.values()] + self._ends
        futures = [future for _, future in waiters.values()]
        self._ends = []
        self.rounds += 1
        self.released += len(rows)
        task = asyncio.get_running_loop().create_task(self._deliver(list(waiters), rows, futures))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _deliver(self, sequences: list[int], rows: list[R], futures: list[asyncio.Future[A]]) -> None:
        try:
            answers: list[A | BaseException] = await self._send(rows)
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise
        except Exception as exc:  # the whole request failed: every row gets its error
            answers = [exc] * len(rows)
        finally:
            now = self._now()
            for sequence_id in sequences:
                member = self._members.get(sequence_id)
                if member is not None:
                    member.state, member.since = _BUSY, now
        for future, answer in zip(futures, answers, strict=False):  # END rows come last, unawaited
            if future.done():  # its caller gave up (cancelled)
                continue
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)
        for answer in answers[len(futures) :]:
            if isinstance(answer, BaseException):
                log.debug("END not delivered: %s", answer)
        self._check()
