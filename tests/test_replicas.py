"""Several bot replicas on one PostgreSQL history: two real `python -m bot` processes, each polling
a fake Bot API of its own, sharing one database and the real Triton; and the database's faults."""

from __future__ import annotations

import asyncio
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
    generated,
    wait,
)

CHATS, MESSAGES = 20, 5
FIRST_CHAT = 5000

# Bounds setup too: the first test may train, export and start the session's Triton (~1-2 min).
pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("no_leaked_threads")]


class HeldTelegram(FakeTelegram):
    """A fake Bot API that holds the bot's messages to `held_chat` until `release` is set, so its
    reply is caught mid-send (generated, not yet sent or stored, the chat's lock held)."""

    def __init__(self) -> None:
        super().__init__()
        self.held_chat: int | None = None
        self.holding, self.release = threading.Event(), threading.Event()

    def answer(self, method: str, params: dict[str, str]) -> tuple[int, dict]:
        if method == "sendMessage" and params.get("chat_id") == str(self.held_chat):
            self.holding.set()
            self.release.wait(120)
        return super().answer(method, params)

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


def test_two_replicas_answer_20_chats_in_order_exactly_once(triton, model_repository, database_url, tmp_path):
    with ExitStack() as stack:
        fakes = [stack.enter_context(FakeTelegram()) for _ in range(2)]
        replicas = [
            Replica(tg, triton, model_repository, database_url, tmp_path / f"bot{i}.log")
            for i, tg in enumerate(fakes)
        ]
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
    for chat in range(FIRST_CHAT, FIRST_CHAT + CHATS):
        sent = [fakes[(chat + k) % 2].texts(chat) for k in range(2)]  # what each replica answered
        assert [len(s) for s in sent] == [len(range(k, MESSAGES, 2)) for k in range(2)]  # once each
        replies = [sent[k % 2][k // 2] for k in range(MESSAGES)]
        assert all(generated(r) for r in replies), replies
        assert final[chat] == [
            row for k in range(MESSAGES) for row in (("user", text(chat, k)), ("bot", replies[k]))
        ]


async def all_rows(database_url: str) -> dict[int, list[tuple[str, str]]]:
    async with asyncpg.create_pool(database_url, min_size=1, max_size=2) as pool:
        return {chat: await rows(pool, chat) for chat in range(FIRST_CHAT, FIRST_CHAT + CHATS)}


async def converse(fakes: list[FakeTelegram], replicas: list[Replica], database_url: str) -> int:
    """Each chat's messages alternate between the replicas; the next one goes as soon as the
    previous is stored. How many were sent while the previous reply was still being written."""
    await wait(lambda: asyncio.sleep(0, all(r.polling() for r in replicas)), timeout=120)
    assert all(r.process.poll() is None for r in replicas), [r.log.read_text() for r in replicas]
    overlaps = 0
    async with asyncpg.create_pool(database_url, min_size=1, max_size=4) as pool:

        async def chat(chat_id: int) -> None:
            nonlocal overlaps
            for k in range(MESSAGES):
                if k and (await rows(pool, chat_id))[-1][0] == "user":
                    overlaps += 1
                fakes[(chat_id + k) % 2].message(chat_id, text(chat_id, k))
                await wait(lambda: stored(pool, chat_id, text(chat_id, k)), timeout=240, poll=0.05)  # noqa: B023 (awaited here)

        await asyncio.gather(*(chat(c) for c in range(FIRST_CHAT, FIRST_CHAT + CHATS)))
        await wait(
            lambda: asyncio.sleep(0, sum(len(tg.of("sendMessage")) for tg in fakes) >= CHATS * MESSAGES),
            timeout=240,
        )
        await wait(lambda: replies_stored(pool), timeout=60)
    return overlaps


async def stored(pool: asyncpg.Pool, chat_id: int, user_text: str) -> bool:
    return ("user", user_text) in await rows(pool, chat_id)


async def replies_stored(pool: asyncpg.Pool) -> bool:
    return await pool.fetchval("SELECT count(*) FROM messages WHERE role = 'bot'") >= CHATS * MESSAGES


async def lock_waiters(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        )
    finally:
        await conn.close()


@pytest.mark.parametrize("how", ["sigkill", "sigstop"])
def test_a_replica_dying_mid_reply_leaves_the_chat_to_the_other(
    triton, model_repository, database_url, tmp_path, how
):
    """SIGKILL: its connections close and the lock goes at once. SIGSTOP (hung, still connected):
    the server ends its idle lock transaction after BOT_CHAT_LOCK_SECONDS."""
    chat = FIRST_CHAT
    with HeldTelegram() as held, FakeTelegram() as other:
        held.held_chat = chat
        first = Replica(held, triton, model_repository, database_url, tmp_path / "first.log")
        second = Replica(other, triton, model_repository, database_url, tmp_path / "second.log")
        try:
            asyncio.run(wait(lambda: asyncio.sleep(0, first.polling() and second.polling()), timeout=120))
            held.message(chat, "Первое")
            assert held.holding.wait(120), first.log.read_text()  # its reply is being sent
            other.message(chat, "Второе")
            # The second replica waits for the chat's lock, without storing its message yet.
            asyncio.run(wait(lambda: lock_waiters_is(database_url, 1), timeout=60))
            os.kill(first.process.pid, signal.SIGKILL if how == "sigkill" else signal.SIGSTOP)
            killed = time.monotonic()
            asyncio.run(wait(lambda: asyncio.sleep(0, bool(other.texts(chat))), timeout=LOCK_SECONDS + 60))
            waited = time.monotonic() - killed
            lost = held.texts(chat)  # before the hold is released: nothing got through
            asyncio.run(wait(lambda: reply_stored(database_url, chat), timeout=10))  # just after it is sent
        finally:
            first.process.kill()
            first.process.wait()
            code = second.stop()
        final = asyncio.run(all_rows(database_url))[chat]
    assert code == 0, second.log.read_text()
    [reply] = other.texts(chat)
    assert generated(reply) and lost == []
    # The first message was stored before its reply was generated; the second replica answered
    # both as one turn.
    assert final == [("user", "Первое"), ("user", "Второе"), ("bot", reply)]
    if how == "sigkill":
        assert waited < LOCK_SECONDS
    else:  # the hung holder's last keep-alive was at most a third of the bound before it froze
        assert LOCK_SECONDS * 2 / 3 - 0.5 < waited < LOCK_SECONDS + 30


async def reply_stored(database_url: str, chat: int) -> bool:
    return "bot" in [role for role, _ in (await all_rows(database_url))[chat]]


async def lock_waiters_is(database_url: str, n: int) -> bool:
    return await lock_waiters(database_url) == n
