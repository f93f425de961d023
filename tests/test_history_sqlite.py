"""bot/history/sqlite.py: the history file: committed at once, its schema migrated from v1 without
loss, a newer one refused. The store's behaviour on both backends: test_history.py."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bot.history.sqlite import MIGRATIONS, SQLiteStore
from bot.history.store import FILENAME

CHAT = 42
V1_ROWS = [
    ("user", "Привет"),
    ("bot", "Привет!"),
    ("user", "Как дела?"),
    ("bot", "Хорошо."),
    ("user", "Что делаешь?"),
]


def rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT id, chat_id, role, text, at FROM messages ORDER BY id").fetchall()


def test_every_message_is_committed_at_once_in_wal_mode(tmp_path):
    """A second connection (another process after a crash) sees each message as soon as it is added."""

    async def main() -> None:
        store = SQLiteStore(tmp_path)
        await store.add(CHAT, "user", "сохранено", 1)
        other = sqlite3.connect(tmp_path / FILENAME)
        try:
            assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert other.execute("SELECT text FROM messages").fetchall() == [("сохранено",)]
        finally:
            other.close()
            await store.close()

    asyncio.run(main())


def test_a_file_of_the_previous_version_is_migrated_without_loss(tmp_path):
    """A history.sqlite3 as the v1 bot wrote it (its schema and statements, user_version 0)."""
    path = tmp_path / FILENAME
    with sqlite3.connect(path) as db:
        db.executescript(MIGRATIONS[0])
        for i, (role, text) in enumerate(V1_ROWS):
            db.execute(
                "INSERT INTO messages (chat_id, role, text, at) VALUES (?, ?, ?, ?)",
                (CHAT, role, text, 1e9 + i),
            )
        db.execute("DELETE FROM messages WHERE id = 1")  # pruned, as v1 did
    before = rows(path)

    async def main() -> None:
        store = SQLiteStore(tmp_path)
        try:
            assert store.version == len(MIGRATIONS)
            assert await store.turns(CHAT, 10) == [text for _, text in V1_ROWS[1:]]
            await store.add(CHAT, "user", "Новое", 9)
            await store.add(CHAT, "user", "Новое", 9)
            assert await store.turns(CHAT, 1) == ["Что делаешь?\nНовое"] and await store.unanswered() == [
                (CHAT, 9)
            ]
        finally:
            await store.close()

    asyncio.run(main())
    assert rows(path)[: len(before)] == before and len(rows(path)) == len(before) + 1  # ids and times kept
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
    asyncio.run(SQLiteStore(tmp_path).close())  # opened again: nothing left to migrate
    assert len(rows(path)) == len(before) + 1


def test_a_newer_file_is_refused(tmp_path):
    asyncio.run(SQLiteStore(tmp_path).close())
    with sqlite3.connect(tmp_path / FILENAME) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    newer = rf"{FILENAME} has history schema v{len(MIGRATIONS) + 1}, newer .* set BOT_DATA_DIR"
    with pytest.raises(ValueError, match=newer):
        SQLiteStore(tmp_path)
