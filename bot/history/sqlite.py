"""The history in one SQLite file (WAL), for one bot process: the console, `make demo`, one host.

The schema (bot/history/schema.py) is versioned in the file's `PRAGMA user_version` and migrated
when the store opens, in one transaction (a file of the first bots has version 0 and the v1
tables). Foreign keys are on (SQLite's default is off): a deleted reply takes its votes along.
Calls take well under a millisecond, so they run inline in the event loop and never yield to it: a
transaction is never interleaved with another task's. The chat lock is an asyncio lock per chat.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from bot.history.schema import SQLITE, Connection, migrations
from bot.history.store import FILENAME, KEEP_ROWS, ChatLocks, Store

T = TypeVar("T")

MIGRATIONS = migrations(SQLITE)  # the schema in SQLite's SQL


class SQLiteConnection:
    """A sqlite3 connection behind the asyncpg calls the store makes ($n parameters become ?n)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def _cursor(self, sql: str, args: tuple[object, ...]) -> sqlite3.Cursor:
        return self.db.execute(re.sub(r"\$(\d+)", r"?\1", sql), args)

    async def execute(self, sql: str, *args: object) -> str:
        """The statement's status as asyncpg gives it: its verb and the rows it changed."""
        return f"{sql.split()[0].upper()} {self._cursor(sql, args).rowcount}"

    async def fetch(self, sql: str, *args: object) -> list[Any]:
        return self._cursor(sql, args).fetchall()

    async def fetchval(self, sql: str, *args: object) -> Any:
        rows = self._cursor(sql, args).fetchall()  # all: a RETURNING statement ends when read
        return rows[0][0] if rows else None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")


def migrate(db: sqlite3.Connection, path: Path) -> int:
    """Apply the migrations the file lacks, in one transaction; the schema version it is at."""
    db.execute("BEGIN IMMEDIATE")  # another process opening the file waits here
    try:
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise ValueError(
                f"{path} has history schema v{version}, newer than this bot's v{len(MIGRATIONS)}: "
                "run the newer bot, or set BOT_DATA_DIR to another folder"
            )
        for sql in MIGRATIONS[version:]:
            for statement in sql.split(";"):  # executescript would commit the transaction
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return len(MIGRATIONS)


class SQLiteStore(Store):
    """The Store in `folder`/history.sqlite3 (created if missing, migrated if old)."""

    DIALECT = SQLITE

    def __init__(self, folder: Path, keep: int = KEEP_ROWS):
        self.path, self.keep = Path(folder) / FILENAME, keep
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.where = f"SQLite {self.path}"
        db = sqlite3.connect(self.path, isolation_level=None)  # transactions are explicit
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout = 10000")
            db.execute("PRAGMA foreign_keys = ON")  # a reply's votes and message ids go with it
            self.version = migrate(db, self.path)
        except BaseException:
            db.close()
            raise
        self._db, self._locks = SQLiteConnection(db), ChatLocks()

    async def _open(self) -> None:
        """Nothing to connect to: the file was opened and migrated with the store."""

    async def _run(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        return await work(self._db)

    @asynccontextmanager
    async def chat_turn(self, chat_id: int) -> AsyncIterator[None]:
        async with self._locks(chat_id):
            yield

    async def close(self) -> None:
        self._db.db.close()
