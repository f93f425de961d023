"""The store of the feedback tests (test_feedback.py, test_feedback_forget.py): open_store's arguments
for SQLite and a fresh PostgreSQL database, a store opened around a test's body, a reply sent."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.history import open_store
from bot.history.postgres import PostgresStore
from bot.history.sqlite import SQLiteStore
from bot.history.store import DatabaseSettings, Store

CHAT, OTHER = 42, -1001234567890
ANNA, BORIS, VIKA = 7, 8, 9  # user ids
SAMPLING = {"temperature": 1.2, "top_k": 10, "stop_ids": [50257]}
Body = Callable[[Store], Awaitable[Any]]
BACKENDS = ["sqlite", "postgresql"]  # a test module's `backend` fixture is parametrized with these


def arguments(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, DatabaseSettings]:
    """open_store's arguments for the backend `request.param`; PostgreSQL gets a fresh database."""
    url = request.getfixturevalue("database_url") if request.param == "postgresql" else ""
    return tmp_path / "data", DatabaseSettings(url, connect_seconds=5, retry_seconds=2, lock_seconds=3)


def run(backend, body: Body, keep: int | None = None, share_default: bool = False) -> Any:
    async def main() -> Any:
        data_dir, database = backend
        if keep is None:
            store = open_store(data_dir, database, share_default)
        else:
            store = PostgresStore(database, keep) if database.url else SQLiteStore(data_dir, keep)
            store.share_default = share_default
        await store.start()
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


async def answered(
    store: Store, chat: int, message_id: int, prompt: str = "Привет", text: str = "Ответ"
) -> int:
    """A user's message and the model's reply to it, recorded, sent as message 1000 + message_id."""
    await store.add(chat, "user", prompt, message_id)
    stored = await store.record_reply(chat, message_id, [prompt], text, "3", SAMPLING)
    assert await store.attach(chat, stored.id, [1000 + message_id])
    await store.mark_answered(chat, message_id, reply=stored.row)
    return stored.id


async def column(store: Store, sql: str, *args: object) -> list[Any]:
    return [row[0] for row in await store._run(lambda conn: conn.fetch(sql, *args))]
