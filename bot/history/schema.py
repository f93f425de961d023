"""The history's schema, written once for both backends: the migrations to v1, v2, … as SQL with a
few dialect placeholders, filled per database by `migrations(dialect)`.

Each backend applies the same list with its own versioning: SQLite in the file's `PRAGMA
user_version` (bot/history/sqlite.py), PostgreSQL in its `schema_version` table under an advisory
lock (bot/history/postgres.py). A new migration is appended, never an old one changed: databases
in use are at v1 or v2 and move on from there.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from typing import Any, Protocol


class Connection(Protocol):
    """The calls the store makes: asyncpg's Connection, or bot/history/sqlite.py's stand-in."""

    async def execute(self, sql: str, *args: object) -> str: ...
    async def fetch(self, sql: str, *args: object) -> list[Any]: ...
    async def fetchval(self, sql: str, *args: object) -> Any: ...
    def transaction(self) -> AbstractAsyncContextManager[Any]: ...


@dataclass(frozen=True)
class Dialect:
    """What one database spells differently for the same schema (the placeholders of SCHEMA)."""

    integer: str  # a 64-bit integer: chat ids (a supergroup's needs 64 bits) and message ids
    identity: str  # the messages' row id: an integer key the database assigns in increasing order
    boolean: str  # a flag column
    true: str  # the flag's literals, as its DEFAULT
    false: str
    timestamp: str  # `at`, when a message was stored
    timestamp_default: str  # `at`'s DEFAULT clause, if the database fills it itself
    now: str  # the current time as `at` holds it (the store's inserts write it)
    ago: str  # the time `{days}` days ago, as `at` holds it (`{days}` is filled with a parameter)
    key_share: str  # a SELECT's suffix that keeps the rows it read from being deleted meanwhile
    for_update: str  # a SELECT's suffix that locks the rows it read for this transaction


SQLITE = Dialect(
    integer="INTEGER",  # SQLite's integers are 64-bit
    identity="INTEGER PRIMARY KEY AUTOINCREMENT",  # exactly INTEGER: then it is the rowid
    boolean="INTEGER",  # SQLite has no boolean type: 0 and 1
    true="1",
    false="0",
    timestamp="REAL",  # Unix time in seconds
    timestamp_default="",
    now="(julianday('now') - 2440587.5) * 86400.0",
    ago="(julianday('now') - 2440587.5 - {days}) * 86400.0",
    key_share="",  # a write transaction holds the whole file (BEGIN IMMEDIATE)
    for_update="",
)
POSTGRESQL = Dialect(
    integer="bigint",
    identity="bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    boolean="boolean",
    true="true",
    false="false",
    timestamp="timestamptz",
    timestamp_default=" DEFAULT now()",
    now="now()",
    ago="now() - make_interval(days => {days})",
    key_share=" FOR KEY SHARE",
    for_update=" FOR UPDATE",
)

# v1 says IF NOT EXISTS because a SQLite file of the first bots has its tables at user_version 0;
# in PostgreSQL, where schema_version says v1 was applied, it changes nothing. SQLite's ALTER TABLE
# adds one column per statement, so v2 adds its two columns in two statements for both.
SCHEMA: tuple[str, ...] = (
    # v1: the messages
    """CREATE TABLE IF NOT EXISTS messages (
        id {identity},
        chat_id {integer} NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('user', 'bot')),
        text TEXT NOT NULL,
        at {timestamp} NOT NULL{timestamp_default}
    );
    CREATE INDEX IF NOT EXISTS messages_by_chat ON messages (chat_id, id)""",
    # v2: each message once, by Telegram's (chat id, message id); replies sent or not; the inbox
    """ALTER TABLE messages ADD COLUMN message_id {integer};
    ALTER TABLE messages ADD COLUMN sent {boolean} NOT NULL DEFAULT {true};
    CREATE UNIQUE INDEX messages_once ON messages (chat_id, message_id, role);
    CREATE INDEX messages_unsent ON messages (chat_id) WHERE NOT sent;
    CREATE TABLE inbox (
        chat_id {integer} NOT NULL,
        message_id {integer} NOT NULL,
        answered {boolean} NOT NULL DEFAULT {false},
        PRIMARY KEY (chat_id, message_id)
    );
    CREATE INDEX inbox_unanswered ON inbox (chat_id) WHERE NOT answered""",
)

# v3: feedback (bot/history/feedback.py). `replies`: each model reply sent or being sent, by the
# user's message it answers, with what made it (the prompt's turns and the sampling settings as
# JSON, the model version); `bot_message_id` is the first Telegram message it was sent as, and
# `reply_messages` maps every message it was sent as (a long reply is split) to it, so a reaction
# on any part counts for the reply. `votes`: one per (reply, user), +1 or -1. `consent`: a chat's
# own choice on /share (none: the bot's default). `bot_settings`: what training must know of the
# bot's settings (the share default). Votes and message ids go with their reply (ON DELETE CASCADE;
# the SQLite store turns foreign keys on).
FEEDBACK = """CREATE TABLE replies (
        id {identity},
        chat_id {integer} NOT NULL,
        message_id {integer} NOT NULL,
        bot_message_id {integer},
        prompt TEXT NOT NULL,
        text TEXT NOT NULL,
        model_version TEXT,
        sampling TEXT NOT NULL,
        at {timestamp} NOT NULL{timestamp_default}
    );
    CREATE UNIQUE INDEX replies_once ON replies (chat_id, message_id);
    CREATE INDEX replies_by_time ON replies (at);
    CREATE TABLE reply_messages (
        chat_id {integer} NOT NULL,
        message_id {integer} NOT NULL,
        reply_id {integer} NOT NULL REFERENCES replies (id) ON DELETE CASCADE,
        PRIMARY KEY (chat_id, message_id)
    );
    CREATE INDEX reply_messages_by_reply ON reply_messages (reply_id);
    CREATE TABLE votes (
        reply_id {integer} NOT NULL REFERENCES replies (id) ON DELETE CASCADE,
        user_id {integer} NOT NULL,
        vote {integer} NOT NULL CHECK (vote IN (-1, 1)),
        at {timestamp} NOT NULL{timestamp_default},
        PRIMARY KEY (reply_id, user_id)
    );
    CREATE TABLE consent (
        chat_id {integer} PRIMARY KEY,
        shared {boolean} NOT NULL,
        user_id {integer},
        at {timestamp} NOT NULL{timestamp_default}
    );
    CREATE TABLE bot_settings (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        at {timestamp} NOT NULL{timestamp_default}
    )"""
SCHEMA += (FEEDBACK,)
FEEDBACK_VERSION = SCHEMA.index(FEEDBACK) + 1  # the first schema version with replies and votes


def migrations(dialect: Dialect) -> tuple[str, ...]:
    """SCHEMA in `dialect`: the SQL of each migration, v1 first (statements separated by `;`)."""
    return tuple(sql.format_map(asdict(dialect)) for sql in SCHEMA)
