"""Several bot replicas on one PostgreSQL history: two real `python -m bot` processes, each polling
a fake Bot API of its own, sharing one database and the real Triton; and the database's faults."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from contextlib import ExitStack

import asyncpg
import pytest

from tests.fake_telegram import FakeTelegram
from tests.telegram_harness import (
    LOCK_SECONDS,
    Replica,
    answered,
    wait,
)

CHATS, MESSAGES = 20, 5
FIRST_CHAT = 5000
ALL_CHATS = range(FIRST_CHAT, FIRST_CHAT + CHATS)
BOTH_CHATS, BOTH_MESSAGES = range(FIRST_CHAT, FIRST_CHAT + 8), 3  # each update at both replicas

# Bounds setup too: the first test may train, export and start the session's Triton (~1-2 min).
pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("no_leaked_threads")]


class HeldTelegram(FakeTelegram):
    """A fake Bot API that holds the bot's messages to `held_chat` until `release` is set, so its
    reply is caught mid-send (generated and stored, not marked sent, the chat's lock held).
    `delivered`: Telegram took the message and only its answer is held (the user saw it); else the
    message is held on its way and dropped (the user never saw it)."""

    def __init__(self, delivered: bool = False) -> None:
        super().__init__()
        self.held_chat: int | None = None
        self.delivered = delivered
        self.holding, self.release = threading.Event(), threading.Event()

    def answer(self, method: str, params: dict[str, str]) -> tuple[int, dict]:
        if method != "sendMessage" or params.get("chat_id") != str(self.held_chat):
            return super().answer(method, params)
        answer = super().answer(method, params) if self.delivered else (502, {"ok": False})
        self.holding.set()
        self.release.wait(120)
        return answer

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        super().__exit__(*exc)


async def rows(pool: asyncpg.Pool, chat_id: int) -> list[tuple[str, str]]:
    return [
        (r["role"], r["text"])
        for r in await pool.fetch("SELECT role, text FROM messages WHERE chat_id = $1 ORDER BY id", chat_id)
    ]


def text(chat: int, k: int) -> str:
    return f"Чат {chat - FIRST_CHAT}, сообщение {k + 1}: как дела?"


def two_replicas(stack: ExitStack, triton, model_repository, database_url, tmp_path) -> tuple[list, list]:
    """Two fake Telegrams and a bot process on each, all on one database."""
    fakes = [stack.enter_context(FakeTelegram()) for _ in range(2)]
    replicas = [
        Replica(tg, triton, model_repository, database_url, tmp_path / f"bot{i}.log")
        for i, tg in enumerate(fakes)
    ]
    return fakes, replicas


def test_two_replicas_answer_20_chats_in_order_exactly_once(triton, model_repository, database_url, tmp_path):
    with ExitStack() as stack:
        fakes, replicas = two_replicas(stack, triton, model_repository, database_url, tmp_path)
        try:
            overlaps = asyncio.run(converse(fakes, replicas, database_url))
        finally:
            codes = [r.stop() for r in replicas]
        logs = [r.log.read_text() for r in replicas]
        final = asyncio.run(all_rows(database_url))
    assert codes == [0, 0], logs
    for log in logs:  # `python -m bot` says which store it uses, without the password
        assert "history: PostgreSQL postgresql://bot:***@127.0.0.1" in log
        assert database_url.split(":")[2].split("@")[0] not in log
    # The next message reached the other replica while the previous reply was being written:
    # the replicas did contend for the chats' locks.
    assert overlaps >= CHATS
    for chat in ALL_CHATS:
        sent = [fakes[(chat + k) % 2].texts(chat) for k in range(2)]  # what each replica answered
        assert [len(s) for s in sent] == [len(range(k, MESSAGES, 2)) for k in range(2)]  # once each
        replies = [sent[k % 2][k // 2] for k in range(MESSAGES)]
        assert all(answered(r) for r in replies), replies
        assert final[chat] == [
            row for k in range(MESSAGES) for row in (("user", text(chat, k)), ("bot", replies[k]))
        ]


def test_the_same_updates_at_two_replicas_at_once_are_answered_once(
    triton, model_repository, database_url, tmp_path
):
    """Every update reaches both replicas at once (a webhook retry that lands on another replica):
    one answers it, the other only acknowledges it; a press of a vote button too: it counts once."""
    with ExitStack() as stack:
        fakes, replicas = two_replicas(stack, triton, model_repository, database_url, tmp_path)
        try:
            asyncio.run(converse(fakes, replicas, database_url, BOTH_CHATS, BOTH_MESSAGES, both=True))
            votes = asyncio.run(press_at_both(fakes, database_url))
        finally:
            codes = [r.stop() for r in replicas]
        logs = [r.log.read_text() for r in replicas]
        final = asyncio.run(all_rows(database_url, BOTH_CHATS))
    assert codes == [0, 0], logs
    # Each press reached both replicas: both answered it, its vote counts once, one showed the counts.
    assert votes == [(1, 0)] * len(BOTH_CHATS)
    assert [len(tg.tried("answerCallbackQuery")) for tg in fakes] == [len(BOTH_CHATS)] * 2
    assert sum(len(tg.tried("editMessageReplyMarkup")) for tg in fakes) == len(BOTH_CHATS)
    skipped = sum(log.count("was answered before: delivered again, skipped") for log in logs)
    assert skipped == len(BOTH_CHATS) * BOTH_MESSAGES  # each update once by each replica
    for chat in BOTH_CHATS:
        sent = sorted(
            fakes[0].tried("sendMessage", chat) + fakes[1].tried("sendMessage", chat), key=lambda c: c.at
        )
        replies = [c.params["text"] for c in sent if c.ok]
        assert len(replies) == BOTH_MESSAGES and all(answered(r) for r in replies), replies
        assert final[chat] == [
            row for k in range(BOTH_MESSAGES) for row in (("user", text(chat, k)), ("bot", replies[k]))
        ]


async def press_at_both(fakes: list[FakeTelegram], database_url: str) -> list[tuple[int, int]]:
    """A user presses 👍 under each chat's first reply; the press reaches both replicas at once.
    Each first reply's (👍, 👎) once both answered every press."""
    for chat in BOTH_CHATS:
        sent = sorted(m for f in fakes for (c, m) in f.sent if c == chat)
        owner = next(f for f in fakes if (chat, sent[0]) in f.sent)
        (_, up), _ = owner.keyboard(chat, sent[0])
        other = fakes[1 - fakes.index(owner)]
        other.deliver(owner.press(chat, sent[0], up))
    await wait(
        lambda: asyncio.sleep(0, all(len(f.tried("answerCallbackQuery")) == len(BOTH_CHATS) for f in fakes)),
        timeout=60,
    )
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool:
        rows = await pool.fetch(
            "SELECT r.chat_id, sum(CASE WHEN v.vote > 0 THEN 1 ELSE 0 END) AS up, "
            "sum(CASE WHEN v.vote < 0 THEN 1 ELSE 0 END) AS down FROM replies r JOIN votes v "
            "ON v.reply_id = r.id GROUP BY r.chat_id ORDER BY r.chat_id"
        )
    assert [r["chat_id"] for r in rows] == list(BOTH_CHATS)
    return [(int(r["up"]), int(r["down"])) for r in rows]


async def all_rows(database_url: str, chats: range = ALL_CHATS) -> dict[int, list[tuple[str, str]]]:
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool:
        return {chat: await rows(pool, chat) for chat in chats}


async def converse(
    fakes: list[FakeTelegram],
    replicas: list[Replica],
    database_url: str,
    chats: range = ALL_CHATS,
    messages: int = MESSAGES,
    both: bool = False,
) -> int:
    """Each chat's messages alternate between the replicas (`both`: each reaches both at once); the
    next one goes as soon as the previous is stored. How many were sent while the previous reply
    was still being written."""
    await wait(lambda: asyncio.sleep(0, all(r.polling() for r in replicas)), timeout=120)
    assert all(r.process.poll() is None for r in replicas), [r.log.read_text() for r in replicas]
    overlaps = 0
    async with asyncpg.create_pool(database_url, min_size=1, max_size=4) as pool:

        async def chat(chat_id: int) -> None:
            nonlocal overlaps
            for k in range(messages):
                if k and (await rows(pool, chat_id))[-1][0] == "user":
                    overlaps += 1
                update = fakes[(chat_id + k) % 2].message(chat_id, text(chat_id, k))
                if both:
                    fakes[(chat_id + k + 1) % 2].deliver(update)
                await wait(lambda: stored(pool, chat_id, text(chat_id, k)), timeout=240, poll=0.05)  # noqa: B023 (awaited here)

        await asyncio.gather(*(chat(c) for c in chats))
        replies = len(chats) * messages
        await wait(
            lambda: asyncio.sleep(0, sum(len(tg.of("sendMessage")) for tg in fakes) >= replies), timeout=240
        )
        await wait(lambda: replies_stored(pool, replies), timeout=60)
    return overlaps


async def stored(pool: asyncpg.Pool, chat_id: int, user_text: str) -> bool:
    return ("user", user_text) in await rows(pool, chat_id)


async def replies_stored(pool: asyncpg.Pool, n: int) -> bool:
    return await pool.fetchval("SELECT count(*) FROM messages WHERE role = 'bot'") >= n


async def lock_waiters(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        )
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "how, delivered",
    [("sigkill", False), ("sigstop", False), ("sigkill", True)],
    ids=["sigkill", "sigstop", "sigkill-delivered"],
)
def test_a_replica_dying_mid_send_leaves_the_chat_to_the_other(
    triton, model_repository, database_url, tmp_path, how, delivered
):
    """SIGKILL: its connections close and the lock goes at once. SIGSTOP (hung, still connected):
    the server ends its idle lock transaction after BOT_CHAT_LOCK_SECONDS. The other replica sends
    the stored reply before answering the chat's next message: if the first send never reached
    Telegram, the user sees each reply once; if it did, the same reply twice (docs/guarantees.md says so)."""
    chat = FIRST_CHAT
    with HeldTelegram(delivered) as held, FakeTelegram() as other:
        held.held_chat = chat
        first = Replica(held, triton, model_repository, database_url, tmp_path / "first.log")
        second = Replica(other, triton, model_repository, database_url, tmp_path / "second.log")
        try:
            asyncio.run(wait(lambda: asyncio.sleep(0, first.polling() and second.polling()), timeout=120))
            asked = held.message(chat, "Первое")
            assert held.holding.wait(120), first.log.read_text()  # its reply is being sent
            other.message(chat, "Второе")
            # The second replica waits for the chat's lock, without storing its message yet.
            asyncio.run(wait(lambda: lock_waiters_is(database_url, 1), timeout=60))
            os.kill(first.process.pid, signal.SIGKILL if how == "sigkill" else signal.SIGSTOP)
            killed = time.monotonic()
            asyncio.run(wait(lambda: asyncio.sleep(0, bool(other.texts(chat))), timeout=LOCK_SECONDS + 60))
            waited = time.monotonic() - killed
            asyncio.run(wait(lambda: asyncio.sleep(0, len(other.texts(chat)) == 2), timeout=60))
            asyncio.run(wait(lambda: chat_replies_stored(database_url, chat, 2), timeout=10))  # once sent
        finally:
            first.process.kill()
            first.process.wait()
            code = second.stop()
        final = asyncio.run(all_rows(database_url))[chat]
    assert code == 0, second.log.read_text()
    late, reply = other.texts(chat)
    assert answered(late) and answered(reply)
    assert held.texts(chat) == ([late] if delivered else [])  # what the user saw from the first
    # The late reply quotes the message it answers; the history holds each message and reply once.
    assert (
        json.loads(other.of("sendMessage", chat)[0]["reply_parameters"])["message_id"]
        == (asked["message"]["message_id"])
    )
    assert final == [("user", "Первое"), ("bot", late), ("user", "Второе"), ("bot", reply)]
    print(f"\n{how}: the other replica's first reply {waited:.2f} s after the kill")
    if how == "sigkill":
        assert waited < LOCK_SECONDS
    else:  # the hung holder's last keep-alive was at most a third of the bound before it froze
        assert LOCK_SECONDS * 2 / 3 - 0.5 < waited < LOCK_SECONDS + 30


async def chat_replies_stored(database_url: str, chat: int, n: int) -> bool:
    return [role for role, _ in (await all_rows(database_url))[chat]].count("bot") >= n


async def lock_waiters_is(database_url: str, n: int) -> bool:
    return await lock_waiters(database_url) == n
