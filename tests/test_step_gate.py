"""bot/step_gate.py: rounds form and never hang (unit), and through the real Triton: batches of
8, replies equal to solo ones, and finish, error, timeout, cancellation all leave the gate."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bench.scenarios import model_stats
from bot.generate import generate
from bot.sampling import SamplingConfig
from bot.step_gate import GateConfig, StepGate
from bot.triton_client import TritonClient, TritonRequestError
from tests.helpers import IDLE_MODEL, cached_sequences

FAST = GateConfig(in_flight_s=0.2, busy_s=0.003)


async def settle(seconds: float = 0.0) -> None:
    await asyncio.sleep(seconds)
    for _ in range(3):
        await asyncio.sleep(0)


def test_alone_a_step_is_released_without_waiting():
    async def body():
        gate = StepGate(FAST)
        gate.started(1)
        gate.answered(1)
        task = asyncio.create_task(gate.wait(1))
        await asyncio.sleep(0)
        return task.done(), gate.rounds, gate.released

    assert asyncio.run(body()) == (True, 1, 1)


def test_a_round_waits_for_a_step_still_at_triton():
    async def body():
        gate = StepGate(FAST)
        for s in (1, 2):
            gate.started(s)
            gate.answered(s)
        both = [asyncio.create_task(gate.wait(s)) for s in (1, 2)]
        await settle()
        assert all(t.done() for t in both) and gate.rounds == 1  # round 1: both at Triton now
        gate.answered(1)
        first = asyncio.create_task(gate.wait(1))
        await settle(0.05)  # 2's step is still out: 1 waits (up to in_flight_s)
        assert not first.done()
        gate.answered(2)
        second = asyncio.create_task(gate.wait(2))
        await settle()
        return first.done(), second.done(), gate.rounds, gate.released

    assert asyncio.run(body()) == (True, True, 2, 4)


@pytest.mark.parametrize("missing", ["in flight", "busy", "never answers"])
def test_a_missing_member_delays_a_round_boundedly(missing):
    """In flight: waited for up to in_flight_s; busy (sampling, or a caller that never ENDs):
    only busy_s. Either way the step goes."""

    async def body():
        gate = StepGate(FAST)
        for s in (1, 2):
            gate.started(s)
        gate.answered(1)
        if missing == "in flight":
            gate.answered(2)
            await asyncio.wait_for(gate.wait(2), 1)  # released after 1's busy_s: 2 is at Triton now
        elif missing == "busy":
            gate.answered(2)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.wait_for(gate.wait(1), 2)
        return loop.time() - t0

    waited = asyncio.run(body())
    assert waited < 1.0  # bounded by in_flight_s = 0.2 (plus scheduling)


def test_leaving_and_cancelling_release_the_others():
    async def body():
        gate = StepGate(GateConfig(in_flight_s=30, busy_s=30))  # only events can release
        for s in (1, 2, 3):
            gate.started(s)
            gate.answered(s)
        w1 = asyncio.create_task(gate.wait(1))
        w2 = asyncio.create_task(gate.wait(2))
        await settle()
        assert not w1.done() and not w2.done()  # 3 is busy: wait for it
        w2.cancel()  # 2 gives up while waiting: it is busy again, not waiting
        await settle()
        gate.left(2)
        gate.left(3)  # 3 ends (its reply is done): 1 is alone now
        await settle()
        return w1.done(), w2.cancelled(), len(gate), gate.released

    assert asyncio.run(body()) == (True, True, 1, 1)


def test_gate_off_holds_nothing():
    async def body():
        gate = StepGate(GateConfig(enabled=False))
        gate.started(1)
        gate.started(2)
        await asyncio.wait_for(gate.wait(1), 0.1)
        return len(gate), gate.rounds

    assert asyncio.run(body()) == (0, 0)


# ---- through the real Triton -----------------------------------------------------------------


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(10, 1000, int(rng.integers(8, 40))).tolist() for _ in range(n)]


def test_eight_conversations_step_as_one_batch_and_equal_their_solo_replies(triton):
    """Triton's own counters: requests per execution >= 6 for the round steps of 8 greedy
    conversations; each reply is token for token what it is alone. (The model exported with the
    default queue delay; the main test model's is 200 µs.)"""
    cfg = SamplingConfig.greedy(max_new_tokens=30, stop_ids=())
    batch = prompts(8)

    async def body():
        client = TritonClient(triton.url, IDLE_MODEL)
        try:
            alone = [(await generate(client, p, cfg, np.random.default_rng(0))).tokens for p in batch]
            before = model_stats(triton.url, IDLE_MODEL)
            together = await asyncio.gather(
                *(generate(client, p, cfg, np.random.default_rng(0)) for p in batch)
            )
            after = model_stats(triton.url, IDLE_MODEL)
            return alone, [g.tokens for g in together], before, after, len(client.gate)
        finally:
            await client.close()

    alone, together, before, after, members = asyncio.run(body())
    assert together == alone and all(len(t) == 30 for t in alone)
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 8 * 30 + 8  # 8 STARTs, 29 token steps each, 8 ENDs
    assert inferences / executions >= 6, f"mean batch {inferences / executions:.2f}"
    assert members == 0


class Faulty(TritonClient):
    """The first sequence started is the victim: its 3rd token step is refused by Triton, hangs
    past the client's timeout, or signals `reached` (for the test to cancel it)."""

    def __init__(self, url, fault: str):
        super().__init__(url, timeout=1.0)
        self.fault, self.victim, self.count, self.hang = fault, None, 0, False
        self.reached = asyncio.Event()
        real_post = self._pool.post

        async def post(head, body):
            if self.hang and f"X-Sequence-Id: {self.victim}\r".encode() in head:
                self.hang = False
                await asyncio.sleep(30)  # never answers: the client's timeout ends it
            return await real_post(head, body)

        self._pool.post = post

    async def step(self, sequence_id, ids, start=False, end=False):
        if start and self.victim is None:
            self.victim = sequence_id
        if not start and not end and sequence_id == self.victim:
            self.count += 1
            if self.count == 3:
                if self.fault == "refused":
                    ids = [10**6]  # outside the vocabulary: Triton refuses it
                self.hang = self.fault == "timeout"
                self.reached.set()
        return await super().step(sequence_id, ids, start, end)


@pytest.mark.parametrize("fault", ["refused", "timeout", "cancelled", "stops early"])
def test_one_failing_conversation_never_stalls_the_others(triton, fault):
    """Five conversations; one is refused, times out (then resumes), is cancelled or stops after
    2 tokens. The others finish, nobody hangs, every END reaches the server, the gate empties."""
    cfg = SamplingConfig.greedy(max_new_tokens=12, stop_ids=())
    batch = prompts(5, seed=1)

    async def body():
        client = Faulty(triton.url, fault)
        try:
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
