"""The Telegram bot's dialogue history: the store's logic, once for both backends, and `open_store`.

SQLite (bot/history/sqlite.py, a file in BOT_DATA_DIR) is the embedded default; with
BOT_DATABASE_URL set the history lives in PostgreSQL (bot/history/postgres.py), shared by every replica
of the bot. Both run the statements below (asyncpg's `$n` parameters; the SQLite connection takes
them too) and differ only in how they connect, migrate, retry and lock.

Each incoming message is known by Telegram's (chat id, message id): the `inbox` table has one row
per message and says whether it was answered, so a message delivered again (a lost getUpdates
confirmation, a webhook retry, the same update at two replicas) is acknowledged and not answered
twice. The dialogue is in `messages`: the user's message under its id, the bot's reply under the
id of the message it answers, stored before it is sent and marked sent when Telegram took it (the
same transaction marks the message answered). Every write is one transaction, and doing it again
(a retry after a lost commit acknowledgement) changes nothing. `reset` deletes the chat's
dialogue: a forgotten dialogue is gone, not hidden; the inbox keeps only the bare ids. Consecutive
messages of one speaker (the user wrote again after a failed reply) come back as one turn, so the
prompt keeps alternating speakers. `chat_turn` is the per-chat lock: one message at a time per
chat (cluster-wide in PostgreSQL, per process in SQLite). The replies as votes name them, the votes,
each chat's consent and `/forget` are the Store's other half: bot/history/feedback.py.
"""

from __future__ import annotations

import abc
import asyncio
import weakref
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from bot.history.feedback import Feedback
from bot.history.schema import Connection

Role = Literal["user", "bot"]
T = TypeVar("T")
FILENAME = "history.sqlite3"
KEEP_ROWS = 200  # per chat, in messages and in the inbox: older rows are deleted as new ones come
DATABASE_URL = "BOT_DATABASE_URL"  # the variable that switches the history to PostgreSQL


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


@dataclass(frozen=True)
class Unsent:
    """A reply stored but not known to have reached Telegram (its sender died or lost the call)."""

    row: int
    message_id: int  # the message it answers
    text: str
    reply: int | None = None  # its id for votes (record_reply), None where it was stored by `add`


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


PRUNE = (
    "DELETE FROM {table} WHERE chat_id = $1 AND {key} <= "
    "(SELECT {key} FROM {table} WHERE chat_id = $1 ORDER BY {key} DESC LIMIT 1 OFFSET $2)"
)


class Store(Feedback):
    """The history; every method may raise StoreUnavailable. A backend connects, migrates, runs a
    call on a connection (`_run`) and locks a chat; the statements are the same for both (in its
    DIALECT where they differ)."""

    where: str  # for the start-up log line: the file, or the database URL without its password
    keep: int = KEEP_ROWS

    async def start(self) -> None:
        """Connect (retrying within the settings' window), create or migrate the schema; record
        the share default for training and delete the replies past their time."""
        await self._open()
        await self._publish_settings()

    @abc.abstractmethod
    async def _open(self) -> None:
        """Connect (retrying within the settings' window) and create or migrate the schema."""

    @abc.abstractmethod
    def chat_turn(self, chat_id: int) -> AbstractAsyncContextManager[None]:
        """Hold the chat's lock for the block: one message at a time per chat, in order of arrival."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connections (or the file)."""

    async def add(self, chat_id: int, role: Role, text: str, message_id: int | None = None) -> int:
        """Store a message and commit it; its row id. With `message_id` (Telegram's: the user's
        message, or the one a reply answers) it is stored once: adding it again gives the same row.
        Such a user's message enters the inbox unanswered; such a reply is stored unsent, until
        `mark_answered` marks it. The chat's rows beyond `keep` are dropped."""
        check_role(role)

        async def insert(conn: Connection) -> int:
            async with conn.transaction():
                if role == "user" and message_id is not None:
                    await conn.execute(
                        "INSERT INTO inbox (chat_id, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        chat_id,
                        message_id,
                    )
                return await self._insert(conn, chat_id, role, text, message_id)

        return await self._run(insert)

    async def _insert(
        self, conn: Connection, chat_id: int, role: str, text: str, message_id: int | None
    ) -> int:
        row: int = await conn.fetchval(
            "INSERT INTO messages (chat_id, role, text, message_id, sent, at) "
            f"VALUES ($1, $2, $3, $4, $5, {self.DIALECT.now}) ON CONFLICT (chat_id, message_id, role) "
            "DO UPDATE SET text = excluded.text RETURNING id",
            chat_id,
            role,
            text,
            message_id,
            role == "user" or message_id is None,
        )
        await conn.execute(PRUNE.format(table="messages", key="id"), chat_id, self.keep)
        return row

    async def turns(self, chat_id: int, n: int) -> list[str]:
        """The chat's last `n` turns, oldest first; a speaker's consecutive messages form one turn."""
        rows = await self._run(
            lambda conn: conn.fetch(
                "SELECT role, text FROM messages WHERE chat_id = $1 ORDER BY id DESC", chat_id
            )
        )
        return merge_turns(((row["role"], row["text"]) for row in rows), n)

    async def reset(self, chat_id: int) -> int:
        """Forget the chat's dialogue (its rows are deleted); the number of messages forgotten."""
        status = await self._run(
            lambda conn: conn.execute("DELETE FROM messages WHERE chat_id = $1", chat_id)
        )
        return int(status.split()[-1])

    async def is_answered(self, chat_id: int, message_id: int) -> bool:
        """Whether the message was answered already (it is being delivered again). One older than
        every id the chat's inbox keeps, once the inbox is full (pruned to `keep`), was answered
        long ago."""
        answered = await self._run(
            lambda conn: conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM inbox WHERE chat_id = $1 AND message_id = $2 AND answered) "
                "OR $2 < (SELECT min(message_id) FROM inbox WHERE chat_id = $1 HAVING count(*) >= $3)",
                chat_id,
                message_id,
                self.keep,
            )
        )
        return bool(answered)

    async def skip(self, chat_id: int, message_ids: Iterable[int]) -> None:
        """Record messages as answered without storing them or a reply, in one transaction (a
        flood's overflow, bot/waiting.py): delivered again, they are not answered. The inbox is
        pruned by the chat's next `mark_answered`."""

        async def mark(conn: Connection) -> None:
            async with conn.transaction():
                for message_id in message_ids:
                    await conn.execute(
                        "INSERT INTO inbox (chat_id, message_id, answered) VALUES ($1, $2, TRUE) "
                        "ON CONFLICT (chat_id, message_id) DO UPDATE SET answered = TRUE",
                        chat_id,
                        message_id,
                    )

        await self._run(mark)

    async def mark_answered(
        self, chat_id: int, message_id: int, reply: int | None = None, turn: bool = True
    ) -> None:
        """Record, in one transaction, that the message was answered: by the stored reply `reply`
        (now sent), or by a fixed text; with `turn`, so were the chat's earlier unanswered messages
        (they were merged into this turn, or forgotten by /reset)."""

        async def mark(conn: Connection) -> None:
            async with conn.transaction():
                if reply is not None:
                    await conn.execute("UPDATE messages SET sent = TRUE WHERE id = $1", reply)
                await conn.execute(
                    "INSERT INTO inbox (chat_id, message_id, answered) VALUES ($1, $2, TRUE) "
                    "ON CONFLICT (chat_id, message_id) DO UPDATE SET answered = TRUE",
                    chat_id,
                    message_id,
                )
                if turn:
                    await conn.execute(
                        "UPDATE inbox SET answered = TRUE "
                        "WHERE chat_id = $1 AND message_id < $2 AND NOT answered",
                        chat_id,
                        message_id,
                    )
                await conn.execute(PRUNE.format(table="inbox", key="message_id"), chat_id, self.keep)

        await self._run(mark)

    async def unsent(self, chat_id: int) -> list[Unsent]:
        """The chat's replies stored but not marked sent, oldest first."""
        rows = await self._run(
            lambda conn: conn.fetch(
                "SELECT m.id, m.message_id, m.text, r.id AS reply FROM messages m LEFT JOIN replies r "
                "ON r.chat_id = m.chat_id AND r.message_id = m.message_id "
                "WHERE m.chat_id = $1 AND NOT m.sent ORDER BY m.id",
                chat_id,
            )
        )
        return [Unsent(row["id"], row["message_id"], row["text"], row["reply"]) for row in rows]

    async def forget(self, chat_id: int, row: int) -> None:
        """Delete an unsent reply (Telegram refused it: the user never saw it), and its record for
        votes (record_reply) unless it was sent before."""

        async def delete(conn: Connection) -> None:
            async with conn.transaction():
                await conn.execute(
                    "DELETE FROM replies WHERE chat_id = $2 AND bot_message_id IS NULL AND message_id = "
                    "(SELECT message_id FROM messages WHERE id = $1 AND chat_id = $2 AND NOT sent)",
                    row,
                    chat_id,
                )
                await conn.execute(
                    "DELETE FROM messages WHERE id = $1 AND chat_id = $2 AND NOT sent", row, chat_id
                )

        await self._run(delete)

    async def unanswered(self) -> list[tuple[int, int]]:
        """(chat id, its newest unanswered message id) for every chat with a message stored and not
        answered: its handling died with its process, or is under way on another replica."""
        rows = await self._run(
            lambda conn: conn.fetch(
                "SELECT chat_id, max(message_id) AS message_id FROM inbox WHERE NOT answered "
                "GROUP BY chat_id ORDER BY chat_id"
            )
        )
        return [(row["chat_id"], row["message_id"]) for row in rows]
