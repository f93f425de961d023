"""The dialogue history in PostgreSQL (asyncpg): one database shared by every replica of the bot.

The schema (bot/history/schema.py) is created or migrated at start through the `schema_version`
table (one transaction, under an advisory lock so that replicas starting together migrate once). A
chat's turn holds a transaction-scoped advisory lock keyed by the chat id on a connection of its
own, so one reply at a time is written per chat across all replicas. The lock goes with its
connection: at once when a replica dies (its socket closes); after BOT_CHAT_LOCK_SECONDS when it
hangs or is cut off, because the holder proves it lives by a query every third of that time and the
server ends a transaction idle for longer (idle_in_transaction_session_timeout). Messages are
written on other pooled connections and committed at once, as in SQLite. A lost connection is
retried with backoff for BOT_DATABASE_RETRY_SECONDS, then the call raises StoreUnavailable; a retry
after a commit whose acknowledgement was lost finds its work done (bot/history/store.py writes
idempotently).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bot.history.schema import POSTGRESQL, Connection, migrations
from bot.history.store import (
    DATABASE_URL,
    KEEP_ROWS,
    ChatLocks,
    DatabaseSettings,
    Store,
    StoreUnavailable,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

MIGRATIONS = migrations(POSTGRESQL)  # the schema in PostgreSQL's SQL
MIGRATION_LOCK = (0x626F74, 1)  # two-int advisory key: a key space apart from the chats' bigint keys
DATA_CONNECTIONS = 4  # per replica, for the short reads and writes
LOCK_CONNECTIONS = 24  # per replica: chats whose turn it holds or waits for at one time
# Errors after which the same call may work again: the server restarting, a network cut, a
# connection the server ended (asyncpg's InternalClientError "another operation is in progress" when
# the server's shutdown error has arrived and the closed socket not yet; the pool ends that
# connection). Anything else (bad SQL, a constraint) is raised at once.
TRANSIENT = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
REFUSED = (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError)


async def _backoff(
    call: Callable[[], Awaitable[T]],
    seconds: float,
    delay: float,
    cap: float,
    what: str,
    give_up: Callable[[BaseException], Exception],
) -> T:
    """`call()`, again after `delay` s, doubling up to `cap`, while it fails with a TRANSIENT error;
    after `seconds` the error `give_up(last error)` is raised."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await call()
        except TRANSIENT as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise give_up(exc) from exc
            log.warning("%s (%s): retrying in %.1f s", what, exc or type(exc).__name__, min(delay, left))
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, cap)


def redact(url: str) -> str:
    """The URL with its password as ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


class PostgresStore(Store):
    """The Store in PostgreSQL; `await start()` before use, `await close()` after."""

    DIALECT = POSTGRESQL

    def __init__(self, settings: DatabaseSettings, keep: int = KEEP_ROWS):
        self.settings, self.keep = settings, keep
        self.where = f"PostgreSQL {redact(settings.url)}"
        self._pool: asyncpg.Pool | None = None
        self._lock_pool: asyncpg.Pool | None = None
        self._chat_locks = ChatLocks()

    @staticmethod
    def _started(pool: asyncpg.Pool | None) -> asyncpg.Pool:
        if pool is None:
            raise RuntimeError("the PostgreSQL history is used before start() or after close()")
        return pool

    async def _open(self) -> None:
        """Connect, retrying with backoff for connect_seconds; then migrate the schema."""

        async def connect() -> None:
            try:
                await self._connect()
            except REFUSED as exc:
                raise ValueError(
                    f"{DATABASE_URL}: {self.where} refused the bot: {exc}; "
                    "fix the user, password or database name in the URL"
                ) from None

        def unreachable(exc: BaseException) -> Exception:
            return ValueError(
                f"{DATABASE_URL}: no PostgreSQL answered at {redact(self.settings.url)} "
                f"within {self.settings.connect_seconds:g} s ({exc or type(exc).__name__}); "
                "start the database or fix the URL"
            )

        await _backoff(
            connect, self.settings.connect_seconds, 0.5, 5.0, "database not reachable", unreachable
        )
        log.info("history: %s, schema v%d", self.where, await self._migrate())

    async def _connect(self) -> None:
        options = dict(
            dsn=self.settings.url,
            timeout=5.0,
            server_settings={"application_name": f"rudialogpt-bot {socket.gethostname()} {os.getpid()}"},
        )
        pool = await asyncpg.create_pool(
            min_size=1, max_size=DATA_CONNECTIONS, command_timeout=self.settings.retry_seconds, **options
        )
        try:
            self._lock_pool = await asyncpg.create_pool(min_size=1, max_size=LOCK_CONNECTIONS, **options)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def _migrate(self) -> int:
        """Apply the migrations the database lacks; the schema version it is at."""
        async with self._started(self._pool).acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", *MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, "
                "at timestamptz NOT NULL DEFAULT now())"
            )
            version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            if version > len(MIGRATIONS):
                raise ValueError(
                    f"{DATABASE_URL}: the database has history schema v{version}, newer than "
                    f"this bot's v{len(MIGRATIONS)}: run the newer bot"
                )
            for number, sql in enumerate(MIGRATIONS[version:], version + 1):
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", number)
                log.info("history schema migrated to v%d", number)
        return len(MIGRATIONS)

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, again with backoff while it fails for a lost connection, for retry_seconds."""

        def unavailable(exc: BaseException) -> Exception:
            return StoreUnavailable(
                f"{self.where} did not answer for {self.settings.retry_seconds:g} s: {exc}"
            )

        return await _backoff(
            call, self.settings.retry_seconds, 0.1, 2.0, "database call failed", unavailable
        )

    async def _run(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        async def attempt() -> T:
            async with self._started(self._pool).acquire() as conn:
                return await work(conn)

        return await self._retrying(attempt)

    async def _lock(self, chat_id: int) -> tuple[asyncpg.Connection, asyncpg.transaction.Transaction]:
        """A connection in a transaction that holds the chat's advisory lock (waits for it)."""
        conn = await self._started(self._lock_pool).acquire()
        try:
            transaction = conn.transaction()
            await transaction.start()
            bound_ms = int(self.settings.lock_seconds * 1000)
            await conn.execute(f"SET LOCAL idle_in_transaction_session_timeout = {bound_ms}")
            await conn.execute("SELECT pg_advisory_xact_lock($1)", chat_id)
            return conn, transaction
        except BaseException:
            with contextlib.suppress(asyncpg.InterfaceError):  # one lost was given back already
                conn.terminate()
            await self._started(self._lock_pool).release(conn)
            raise

    async def _keep_alive(self, conn: asyncpg.Connection, chat_id: int) -> None:
        """Query every third of the lock bound, so the server keeps the lock of a live replica."""
        try:
            while True:
                await asyncio.sleep(self.settings.lock_seconds / 3)
                await conn.execute("SELECT 1", timeout=self.settings.lock_seconds / 3)
        except (*TRANSIENT, asyncpg.PostgresError) as exc:  # e.g. ended after a freeze: idle too long
            log.warning(
                "chat %d: its lock was lost with its connection (%s)", chat_id, exc or type(exc).__name__
            )

    @asynccontextmanager
    async def chat_turn(self, chat_id: int) -> AsyncIterator[None]:
        async with self._chat_locks(chat_id):  # this replica's own messages of the chat queue here
            conn, transaction = await self._retrying(lambda: self._lock(chat_id))
            beat = asyncio.create_task(self._keep_alive(conn, chat_id))
            try:
                yield
            finally:
                beat.cancel()
                await asyncio.wait({beat})
                try:
                    await transaction.commit()  # releases the lock
                except (*TRANSIENT, asyncpg.PostgresError) as exc:  # the lock went with the connection
                    log.warning(
                        "chat %d: lock connection lost by the end of its turn (%s)",
                        chat_id,
                        exc or type(exc).__name__,
                    )
                    with contextlib.suppress(asyncpg.InterfaceError):  # one lost was given back already
                        conn.terminate()
                finally:
                    await self._started(self._lock_pool).release(conn)

    async def close(self) -> None:
        for pool in (self._lock_pool, self._pool):
            if pool is not None:
                try:
                    await asyncio.wait_for(pool.close(), 10)
                except TimeoutError:
                    pool.terminate()
        self._pool = self._lock_pool = None
