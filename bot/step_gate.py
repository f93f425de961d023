"""The step gate: the conversations of one bot process step through Triton together.

Triton's sequence batcher runs whatever is queued as soon as the model instance is free. When
every conversation sends its next step the moment its logits arrive, the ones answered first are
fired as the next batch before the others can rejoin: 8 conversations drift into phase-shifted
half batches (mean batch 3.1-3.4) and the server regroups caches by copying them. The gate holds
a generation's next step until every active generation of this process is ready, so that a
round reaches Triton as one batch:

- a generation joins with its START and leaves with its END (START and END are never held);
- a step is released when every member waits at the gate;
- a member whose step is still at Triton is waited for in full, up to `in_flight_s`: this is what
  rejoins a split batch;
- a member that is sampling, or whose START is in flight, is waited for at most `busy_s` from
  the moment it got there;
- no step waits longer than `in_flight_s` in all, and a member stuck in sampling (a caller that
  never sends END) is not waited for at all once its `busy_s` has passed.

One process aligns only its own generations: several bot processes each form their own rounds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

_STARTING, _BUSY, _IN_FLIGHT, _WAITING = "starting", "busy", "in flight", "waiting"
_STALE_S = 60.0  # a member busy this long is forgotten


@dataclass(frozen=True)
class GateConfig:
    """How long a step may be held for the others of its round."""

    enabled: bool = True  # False: every step goes to Triton at once (each conversation on its own)
    in_flight_s: float = 1.0  # wait for a member whose step is at Triton; also the most any step waits
    busy_s: float = 0.003  # wait for a member that is sampling or starting, from when it got there


class _Member:
    __slots__ = ("since", "state")

    def __init__(self, state: str, since: float):
        self.state, self.since = state, since


class StepGate:
    """Holds sequence steps (by sequence id) until their round is complete; asyncio, one loop."""

    def __init__(self, config: GateConfig | None = None):
        self.config = config or GateConfig()
        self._members: dict[int, _Member] = {}
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._first_wait = 0.0  # when the oldest waiter arrived
        self._timer: asyncio.TimerHandle | None = None
        self.rounds = 0  # releases so far (steps released / rounds = mean round size)
        self.released = 0  # steps released so far

    def __len__(self) -> int:
        return len(self._members)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def started(self, sequence_id: int) -> None:
        """The sequence's START is being sent: it is a member from now on."""
        if self.config.enabled:
            now = self._now()
            for stale in [
                s for s, m in self._members.items() if m.state == _BUSY and now - m.since > _STALE_S
            ]:
                del self._members[stale]  # its owner never sent END (a bare client.step user)
            self._members[sequence_id] = _Member(_STARTING, now)
            self._check()

    def answered(self, sequence_id: int) -> None:
        """The sequence's step came back (or failed): its owner is busy until its next step."""
        member = self._members.get(sequence_id)
        if member is not None:
            member.state, member.since = _BUSY, self._now()
            self._check()

    def left(self, sequence_id: int) -> None:
        """The sequence ended (END sent, failed or cancelled): nobody waits for it any more."""
        if self._members.pop(sequence_id, None) is not None:
            self._check()

    async def wait(self, sequence_id: int) -> None:
        """Return when the sequence's next step may go to Triton (at most `in_flight_s` later)."""
        member = self._members.get(sequence_id)
        if member is None:  # gate off, or a sequence this client did not START
            return
        if not self._waiters:
            self._first_wait = self._now()
        member.state = _WAITING
        future = asyncio.get_running_loop().create_future()
        self._waiters[sequence_id] = future
        self._check()
        if future.done():  # released at once: the last of its round, or alone
            return
        try:
            await future
        except asyncio.CancelledError:
            self._waiters.pop(sequence_id, None)
            if sequence_id in self._members:
                member.state, member.since = _BUSY, self._now()
            self._check()
            raise

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

    def _check(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._waiters:
            return
        deadline = self._deadline()
        if self._now() < deadline - 1e-4:  # timers may fire a hair early
            self._timer = asyncio.get_running_loop().call_at(deadline, self._check)
            return
        now = self._now()
        for sequence_id, future in self._waiters.items():
            member = self._members.get(sequence_id)
            if member is not None:
                member.state, member.since = _IN_FLIGHT, now
            if not future.done():
                future.set_result(None)
        self.rounds += 1
        self.released += len(self._waiters)
        self._waiters = {}
