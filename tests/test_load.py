"""Load through the bot's dialogue core on the real Triton: nothing fails, nothing stays cached."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from client.chat import ChatBot
from client.rounds import TritonClient
from client.sampling import SamplingConfig
from tests.helpers import metric, server_rss_mib

CONVERSATIONS, MESSAGES, AT_ONCE = 100, 5, 32


@pytest.mark.timeout(300)
def test_100_conversations_of_5_messages_32_at_a_time(triton, tokenizer, capsys):
    rss_before = server_rss_mib(triton.process.pid)

    async def run():
        client = TritonClient(triton.url, timeout=30)
        bot = ChatBot(client, tokenizer, SamplingConfig(max_new_tokens=16), seed=0)
        gate, latencies, failures = asyncio.Semaphore(AT_ONCE), [], []

        async def conversation(k: int):
            async with gate:
                history: list[str] = []
                for m in range(MESSAGES):
                    message = f"Привет, я собеседник {k}. Сообщение {m}: как дела?"
                    t = time.perf_counter()
                    try:
                        reply = await bot.reply([*history, message])
                    except Exception as exc:  # counted: the assertion below shows them
                        failures.append(repr(exc))
                        continue
                    latencies.append(time.perf_counter() - t)
                    history += [message, reply.text]

        t0 = time.perf_counter()
        await asyncio.gather(*(conversation(k) for k in range(CONVERSATIONS)))
        await client.close()
        return time.perf_counter() - t0, latencies, failures

    wall, latencies, failures = asyncio.run(run())
    assert failures == [] and len(latencies) == CONVERSATIONS * MESSAGES
    time.sleep(1.5)  # the gauges update after each execute and every second
    assert metric(triton.metrics_url, "rudialogpt_cached_sequences", model="rudialogpt") == 0
    assert metric(triton.metrics_url, "rudialogpt_cached_tokens", model="rudialogpt") == 0
    rss_after = server_rss_mib(triton.process.pid)
    assert rss_after < rss_before + 150  # onnxruntime's arenas grow a little, caches are gone
    with capsys.disabled():
        print(
            f"\nload: {len(latencies)} replies in {wall:.1f} s ({len(latencies) / wall:.1f}/s), "
            f"p95 {np.percentile(latencies, 95) * 1000:.0f} ms, "
            f"server RSS {rss_before:.0f} -> {rss_after:.0f} MiB"
        )
