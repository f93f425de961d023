"""client/rounds.py: rounds form, go as one request each, and never hang (unit, with a recording
sender), and through the real Triton: rounds of 8, replies equal to solo ones, and finish, error,
timeout, cancellation all leave the gate."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bench.stats import model_stats
from client.generate import generate
from client.rounds import GateConfig, StepGate
from client.sampling import SamplingConfig
from client.transport import TritonClient, TritonRequestError
from tests.helpers import IDLE_MODEL, cached_sequences

FAST = GateConfig(in_flight_s=0.2, busy_s=0.003)


class Recorder:
    """A sender that records each round's rows and answers each row with its own value; with
    `hold`, rounds wait until released by the test."""

    def __init__(self, hold: bool = False):
        self.rounds: list[list[str]] = []
        self.hold = hold
        self.release = asyncio.Event()

    async def __call__(self, rows: list[str]) -> list[str | BaseException]:
        self.rounds.append(rows)
        if self.hold:
            await self.release.wait()
        return [ValueError(r) if r.startswith("bad") else r.upper() for r in rows]


async def settle(seconds: float = 0.0) -> None:
    await asyncio.sleep(seconds)
    for _ in range(3):
        await asyncio.sleep(0)


def test_steps_submitted_together_go_as_one_round_and_each_gets_its_answer():
    async def body():
        send = Recorder()
        gate: StepGate[str, str] = StepGate(send, FAST)
        answers = await asyncio.gather(*(gate.step(k, f"row{k}") for k in range(5)), return_exceptions=True)
        bad = await asyncio.gather(gate.step(1, "row1b"), gate.step(9, "bad9"), return_exceptions=True)
        return send.rounds, answers, bad, gate.rounds, gate.released

    rounds, answers, bad, n, released = asyncio.run(body())
    assert rounds[0] == [f"row{k}" for k in range(5)] and answers == [f"ROW{k}" for k in range(5)]
    assert bad[0] == "ROW1B" and isinstance(bad[1], ValueError)  # a row's error is its own
    assert (n, released) == (2, 7)


def test_a_round_waits_for_a_member_whose_step_is_still_at_triton():
    async def body():
        send = Recorder(hold=True)
        gate: StepGate[str, str] = StepGate(send, FAST)
        first = asyncio.create_task(gate.step(1, "a1"))
        await settle()
        assert send.rounds == [["a1"]]  # alone: it went at once; now it is in flight
        second = asyncio.create_task(gate.step(2, "b1"))
        await settle(0.05)
        assert len(send.rounds) == 1  # 2 waits for 1's step (up to in_flight_s)
        send.hold = False
        send.release.set()
        await first
        third = asyncio.create_task(gate.step(1, "a2"))  # 1 comes back: the round of both goes
        await asyncio.gather(second, third)
        return send.rounds

    assert asyncio.run(body())[1] == ["b1", "a2"]


@pytest.mark.parametrize("missing", ["in flight", "busy"])
def test_a_missing_member_delays_a_round_boundedly(missing):
    """In flight: waited for up to in_flight_s; busy (sampling, or a caller that never ENDs):
    only busy_s. Either way the step goes."""

    async def body():
        send = Recorder(hold=missing == "in flight")
        gate: StepGate[str, str] = StepGate(send, FAST)
        absent = asyncio.create_task(gate.step(2, "b"))  # member 2: its step goes (and, held, stays out)
        await settle()
        send.hold = False  # the rounds after it are answered at once
        if missing == "busy":
            await absent  # answered: 2 is busy now, and never steps again
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.wait_for(gate.step(1, "a"), 2)
        waited = loop.time() - t0
        send.release.set()
        await absent
        return waited

    assert asyncio.run(body()) < 1.0  # bounded by in_flight_s = 0.2 (plus scheduling)


def test_end_rows_ride_with_the_next_round_or_go_alone():
    async def body():
        send = Recorder(hold=True)
        gate: StepGate[str, str] = StepGate(send, FAST)
        a = asyncio.create_task(gate.step(1, "a"))
        await settle()  # a's round is in flight
        gate.end(2, "end2")  # 2 leaves while 1's step is out: its END waits for the next round
        await settle()
        assert send.rounds == [["a"]]
        send.hold = False
        send.release.set()
        await a
        await gate.step(1, "a2")
        gate.end(1, "end1")  # nobody waits: it goes at once
        await settle()
        return send.rounds, len(gate)

    rounds, members = asyncio.run(body())
    assert rounds == [["a"], ["a2", "end2"], ["end1"]] and members == 0


def test_cancelling_a_waiting_step_takes_its_row_out():
    async def body():
        send = Recorder(hold=True)
        gate: StepGate[str, str] = StepGate(GateConfig(in_flight_s=30, busy_s=30))
        gate = StepGate(send, GateConfig(in_flight_s=30, busy_s=30))  # only events can release
        a = asyncio.create_task(gate.step(1, "a"))
        await settle()  # a is in flight
        b = asyncio.create_task(gate.step(2, "b"))
        c = asyncio.create_task(gate.step(3, "c"))
        await settle()
        b.cancel()  # 2 gives up while waiting: its row never goes
        gate.end(2, None)
        send.hold = False
        send.release.set()
        await a
        gate.end(1, None)  # 1 is done: 3 is alone now
        await c
        return send.rounds, b.cancelled()

    rounds, cancelled = asyncio.run(body())
    assert rounds == [["a"], ["c"]] and cancelled


def test_gate_off_sends_each_step_alone():
    async def body():
        send = Recorder()
        gate: StepGate[str, str] = StepGate(send, GateConfig(enabled=False))
        await asyncio.gather(gate.step(1, "a"), gate.step(2, "b"))
        return send.rounds

    assert sorted(asyncio.run(body())) == [["a"], ["b"]]


# ---- through the real Triton -----------------------------------------------------------------


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(10, 1000, int(rng.integers(8, 40))).tolist() for _ in range(n)]


def test_eight_conversations_step_as_one_request_per_round_and_equal_their_solo_replies(triton):
    """8 greedy conversations: Triton's own count of requests equals the client's rounds, with >= 6
    rows per request; each reply is token for token what it is alone. (busy_s 20 ms: on a loaded
    machine sampling a token can take longer than the default 3 ms, and the test is about rounds.)"""
    cfg = SamplingConfig.greedy(max_new_tokens=30, stop_ids=())
    batch = prompts(8)

    async def body():
        client = TritonClient(triton.url, IDLE_MODEL, gate=GateConfig(busy_s=0.02))
        try:
            alone = [(await generate(client, p, cfg, np.random.default_rng(0))).tokens for p in batch]
            await asyncio.sleep(0.1)  # the last END row
            before, rounds, rows = (
                model_stats(triton.url, IDLE_MODEL),
                client.gate.rounds,
                client.gate.released,
            )
            together = await asyncio.gather(
                *(generate(client, p, cfg, np.random.default_rng(0)) for p in batch)
            )
            await asyncio.sleep(0.1)  # the last END rows
            after = model_stats(triton.url, IDLE_MODEL)
            sent = client.gate.rounds - rounds, client.gate.released - rows
            return alone, [g.tokens for g in together], after[0] - before[0], sent, len(client.gate)
        finally:
            await client.close()

    alone, together, requests, (rounds, rows), members = asyncio.run(body())
    assert together == alone and all(len(t) == 30 for t in alone)
    assert rows == 8 * 30 + 8  # 8 prompts, 29 token steps each, 8 ENDs
    assert requests == rounds and rows / rounds >= 6, f"{rows / rounds:.2f} rows per request"
    assert members == 0


class Faulty(TritonClient):
    """The first sequence started is the victim: its 3rd token step is refused by Triton, hangs
    past the client's timeout (with the rest of its round), or signals `reached` (for the test to
    cancel it)."""

    def __init__(self, url, fault: str):
        super().__init__(url, timeout=1.0)
        self.fault, self.victim, self.count, self.hang = fault, None, 0, False
        self.reached = asyncio.Event()

    async def _send_round(self, rows):
        if self.hang and any(r.sequence_id == self.victim for r in rows):
            self.hang = False
            await self._call(lambda: asyncio.sleep(30))  # never answers: the client's timeout ends it
        return await super()._send_round(rows)

    async def step(self, sequence_id, ids, position, *, full=False):
        if position == 0 and self.victim is None:
            self.victim = sequence_id
        if position and sequence_id == self.victim:
            self.count += 1
            if self.count == 3:
                if self.fault == "refused":
                    ids = [10**6]  # outside the vocabulary: Triton refuses it
                self.hang = self.fault == "timeout"
                self.reached.set()
        return await super().step(sequence_id, ids, position, full=full)


@pytest.mark.parametrize("fault", ["refused", "timeout", "cancelled", "stops early"])
def test_one_failing_conversation_never_stalls_the_others(triton, fault):
    """Five conversations; one is refused, times out (then resumes), is cancelled or stops after
    2 tokens. The others finish, nobody hangs, every END reaches the server, the gate empties."""
    cfg = SamplingConfig.greedy(max_new_tokens=12, stop_ids=())
    batch = prompts(5, seed=1)

    async def body():
        client = Faulty(triton.url, fault)
        try:
            await client.model_info()  # fetched: the first task started is the first to step
            tasks = [
                asyncio.create_task(
                    generate(
                        client,
                        p,
                        cfg.with_(max_new_tokens=2) if k == 0 and fault == "stops early" else cfg,
                        np.random.default_rng(0),
                    )
                )
                for k, p in enumerate(batch)
            ]
            await asyncio.sleep(0)  # the first task starts first: it is the victim
            if fault == "cancelled":
                await asyncio.wait_for(client.reached.wait(), 10)
                tasks[0].cancel()
            done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
            await asyncio.sleep(0.2)
            return done, len(client.gate)
        finally:
            await client.close()

    done, members = asyncio.run(body())
    first, others = done[0], done[1:]
    assert all(len(g.tokens) == 12 for g in others)
    expected = {"refused": TritonRequestError, "cancelled": asyncio.CancelledError}.get(fault)
    if expected:
        assert isinstance(first, expected)
    else:
        assert len(first.tokens) == (2 if fault == "stops early" else 12)
    assert members == 0 and cached_sequences(triton) == 0
