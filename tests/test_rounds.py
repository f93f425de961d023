"""client/rounds.py through the real Triton: every generation of a client steps in one request
per round and gives what it gives alone; generations join and leave between rounds; at most the
server's KV slots are active; a failing, hanging or cancelled generation never stalls the others,
and every END reaches the server."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bench.stats import model_stats
from client.rounds import TritonClient, generate
from client.sampling import SamplingConfig
from client.transport import TritonRequestError, TritonUnavailable
from contract import triton_io as io
from tests.helpers import IDLE_MODEL, cached_sequences


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(10, 1000, int(rng.integers(8, 40))).tolist() for _ in range(n)]


def gen(client: TritonClient, prompt: list[int], cfg: SamplingConfig, **options):
    """A generation seeded alike for every prompt (greedy here: the seed does not matter)."""
    return generate(client, prompt, cfg, np.random.default_rng(0), **options)


def test_eight_conversations_step_as_one_request_per_round_and_equal_their_solo_replies(triton):
    """8 greedy conversations: Triton's own count of requests equals the client's rounds, 8 rows
    each (the prompts, 29 token steps, the END rows); each reply is what it is alone."""
    cfg = SamplingConfig.greedy(max_new_tokens=30, stop_ids=())
    batch = prompts(8)

    async def body():
        client = TritonClient(triton.url, IDLE_MODEL)
        try:
            alone = [(await gen(client, p, cfg)).tokens for p in batch]
            await asyncio.sleep(0.1)  # the last END row
            before, rounds, rows = model_stats(triton.url, IDLE_MODEL), client.rounds_sent, client.rows_sent
            together = await asyncio.gather(*(gen(client, p, cfg) for p in batch))
            await asyncio.sleep(0.1)  # the END rows
            after = model_stats(triton.url, IDLE_MODEL)
            sent = client.rounds_sent - rounds, client.rows_sent - rows
            return alone, [g.tokens for g in together], after[0] - before[0], sent
        finally:
            await client.close()

    alone, together, requests, (rounds, rows) = asyncio.run(body())
    assert together == alone and all(len(t) == 30 for t in alone)
    assert (rounds, rows) == (31, 8 * 30 + 8) and requests == rounds


def test_a_generation_joins_the_next_round_and_no_more_than_the_slots_are_active(triton):
    """Twice the server's KV slots of generations at once: at most `kv_slots` rows per round (the
    rest wait here, not at the server, where they would be refused as busy); a generation started
    while others decode joins their rounds; all finish with their solo replies."""
    cfg = SamplingConfig.greedy(max_new_tokens=6, stop_ids=())

    async def body():
        client = TritonClient(triton.url)
        sizes: list[int] = []
        send = client.send

        async def counting(arrays, *args, **kwargs):
            sizes.append(int((arrays[io.FLAGS][0] & io.ROW_END == 0).sum()))
            return await send(arrays, *args, **kwargs)

        client.send = counting  # type: ignore[method-assign]
        try:
            slots = (await client.model_info()).kv_slots
            batch = prompts(2 * slots, seed=3)
            alone = [(await gen(client, p, cfg)).tokens for p in batch[:2]]
            sizes.clear()
            first = asyncio.create_task(gen(client, batch[0], cfg.with_(max_new_tokens=40)))
            await asyncio.sleep(0.2)  # it decodes alone
            rest = await asyncio.gather(*(gen(client, p, cfg) for p in batch[1:]))
            await first
            return slots, sizes, alone, [g.tokens for g in rest]
        finally:
            await client.close()

    slots, sizes, alone, rest = asyncio.run(body())
    assert max(sizes) == slots and sizes[0] == 1  # the first alone, then full rounds
    assert rest[0] == alone[1] and all(len(t) == 6 for t in rest)


class Faulty(TritonClient):
    """The first sequence started is the victim: at its 3rd token step Triton refuses its row, the
    whole round hangs past the client's timeout, or `reached` is set (for the test to cancel it)."""

    def __init__(self, url, fault: str):
        super().__init__(url, timeout=1.0)
        self.fault, self.victim, self.count = fault, None, 0
        self.reached = asyncio.Event()

    async def send(self, arrays, *args, **kwargs):
        ids, positions = arrays[io.SEQUENCE_IDS][0], arrays[io.POSITIONS][0]
        if self.victim is None and ids.size and ids[0] != io.PROBE_SEQUENCE_ID:
            self.victim = int(ids[0])
        row = np.flatnonzero((ids == self.victim) & (positions > 0))
        if row.size:
            self.count += 1
            if self.count == 3:
                self.reached.set()
                if self.fault == "refused":  # an id outside the vocabulary
                    arrays = {**arrays, io.INPUT_IDS: arrays[io.INPUT_IDS].copy()}
                    at = int(arrays[io.COUNTS][0][: row[0]].sum())
                    arrays[io.INPUT_IDS][0, at] = 10**6
                elif self.fault == "timeout":
                    await asyncio.sleep(self.timeout)
                    raise TritonUnavailable("Triton unreachable: TimeoutError (injected)")
        return await super().send(arrays, *args, **kwargs)


@pytest.mark.parametrize("fault", ["refused", "timeout", "cancelled", "stops early"])
def test_one_failing_conversation_never_stalls_the_others(triton, fault):
    """Five conversations; one is refused, its round times out (all five send it again), it is
    cancelled, or it stops after 2 tokens. The others finish, nobody hangs, every END reaches the
    server, the rounds empty."""
    cfg = SamplingConfig.greedy(max_new_tokens=12, stop_ids=())
    batch = prompts(5, seed=1)

    async def body():
        client = Faulty(triton.url, fault)
        try:
            await client.model_info()
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
            if fault == "cancelled":
                await asyncio.wait_for(client.reached.wait(), 10)
                tasks[0].cancel()
            done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
            await asyncio.sleep(0.2)
            return done, len(client._active) + len(client._waiting)
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


def test_an_async_callback_holds_its_own_generation_only(triton):
    """A generation whose on_tokens awaits something steps again only once it is done; the others
    go on meanwhile."""
    cfg = SamplingConfig.greedy(max_new_tokens=8, stop_ids=())
    gate = asyncio.Event()

    async def body():
        client = TritonClient(triton.url)
        held: list[int] = []

        async def wait(tokens):
            held.append(len(tokens))
            if len(tokens) == 2:
                await gate.wait()

        try:
            slow = asyncio.create_task(gen(client, [5, 6, 7], cfg, on_tokens=wait))
            other = await gen(client, [8, 9, 10], cfg)
            at = list(held)
            gate.set()
            return at, other, await slow
        finally:
            await client.close()

    at, other, slow = asyncio.run(body())
    assert at == [1, 2] and len(other.tokens) == 8 and len(slow.tokens) == 8
