"""One chat's flood delays nobody else: four quiet chats' reply times without and with a fifth chat
sending 30 messages within 1 s, side by side in one run (quiet and flood rounds interleaved,
medians per chat compared as ratios); what the flooding chat gets (bot/waiting.py: its messages
answered together in few turns, the oldest beyond the line's bound skipped with one note); that
nothing piles up meanwhile. The real Application by long polling and by webhook, the fake Bot API,
the real Triton."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from bot.metrics import Metrics
from bot.telegram import build_application
from bot.texts import FLOOD_NOTE
from bot.waiting import LIMIT
from client.rounds import TritonClient
from client.sampling import SamplingConfig
from tests.fake_telegram import FakeTelegram
from tests.helpers import MODEL
from tests.telegram_harness import CHAT, OTHER, RecordingChatBot, generated, run_bot

pytestmark = [pytest.mark.timeout(400), pytest.mark.usefixtures("no_leaked_threads")]

QUIET = (CHAT, OTHER, 3003, 4004)  # each sends a message and waits for its reply, EXCHANGES times a round
FLOODERS = (7001, 7002, 7003, 7004, 7005)  # a fresh flooding chat per flood (the last one alone)
FLOOD, FLOOD_SECONDS = 30, 1.0
ROUNDS, EXCHANGES = 4, 3  # rounds of (quiet, flood); exchanges per quiet chat and round
TOKENS = 48  # every reply exactly this long (no stop ids): the same work in both kinds of round
RATIO = 1.5  # a quiet chat's median reply time during floods over its median without


def fixed_length_chatbot(url: str, tokenizer) -> RecordingChatBot:
    return RecordingChatBot(
        TritonClient(url, MODEL, timeout=30),
        tokenizer,
        SamplingConfig(max_new_tokens=TOKENS),
        seed=0,
        stops=False,
    )


async def exchange(tg: FakeTelegram, chat_id: int, text: str) -> float:
    """Send a message, wait for the reply; seconds from the message made to the reply's arrival at
    the fake Bot API (its own clock, not the test's polling)."""
    n = len(tg.tried("sendMessage", chat_id))
    made = time.monotonic()
    tg.message(chat_id, text)
    await tg.wait_for(lambda: len(tg.tried("sendMessage", chat_id)) > n, timeout=60)
    return tg.tried("sendMessage", chat_id)[n].at - made


async def flood(tg: FakeTelegram, dialogues, flooder: int | None, seen: dict) -> None:
    """`flooder` sends FLOOD messages within FLOOD_SECONDS (None: the same time passes quietly);
    `seen`: the longest line meanwhile, the tasks alive just after (every handler of it has run)."""
    for i in range(FLOOD):
        if flooder:
            tg.message(flooder, f"флуд {i + 1}")
        seen["waiting"] = max(seen.get("waiting", 0), len(dialogues.waiting))
        await asyncio.sleep(FLOOD_SECONDS / FLOOD)
    await asyncio.sleep(0.1)
    seen["tasks"] = len(asyncio.all_tasks())
    if flooder:
        await tg.wait_for(lambda: not dialogues.waiting.busy(flooder), timeout=60)


async def one_round(tg: FakeTelegram, dialogues, name: str, flooder: int | None) -> dict:
    """The quiet chats' exchanges, with `flooder` flooding from the same start."""
    times: dict[int, list[float]] = {chat: [] for chat in QUIET}
    seen: dict = {}

    async def talk(chat_id: int) -> None:
        # Spread over the flood, one exchange per third of it at most, the chats a quarter of
        # that apart (people do not write in the same millisecond).
        gap = FLOOD_SECONDS / EXCHANGES
        start = time.monotonic() + QUIET.index(chat_id) * gap / len(QUIET)
        for k in range(EXCHANGES):
            await asyncio.sleep(start + k * gap - time.monotonic())
            times[chat_id].append(await exchange(tg, chat_id, f"{name}, сообщение {k + 1}: как дела?"))

    await asyncio.gather(flood(tg, dialogues, flooder, seen), *(talk(chat) for chat in QUIET))
    return {"times": times, **seen}


@pytest.mark.parametrize("mode", ["polling", "webhook"])
def test_a_flooding_chat_delays_no_other_chat(tg, settings, triton, tokenizer, mode):
    metrics = Metrics()

    async def body(dialogues):
        rounds = []
        for r in range(ROUNDS):
            rounds.append(await one_round(tg, dialogues, f"тихий раунд {r + 1}", None))
            rounds.append(await one_round(tg, dialogues, f"раунд с флудом {r + 1}", FLOODERS[r]))
        idle, alone = len(asyncio.all_tasks()), {}  # a flood alone: what stays in memory meanwhile
        await flood(tg, dialogues, FLOODERS[ROUNDS], alone)
        answered = [
            await dialogues.history.is_answered(chat, message_id)
            for chat in FLOODERS
            for message_id in tg.message_ids(chat)
        ]
        histories = {chat: await dialogues.history.turns(chat, 100) for chat in FLOODERS}
        return rounds, alone["tasks"] - idle, answered, histories

    app = build_application(fixed_length_chatbot(triton.url, tokenizer), settings, metrics)
    # Polled as `python -m bot` polls: the next getUpdates as soon as one is answered.
    rounds, extra_tasks, answered, histories = run_bot(
        app, body, tg if mode == "webhook" else None, poll_interval=0
    )
    quiet, flooded = rounds[0::2], rounds[1::2]

    # Other chats: every exchange answered, each chat's median within RATIO of its quiet median.
    median = {
        kind: {chat: statistics.median(t for r in group for t in r["times"][chat]) for chat in QUIET}
        for kind, group in (("quiet", quiet), ("flood", flooded))
    }
    ratios = {chat: median["flood"][chat] / median["quiet"][chat] for chat in QUIET}
    by_exchange = {  # the k-th exchange of every quiet chat, all rounds: where in the flood it costs
        kind: [
            round(statistics.median(r["times"][c][k] for r in group for c in QUIET), 3)
            for k in range(EXCHANGES)
        ]
        for kind, group in (("quiet", quiet), ("flood", flooded))
    }
    for chat in QUIET:
        assert len(tg.texts(chat)) == 2 * ROUNDS * EXCHANGES and all(generated(t) for t in tg.texts(chat))

    # The flooding chats: every message answered once, in few merged turns, at most one note each.
    skipped = metrics.registry.get_sample_value("bot_skipped_messages_total")
    report = []
    for chat in FLOODERS:
        texts = tg.texts(chat)
        replies, notes = [t for t in texts if t != FLOOD_NOTE], texts.count(FLOOD_NOTE)
        user_turns = histories[chat][0::2]
        stored = sum(len(turn.split("\n")) for turn in user_turns)
        assert histories[chat][1::2] == replies and len(user_turns) == len(replies)  # one reply per turn
        assert all(generated(r) for r in replies) and notes <= 1
        assert 1 <= len(replies) <= FLOOD // 2, texts  # answered together, not one by one
        assert stored <= FLOOD and (notes == 1) == (stored < FLOOD)  # a note iff some were skipped
        report.append((len(replies), notes, stored, [len(t.split("\n")) for t in user_turns]))
    assert all(answered)  # skipped ones too: a delivery again is not answered
    assert skipped == sum(FLOOD - stored for *_, stored, _ in report)

    # Nothing piles up: the line stays within its bound, no handler waits per flood message.
    assert max(r["waiting"] for r in flooded) <= LIMIT
    print(
        f"\n{mode}: quiet chats' median reply, quiet vs flood (s): "
        + ", ".join(f"{median['quiet'][c]:.3f}/{median['flood'][c]:.3f} ({ratios[c]:.2f}x)" for c in QUIET)
        + f"\n{mode}: by exchange within the second, quiet vs flood (s): {by_exchange}"
        + f"\n{mode}: flooding chats (replies, notes, messages answered, messages per turn): {report}; "
        f"skipped {skipped:g}; tasks alive at a lone flood's end beyond an idle bot's: {extra_tasks}; "
        f"longest line {max(r['waiting'] for r in flooded)}"
    )
    assert extra_tasks <= 8, extra_tasks  # its answering (one handler, typing, drafts, generation)
    assert max(ratios.values()) <= RATIO, ratios
