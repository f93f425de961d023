"""Feedback's schema (the FEEDBACK migration): a SQLite file and a PostgreSQL database written by the
v1 and the v2 bot migrate and keep every row; two replicas on one PostgreSQL count each vote once,
also when the same press reaches both at once, and /forget racing votes leaves no vote behind.
The store's calls on both backends: test_feedback.py."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from bot.history.postgres import MIGRATIONS as PG_MIGRATIONS
from bot.history.postgres import PostgresStore
from bot.history.schema import FEEDBACK_VERSION
from bot.history.sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from bot.history.sqlite import SQLiteStore
from bot.history.store import FILENAME, DatabaseSettings, Store
from bot.history.votes import Tally

CHAT = 6100
MESSAGES = "SELECT id, chat_id, role, text, at FROM messages ORDER BY id"
V2_MESSAGES = "SELECT id, chat_id, role, text, message_id, sent, at FROM messages ORDER BY id"
INBOX = "SELECT chat_id, message_id, answered FROM inbox ORDER BY chat_id, message_id"
# (role, text, message id) as the v2 bot stored a dialogue: the user's message 1 and its sent reply
V2_ROWS = [("user", "Привет", 1, True), ("bot", "Привет!", 1, True), ("user", "Как дела?", 2, True)]


def settings(url: str) -> DatabaseSettings:
    return DatabaseSettings(url, connect_seconds=5, retry_seconds=2, lock_seconds=3)


async def feedback_works(store: Store) -> None:
    """The migrated store records a reply to the old message 2 and counts a vote on it."""
    stored = await store.record_reply(CHAT, 2, await store.turns(CHAT, 3), "Хорошо", "1", {"top_k": 10})
    assert await store.attach(CHAT, stored.id, [20])
    assert await store.vote(CHAT, stored.id, 7, 1) == Tally(True, 1, 0, changed=True)
    assert [r.text for r in (await store.liked()).liked] == ["Хорошо"]


# -- SQLite ---------------------------------------------------------------------------------------


def sqlite_file(folder: Path, version: int) -> Path:
    """history.sqlite3 as the v1 bot (user_version 0) or the v2 bot wrote it."""
    path = folder / FILENAME
    with sqlite3.connect(path) as db:
        for sql in SQLITE_MIGRATIONS[:version]:
            for statement in sql.split(";"):
                db.execute(statement)
        if version == 1:
            for i, (role, text, _, _) in enumerate(V2_ROWS):
                db.execute(
                    "INSERT INTO messages (chat_id, role, text, at) VALUES (?, ?, ?, ?)",
                    (CHAT, role, text, 1e9 + i),
                )
        else:
            db.execute("PRAGMA user_version = 2")
            for i, (role, text, message_id, sent) in enumerate(V2_ROWS):
                db.execute(
                    "INSERT INTO messages (chat_id, role, text, message_id, sent, at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (CHAT, role, text, message_id, sent, 1e9 + i),
                )
            db.executemany(
                "INSERT INTO inbox (chat_id, message_id, answered) VALUES (?, ?, ?)",
                [(CHAT, 1, 1), (CHAT, 2, 0)],
            )
    return path


def sqlite_rows(path: Path, version: int) -> tuple[list, list]:
    with sqlite3.connect(path) as db:
        messages = db.execute(MESSAGES if version == 1 else V2_MESSAGES).fetchall()
        return messages, db.execute(INBOX).fetchall() if version == 2 else []


@pytest.mark.parametrize("version", [1, 2])
def test_a_sqlite_file_of_v1_or_v2_is_migrated_and_keeps_its_rows(tmp_path, version):
    path = sqlite_file(tmp_path, version)
    before = sqlite_rows(path, version)

    async def main() -> None:
        store = SQLiteStore(tmp_path)
        try:
            assert store.version == len(SQLITE_MIGRATIONS) >= FEEDBACK_VERSION
            assert await store.turns(CHAT, 3) == [text for _, text, _, _ in V2_ROWS]
            if version == 2:
                assert await store.unanswered() == [(CHAT, 2)] and await store.is_answered(CHAT, 1)
            await feedback_works(store)
        finally:
            await store.close()

    asyncio.run(main())
    after = sqlite_rows(path, version)
    assert after[0][: len(before[0])] == before[0] and after[1] == before[1]  # ids, times, flags kept
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(SQLITE_MIGRATIONS),)


# -- PostgreSQL -----------------------------------------------------------------------------------


async def pg_rows(conn: asyncpg.Connection, version: int) -> tuple[list, list]:
    if version == 1:
        return [tuple(r) for r in await conn.fetch(MESSAGES)], []
    return [tuple(r) for r in await conn.fetch(V2_MESSAGES)], [tuple(r) for r in await conn.fetch(INBOX)]


async def pg_database(conn: asyncpg.Connection, version: int) -> None:
    """The database as the v1 or the v2 bot left it: its migrations and versions, its rows."""
    async with conn.transaction():
        await conn.execute(
            "CREATE TABLE schema_version (version integer PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())"
        )
        for number, sql in enumerate(PG_MIGRATIONS[:version], 1):
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", number)
    for role, text, message_id, sent in V2_ROWS:
        if version == 1:
            await conn.execute(
                "INSERT INTO messages (chat_id, role, text) VALUES ($1, $2, $3)", CHAT, role, text
            )
        else:
            await conn.execute(
                "INSERT INTO messages (chat_id, role, text, message_id, sent) VALUES ($1, $2, $3, $4, $5)",
                CHAT,
                role,
                text,
                message_id,
                sent,
            )
    if version == 2:
        await conn.executemany(
            "INSERT INTO inbox (chat_id, message_id, answered) VALUES ($1, $2, $3)",
            [(CHAT, 1, True), (CHAT, 2, False)],
        )


@pytest.mark.parametrize("version", [1, 2])
def test_a_postgresql_database_of_v1_or_v2_is_migrated_and_keeps_its_rows(database_url, version):
    """Two replicas of this bot start on it at once: it is migrated once."""

    async def main() -> tuple[list, list, list[int]]:
        conn = await asyncpg.connect(database_url)
        try:
            await pg_database(conn, version)
            before = await pg_rows(conn, version)
            stores = [PostgresStore(settings(database_url)) for _ in range(2)]
            await asyncio.gather(*(s.start() for s in stores))
            try:
                assert await stores[0].turns(CHAT, 3) == [text for _, text, _, _ in V2_ROWS]
                await feedback_works(stores[1])
            finally:
                for store in stores:
                    await store.close()
            after = await pg_rows(conn, version)
            assert after[0][: len(before[0])] == before[0] and after[1] == before[1]
            return [r["version"] for r in await conn.fetch("SELECT version FROM schema_version ORDER BY 1")]
        finally:
            await conn.close()

    assert asyncio.run(main()) == list(range(1, len(PG_MIGRATIONS) + 1))


# -- two replicas on one PostgreSQL ---------------------------------------------------------------


def test_two_replicas_count_each_vote_once(database_url):
    """The same press at both replicas (a redelivered callback, a webhook retry at another replica),
    many times at once, counts once; twenty users pressing at once count twenty."""

    async def main() -> None:
        a, b = PostgresStore(settings(database_url)), PostgresStore(settings(database_url))
        await asyncio.gather(a.start(), b.start())
        try:
            await a.add(CHAT, "user", "Привет", 1)
            reply = (await a.record_reply(CHAT, 1, ["Привет"], "Привет!", "1", {})).id
            same = await asyncio.gather(*(store.vote(CHAT, reply, 7, 1) for store in (a, b) * 10))
            assert {(t.up, t.down) for t in same} == {(1, 0)} and sum(t.changed for t in same) == 1
            users = await asyncio.gather(
                *((a, b)[user % 2].vote(CHAT, reply, user, 1 if user % 3 else -1) for user in range(100, 120))
            )
            assert all(t.changed for t in users)
            assert await b.tally(CHAT, reply) == Tally(True, 1 + 14, 6)  # 6 of 100..119 divide by 3
            withdrawn = await asyncio.gather(*(store.vote(CHAT, reply, 7, 0) for store in (a, b) * 5))
            assert sum(t.changed for t in withdrawn) == 1 and await a.tally(CHAT, reply) == Tally(True, 14, 6)
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_forget_racing_votes_at_another_replica_leaves_no_vote(database_url):
    async def main() -> None:
        a, b = PostgresStore(settings(database_url)), PostgresStore(settings(database_url))
        await asyncio.gather(a.start(), b.start())
        try:
            replies = []
            for message_id in range(1, 6):
                await a.add(CHAT, "user", f"вопрос {message_id}", message_id)
                replies.append((await a.record_reply(CHAT, message_id, ["?"], "ответ", "1", {})).id)
            votes = [b.vote(CHAT, reply, user, 1) for reply in replies for user in range(10)]
            results = await asyncio.gather(*votes[:25], a.forget_chat(CHAT), *votes[25:])
            forgotten = results[25]
            assert forgotten.replies == 5 and forgotten.votes == sum(
                t.found for t in results[:25] + results[26:]
            )  # every vote that found its reply was counted and deleted by /forget
            conn = await asyncpg.connect(database_url)
            try:
                assert await conn.fetchval("SELECT count(*) FROM votes") == 0
            finally:
                await conn.close()
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())
