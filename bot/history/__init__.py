"""The bot's dialogue history: the store's logic (store.py), once for both backends, SQLite
(sqlite.py, the embedded default) and PostgreSQL (postgres.py, shared by replicas)."""

from __future__ import annotations

from pathlib import Path

from bot.history.store import DatabaseSettings, Store


def open_store(data_dir: Path, database: DatabaseSettings) -> Store:
    """PostgreSQL when the settings have a URL (BOT_DATABASE_URL), else SQLite in `data_dir`;
    `await store.start()` connects."""
    if database.url:
        from bot.history.postgres import PostgresStore

        return PostgresStore(database)
    from bot.history.sqlite import SQLiteStore

    return SQLiteStore(data_dir)
