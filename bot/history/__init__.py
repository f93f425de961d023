"""The bot's dialogue history: the store's logic (store.py), once for both backends, SQLite
(sqlite.py, the embedded default) and PostgreSQL (postgres.py, shared by replicas)."""

from __future__ import annotations

from pathlib import Path

from bot.history.store import DatabaseSettings, Store


def open_store(data_dir: Path, database: DatabaseSettings, share_default: bool = False) -> Store:
    """PostgreSQL when the settings have a URL (BOT_DATABASE_URL), else SQLite in `data_dir`;
    `share_default` (BOT_SHARE_DEFAULT): chats that never said /share share. `await store.start()`
    connects."""
    store: Store
    if database.url:
        from bot.history.postgres import PostgresStore

        store = PostgresStore(database)
    else:
        from bot.history.sqlite import SQLiteStore

        store = SQLiteStore(data_dir)
    store.share_default = share_default
    return store
