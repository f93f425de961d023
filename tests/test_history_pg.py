"""bot/history/postgres.py: its schema, created once and migrated from v1 without loss; its faults
through the bot: a database that is unreachable, late at start, refuses the password, goes away
while the bot runs, or loses a commit's acknowledgement (the real PostgreSQL of the session). The
store's behaviour on both backends: test_history.py."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from pathlib import Path

import asyncpg
import pytest

from bot.history.postgres import MIGRATIONS, PostgresStore
from bot.history.store import DatabaseSettings
from bot.metrics import Metrics
from bot.settings import Settings
from bot.telegram import build_application
from bot.texts import SORRY, UNAVAILABLE
from serve.server import free_port
from tests.fake_telegram import FakeTelegram
from tests.helpers import ROOT
from tests.pg_proxy import CommitCutter
from tests.telegram_harness import (
    LOCK_SECONDS,
    Replica,
    bot_env,
    chatbot,
    generated,
    python_m_bot,
    run_bot,
    say,
    wait,
)

FIRST_CHAT = 6000
# Bounds setup too: the first test may train, export and start the session's Triton (~1-2 min).
pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("no_leaked_threads")]


V1_ROWS = [("user", "Привет"), ("bot", "Привет!"), ("user", "Что делаешь?")]


def settings(url: str) -> DatabaseSettings:
    return DatabaseSettings(url, connect_seconds=5, retry_seconds=2, lock_seconds=3)


def pg_settings(tg: FakeTelegram, tmp_path: Path, url: str, retry_seconds: float) -> Settings:
    """The bot's settings for `tg` with the history in PostgreSQL at `url`."""
    return Settings(
        token=tg.token,
        base_url=tg.url,
        data_dir=tmp_path / "data",
        metrics_port=0,
        database_url=url,
        connect_seconds=10,
        retry_seconds=retry_seconds,
        lock_seconds=LOCK_SECONDS,
    )


# -- the schema ----------------------------------------------------------------------------------


def test_schema_is_created_once_and_versioned(database_url):
    async def main() -> list[int]:
        stores = [PostgresStore(settings(database_url)) for _ in range(3)]
        await asyncio.gather(*(s.start() for s in stores))  # three replicas starting at once
        for s in stores:
            await s.close()
        conn = await asyncpg.connect(database_url)
        try:
            return [
                r["version"] for r in await conn.fetch("SELECT version FROM schema_version ORDER BY version")
            ]
        finally:
            await conn.close()

    assert asyncio.run(main()) == list(range(1, len(MIGRATIONS) + 1))


def test_a_database_of_the_previous_version_is_migrated_without_loss(database_url):
    """The v1 schema and rows as the v1 bot wrote them; two replicas of this bot start on it at once."""

    async def main() -> tuple[list, list, list[int]]:
        conn = await asyncpg.connect(database_url)
        try:
            async with conn.transaction():  # v1's migration
                await conn.execute(
                    "CREATE TABLE schema_version (version integer PRIMARY KEY, "
                    "at timestamptz NOT NULL DEFAULT now())"
                )
                await conn.execute(MIGRATIONS[0])
                await conn.execute("INSERT INTO schema_version (version) VALUES (1)")
            for role, text in V1_ROWS:  # v1's add
                await conn.execute(
                    "INSERT INTO messages (chat_id, role, text) VALUES ($1, $2, $3)", FIRST_CHAT, role, text
                )
            query = "SELECT id, chat_id, role, text, at FROM messages ORDER BY id"
            before = await conn.fetch(query)
            stores = [PostgresStore(settings(database_url)) for _ in range(2)]
            await asyncio.gather(*(s.start() for s in stores))
            try:
                assert await stores[0].turns(FIRST_CHAT, 10) == [text for _, text in V1_ROWS]
                for store in stores:
                    await store.add(FIRST_CHAT, "user", "Новое", 9)
                assert await stores[1].turns(FIRST_CHAT, 1) == ["Что делаешь?\nНовое"]
            finally:
                for store in stores:
                    await store.close()
            versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_version")]
            return before, await conn.fetch(query), versions
        finally:
            await conn.close()

    before, after, versions = asyncio.run(main())
    assert after[: len(before)] == before and len(after) == len(before) + 1  # ids and times kept
    assert sorted(versions) == list(range(1, len(MIGRATIONS) + 1))


def test_a_newer_schema_is_refused(database_url):
    async def main() -> None:
        store = PostgresStore(settings(database_url))
        await store.start()
        await store.close()
        conn = await asyncpg.connect(database_url)
        await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", len(MIGRATIONS) + 1)
        await conn.close()
        with pytest.raises(ValueError, match=rf"BOT_DATABASE_URL: .*schema v{len(MIGRATIONS) + 1}, newer"):
            await PostgresStore(settings(database_url)).start()

    asyncio.run(main())


# -- faults through the bot ---------------------------------------------------------------------


def run_bot_process(tg: FakeTelegram, model_repository: Path, tmp_path: Path, url: str, **env: str):
    return subprocess.run(
        python_m_bot(model_repository),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=bot_env(tg, tmp_path, BOT_DATABASE_URL=url, **env),
    )


def test_unreachable_database_is_retried_then_named(tg, model_repository, tmp_path):
    port = free_port()  # nothing listens there
    start = time.monotonic()
    result = run_bot_process(
        tg,
        model_repository,
        tmp_path,
        f"postgresql://bot:s3cret-pw@127.0.0.1:{port}/bot",
        BOT_DATABASE_CONNECT_SECONDS="3",
    )
    took = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    assert (
        f"error: BOT_DATABASE_URL: no PostgreSQL answered at postgresql://bot:***@127.0.0.1:{port}/bot "
        "within 3 s"
    ) in result.stderr
    assert result.stderr.count("database not reachable") >= 2  # retried, with backoff
    assert "s3cret-pw" not in result.stdout + result.stderr
    assert 3 <= took < 60


def test_database_late_at_start_is_waited_for(tg, triton, model_repository, postgres, database_url, tmp_path):
    postgres.stop()
    try:
        replica = Replica(
            tg,
            triton,
            model_repository,
            database_url,
            tmp_path / "bot.log",
            BOT_DATABASE_CONNECT_SECONDS="60",
        )
        asyncio.run(
            wait(
                lambda: asyncio.sleep(
                    0,
                    "database not reachable" in replica.log.read_text() or replica.process.poll() is not None,
                ),
                timeout=120,
            )
        )
        time.sleep(2)  # a few more tries
    finally:
        postgres.start()
    try:
        tg.message(FIRST_CHAT, "Привет!")
        asyncio.run(
            tg.wait_for(lambda: tg.texts(FIRST_CHAT) or replica.process.poll() is not None, timeout=90)
        )
    finally:
        code = replica.stop()
    log = replica.log.read_text()
    assert code == 0 and generated(tg.texts(FIRST_CHAT)[0]), log
    assert log.count("database not reachable") >= 2 and "history: PostgreSQL" in log


def test_wrong_password_is_refused_at_once(tg, model_repository, tmp_path, postgres):
    result = run_bot_process(tg, model_repository, tmp_path, postgres.url(password="wrong-pw"))
    assert result.returncode == 2, result.stderr
    assert "error: BOT_DATABASE_URL: PostgreSQL postgresql://bot:***@" in result.stderr
    assert 'password authentication failed for user "bot"' in result.stderr
    assert "database not reachable" not in result.stderr  # not retried: it would not get better
    assert "wrong-pw" not in result.stdout + result.stderr


def test_database_going_away_while_running(tg, triton, tokenizer, postgres, database_url, tmp_path):
    """Down longer than the retry window: the user is told, the bot reconnects when it is back.
    Down shorter: the message waits and is answered; nothing stored is lost either way."""
    settings = pg_settings(tg, tmp_path, database_url, retry_seconds=3)
    metrics, bot = Metrics(), chatbot(triton.url, tokenizer)

    async def body(dialogues):
        await say(tg, FIRST_CHAT, "Привет!")
        await asyncio.to_thread(postgres.stop)
        try:
            await say(tg, FIRST_CHAT, "Ты тут?")  # answered after the retries
        finally:
            await asyncio.to_thread(postgres.start)
        await say(tg, FIRST_CHAT, "А теперь?")
        await asyncio.to_thread(postgres.stop)
        expected = len(tg.texts(FIRST_CHAT)) + 1
        tg.message(FIRST_CHAT, "Ещё раз")
        await asyncio.sleep(1)  # the bot is retrying meanwhile
        await asyncio.to_thread(postgres.start)
        await tg.wait_for(lambda: len(tg.texts(FIRST_CHAT)) >= expected)

        async def reply_stored() -> bool:  # stored just after it is sent
            return (await dialogues.history.turns(FIRST_CHAT, 1)) == tg.texts(FIRST_CHAT)[-1:]

        await wait(reply_stored, timeout=10)
        return await dialogues.history.turns(FIRST_CHAT, 100)

    try:
        turns = run_bot(build_application(bot, settings, metrics), body)
    finally:
        postgres.start()  # a no-op when it runs
    texts = tg.texts(FIRST_CHAT)
    assert len(texts) == 4 and texts[1] == UNAVAILABLE and SORRY not in texts
    assert generated(texts[0]) and generated(texts[2]) and generated(texts[3])
    assert turns == ["Привет!", texts[0], "А теперь?", texts[2], "Ещё раз", texts[3]]
    assert metrics.registry.get_sample_value("bot_errors_total", {"kind": "database"}) == 1
    assert metrics.registry.get_sample_value("bot_errors_total", {"kind": "unexpected"}) == 0


# A text message's turn commits, in order: its message, the reply, the reply's Telegram message ids
# (attach, for the votes), the reply marked sent, the lock.
TURN_COMMITS = {
    "message": "database call failed",
    "reply": "database call failed",
    "attached": "database call failed",
    "sent": "database call failed",
}
TURN_COMMITS["lock"] = "lock connection lost by the end of its turn"


@pytest.mark.parametrize("lost", TURN_COMMITS)
def test_a_lost_commit_acknowledgement_still_answers_once(
    tg, triton, tokenizer, postgres, database_url, tmp_path, caplog, lost
):
    """The server commits and the connection drops before the bot sees it (a proxy cuts it after
    the server's answer): the bot retries, finds its work done, and answers each message once."""
    caplog.set_level(logging.WARNING)
    with CommitCutter(postgres.port) as proxy:
        settings = pg_settings(tg, tmp_path, proxy.url(database_url), retry_seconds=10)

        async def body(dialogues):
            proxy.lose(list(TURN_COMMITS).index(lost) + 1)
            await say(tg, FIRST_CHAT, "Привет!")
            await say(tg, FIRST_CHAT, "Как дела?")
            await wait(lambda: dialogues.history.is_answered(FIRST_CHAT, tg.message_ids(FIRST_CHAT)[-1]))
            return await dialogues.history.turns(FIRST_CHAT, 100), await dialogues.history.unsent(FIRST_CHAT)

        turns, unsent = run_bot(build_application(chatbot(triton.url, tokenizer), settings), body)
    texts = tg.texts(FIRST_CHAT)
    assert proxy.cut == 1 and TURN_COMMITS[lost] in caplog.text  # lost, and the bot noticed
    assert len(texts) == 2 and all(generated(t) for t in texts) and unsent == []
    assert turns == ["Привет!", texts[0], "Как дела?", texts[1]]
