"""The Telegram bot's dialogue history: the store interface, its SQLite backend and `open_store`.

SQLite (a file in BOT_DATA_DIR) is the embedded default; with BOT_DATABASE_URL set the history
lives in PostgreSQL (bot/history_pg.py), shared by every replica of the bot. Each message is
committed the moment it is added, so a crash loses nothing said before it. `reset` deletes the
chat's rows: a forgotten dialogue is gone, not hidden. Consecutive messages of one speaker (the
user wrote again after a failed reply) come back as one turn, so the prompt keeps alternating
speakers. `chat_turn` is the per-chat lock: one reply at a time per chat (cluster-wide in
PostgreSQL, per process in SQLite).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

Role = Literal["user", "bot"]
FILENAME = "history.sqlite3"
KEEP_ROWS = 200  # per chat: older rows are deleted as new ones come
DATABASE_URL = "BOT_DATABASE_URL"  # the variable that switches the history to PostgreSQL

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'bot')),
    text TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_chat ON messages (chat_id, id);
"""


class StoreUnavailable(Exception):
    """The history's database did not answer within the retry window (the user is told to retry)."""


@dataclass(frozen=True)
class DatabaseSettings:
    """The PostgreSQL history's variables (read by bot/settings.py); no URL: SQLite in BOT_DATA_DIR."""

    url: str = field(default="", repr=False)  # BOT_DATABASE_URL, postgresql://user:password@host:port/db
    # BOT_DATABASE_CONNECT_SECONDS: keep retrying the first connection this long
    connect_seconds: float = 60.0
    retry_seconds: float = 10.0  # BOT_DATABASE_RETRY_SECONDS: a lost connection is retried this long per call
    lock_seconds: float = 30.0  # BOT_CHAT_LOCK_SECONDS: a hung replica holds a chat's lock at most this long


class Store(Protocol):
    """What the bot needs of a history store; every method may raise StoreUnavailable."""

    where: str  # for the start-up log line: the file, or the database URL without its password

    async def start(self) -> None:
        """Connect (retrying within the settings' window) and create or migrate the schema."""

    async def add(self, chat_id: int, role: Role, text: str) -> None:
        """Append one message and commit it; the chat's rows beyond `keep` are dropped."""

    async def turns(self, chat_id: int, n: int) -> list[str]:
        """The chat's last `n` turns, oldest first; a speaker's consecutive messages form one turn."""

    async def reset(self, chat_id: int) -> int:
        """Forget the chat's dialogue; the number of messages forgotten."""

    def chat_turn(self, chat_id: int) -> AbstractAsyncContextManager[None]:
        """Hold the chat's lock for the block: one reply at a time per chat, in order of arrival."""

    async def close(self) -> None:
        """Release the connections (or the file)."""


def check_role(role: str) -> None:
    if role not in ("user", "bot"):
        raise ValueError(f"role must be 'user' or 'bot', got {role!r}")


def merge_turns(rows: Iterable[tuple[str, str]], n: int) -> list[str]:
    """The last `n` turns of (role, text) rows given newest first; the turns oldest first."""
    turns: list[tuple[str, list[str]]] = []  # newest first, each turn's texts newest first
    for role, text in rows:
        if turns and turns[-1][0] == role:
            turns[-1][1].append(text)
        elif len(turns) == n:
            break
        else:
            turns.append((role, [text]))
    return ["\n".join(reversed(texts)) for _, texts in reversed(turns)]


class ChatLocks:
    """An asyncio lock per chat, kept while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()

    def __call__(self, chat_id: int) -> asyncio.Lock:
        lock = self._locks.get(chat_id)
        if lock is None:
            lock = self._locks[chat_id] = asyncio.Lock()
        return lock


class History:
    """Messages per chat in one SQLite file; one instance may be shared by tasks and threads."""

    def __init__(self, path: Path, keep: int = KEEP_ROWS):
        self.path, self.keep = Path(path), keep
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    @classmethod
    def in_dir(cls, folder: Path) -> History:
        """The store `history.sqlite3` in `folder` (created if missing)."""
        return cls(Path(folder) / FILENAME)

    def add(self, chat_id: int, role: Role, text: str) -> None:
        """Append one message and commit it; the chat's rows beyond `keep` are dropped."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO messages (chat_id, role, text, at) VALUES (?, ?, ?, ?)",
                (chat_id, role, text, time.time()),
            )
            self._db.execute(
                "DELETE FROM messages WHERE chat_id = ? AND id <= (SELECT id FROM messages "
                "WHERE chat_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (chat_id, chat_id, self.keep),
            )

    def turns(self, chat_id: int, n: int) -> list[str]:
        """The chat's last `n` turns, oldest first; a speaker's consecutive messages form one turn."""
        with self._lock:
            rows = self._db.execute(
                "SELECT role, text FROM messages WHERE chat_id = ? ORDER BY id DESC", (chat_id,)
            )
            return merge_turns(rows, n)

    def reset(self, chat_id: int) -> int:
        """Forget the chat's dialogue (its rows are deleted); the number of messages forgotten."""
        with self._lock, self._db:
            return self._db.execute("DELETE FROM messages WHERE chat_id = ?", (chat_id,)).rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SQLiteStore:
    """The Store over a History file: calls take well under a millisecond, so they run inline; the
    chat lock is per process (one replica only)."""

    def __init__(self, folder: Path, keep: int = KEEP_ROWS):
        self.history = History(Path(folder) / FILENAME, keep)
        self.where = f"SQLite {self.history.path}"
        self._locks = ChatLocks()

    async def start(self) -> None:
        """Nothing to connect to: the file was opened with the store."""

    async def add(self, chat_id: int, role: Role, text: str) -> None:
        check_role(role)
        self.history.add(chat_id, role, text)

    async def turns(self, chat_id: int, n: int) -> list[str]:
        return self.history.turns(chat_id, n)

    async def reset(self, chat_id: int) -> int:
        return self.history.reset(chat_id)

    @asynccontextmanager
    async def chat_turn(self, chat_id: int) -> AsyncIterator[None]:
        async with self._locks(chat_id):
            yield

    async def close(self) -> None:
        self.history.close()


def open_store(data_dir: Path, database: DatabaseSettings) -> Store:
    """PostgreSQL when the settings have a URL (BOT_DATABASE_URL), else SQLite in `data_dir`;
    `await store.start()` connects."""
    if database.url:
        from bot.history_pg import PostgresStore

        return PostgresStore(database)
    return SQLiteStore(data_dir)
