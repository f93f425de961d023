"""bot/history/store.py: the same store tests against SQLite and a real PostgreSQL; PostgreSQL's chat lock.
Each backend's own schema and migrations: test_history_sqlite.py, test_history_pg.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from bot.history import open_store
from bot.history.postgres import PostgresStore, redact
from bot.history.sqlite import SQLiteStore
from bot.history.store import FILENAME, DatabaseSettings, Store, Unsent

CHAT, OTHER = 42, -1001234567890  # a supergroup id needs 64 bits
Body = Callable[[Store], Awaitable[None]]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path) -> tuple[Path, DatabaseSettings]:
    """open_store's arguments for each backend; PostgreSQL gets a fresh database."""
    url = request.getfixturevalue("database_url") if request.param == "postgresql" else ""
    return tmp_path / "data", DatabaseSettings(url, connect_seconds=5, retry_seconds=2, lock_seconds=3)


@asynccontextmanager
async def opened(backend: tuple[Path, DatabaseSettings], keep: int | None = None) -> AsyncIterator[Store]:
    if keep is None:
        store = open_store(*backend)
    else:
        store = PostgresStore(backend[1], keep) if backend[1].url else SQLiteStore(backend[0], keep)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


def run(backend, body: Body, keep: int | None = None) -> None:
    async def main() -> None:
        async with opened(backend, keep) as store:
            await body(store)

    asyncio.run(main())


async def fill(store: Store, messages: list[tuple[str, str]], chat: int = CHAT) -> None:
    for role, text in messages:
        await store.add(chat, role, text)


DIALOGUE = [
    ("user", "Привет"),
    ("bot", "Привет!"),
    ("user", "Как дела?"),
    ("bot", "Хорошо."),
    ("user", "Что делаешь?"),
]


def test_open_store_picks_the_backend(backend):
    async def body(store: Store) -> None:
        url = backend[1].url
        if url:
            assert isinstance(store, PostgresStore) and store.where == f"PostgreSQL {redact(url)}"
            assert url.split(":")[2].split("@")[0] not in store.where  # the password
        else:
            assert isinstance(store, SQLiteStore) and store.where == f"SQLite {backend[0] / FILENAME}"

    run(backend, body)


@pytest.mark.parametrize(
    "n, expected",
    [
        (0, []),
        (1, ["Что делаешь?"]),
        (3, ["Как дела?", "Хорошо.", "Что делаешь?"]),
        (5, [text for _, text in DIALOGUE]),
        (50, [text for _, text in DIALOGUE]),
    ],
)
def test_last_n_turns_oldest_first(backend, n, expected):
    async def body(store: Store) -> None:
        await fill(store, DIALOGUE)
        assert await store.turns(CHAT, n) == expected

    run(backend, body)


@pytest.mark.parametrize(
    "messages, expected",
    [
        ([("user", "а"), ("user", "б")], ["а\nб"]),  # the model failed after "а": one user turn
        ([("user", "x"), ("bot", "y"), ("user", "а"), ("user", "б"), ("user", "в")], ["x", "y", "а\nб\nв"]),
        ([("bot", "y"), ("user", "а"), ("user", "б")], ["y", "а\nб"]),
        (
            [("user", "1"), ("bot", "2"), ("user", "3"), ("user", "4"), ("bot", "5"), ("user", "6")],
            ["3\n4", "5", "6"],
        ),
    ],
    ids=["two", "three-after-a-reply", "after-bot", "merged-counts-once"],
)
def test_consecutive_messages_of_one_speaker_are_one_turn(backend, messages, expected):
    async def body(store: Store) -> None:
        await fill(store, messages)
        assert await store.turns(CHAT, 3) == expected

    run(backend, body)


TEXTS = [
    "Привет 👋🏽 как дела? 🇷🇺",
    "emoji only 😀😃😄",
    "tab\tand\nnewline",
    "'; DROP TABLE messages; --",
    "x" * 10_000,
    "中文 עברית العربية",
    "$1 %s ? :name",
]


def test_text_comes_back_unchanged(backend):
    async def body(store: Store) -> None:
        for chat, text in enumerate(TEXTS):
            await store.add(chat, "user", text)
        assert [await store.turns(chat, 3) for chat in range(len(TEXTS))] == [[t] for t in TEXTS]

    run(backend, body)


def test_reset_forgets_only_that_chat(backend):
    async def body(store: Store) -> None:
        await fill(store, DIALOGUE)
        await fill(store, [("user", "чужой"), ("bot", "разговор")], chat=OTHER)
        assert await store.reset(CHAT) == len(DIALOGUE)
        assert await store.turns(CHAT, 3) == []
        assert await store.turns(OTHER, 3) == ["чужой", "разговор"]
        await store.add(CHAT, "user", "Начнём сначала")
        assert await store.turns(CHAT, 3) == ["Начнём сначала"]
        assert await store.reset(12345) == 0  # an unknown chat is fine

    run(backend, body)


def test_history_survives_reopening(backend):
    async def write(store: Store) -> None:
        await fill(store, DIALOGUE)

    async def read(store: Store) -> None:
        assert await store.turns(CHAT, 3) == ["Как дела?", "Хорошо.", "Что делаешь?"]

    run(backend, write)
    run(backend, read)


def test_old_rows_are_pruned_per_chat(backend):
    async def body(store: Store) -> None:
        for i in range(10):
            await store.add(CHAT, "user" if i % 2 == 0 else "bot", str(i))
        await store.add(OTHER, "user", "x")
        assert await store.turns(CHAT, 100) == ["6", "7", "8", "9"]
        assert await store.turns(OTHER, 100) == ["x"]

    run(backend, body, keep=4)


def test_unknown_role_is_refused(backend):
    async def body(store: Store) -> None:
        with pytest.raises(ValueError, match="role must be 'user' or 'bot'"):
            await store.add(CHAT, "system", "x")  # type: ignore[arg-type]
        assert await store.turns(CHAT, 3) == []

    run(backend, body)


def test_concurrent_tasks_of_many_chats(backend):
    async def writer(store: Store, chat: int) -> None:
        for i in range(30):
            await store.add(chat, "user" if i % 2 == 0 else "bot", f"{chat}-{i}")

    async def body(store: Store) -> None:
        await asyncio.gather(*(writer(store, chat) for chat in range(8)))
        for chat in range(8):
            assert await store.turns(chat, 30) == [f"{chat}-{i}" for i in range(30)]

    run(backend, body)


async def turn(
    store: Store, chat: int, name: str, hold: float, log: list[str], until: asyncio.Event | None = None
) -> None:
    """Hold the chat's turn for `hold` seconds (and `until` is set); log when it was entered and left."""
    async with store.chat_turn(chat):
        log.append(f"{name} in")
        await asyncio.sleep(hold)
        if until:
            await until.wait()
        log.append(f"{name} out")


async def entered(log: list[str], name: str) -> None:
    """Wait until `name` holds its turn (taking PostgreSQL's lock may take long on a busy machine)."""
    while f"{name} in" not in log:
        await asyncio.sleep(0.01)


def test_chat_turn_lets_one_task_in_per_chat(backend):
    """Turns of one chat run one after another, in order of arrival; other chats don't wait."""

    async def body(store: Store) -> None:
        log: list[str] = []
        other_done = asyncio.Event()

        async def other_chat() -> None:
            await turn(store, OTHER, "c", 0, log)
            other_done.set()

        first = asyncio.create_task(turn(store, CHAT, "a", 0, log, until=other_done))
        await entered(log, "a")
        await asyncio.gather(first, turn(store, CHAT, "b", 0, log), other_chat())
        assert log == ["a in", "c in", "c out", "a out", "b in", "b out"]

    run(backend, body)


# -- each message once, by Telegram's (chat id, message id) --------------------------------------


def test_a_message_and_its_reply_are_stored_once_by_id(backend):
    """Adding again (a retry after a lost commit acknowledgement, a redelivery) changes nothing."""

    async def body(store: Store) -> None:
        first = await store.add(CHAT, "user", "Привет", 7)
        assert await store.add(CHAT, "user", "Привет", 7) == first
        assert not await store.is_answered(CHAT, 7) and await store.unanswered() == [(CHAT, 7)]
        reply = await store.add(CHAT, "bot", "Привет!", 7)
        assert await store.add(CHAT, "bot", "Привет!", 7) == reply != first
        assert await store.unsent(CHAT) == [Unsent(reply, 7, "Привет!")]  # stored before it is sent
        for _ in range(2):
            await store.mark_answered(CHAT, 7, reply=reply)
        assert await store.is_answered(CHAT, 7) and await store.unanswered() == []
        assert await store.unsent(CHAT) == [] and await store.turns(CHAT, 10) == ["Привет", "Привет!"]
        assert not await store.is_answered(OTHER, 7)  # the id is Telegram's per chat

    run(backend, body)


def test_an_answer_covers_its_turn_a_command_only_itself(backend):
    async def body(store: Store) -> None:
        await store.add(CHAT, "user", "а", 1)  # its handling died: merged into the next turn
        await store.add(CHAT, "user", "б", 2)
        await store.mark_answered(CHAT, 2, reply=await store.add(CHAT, "bot", "ответ", 2))
        assert await store.is_answered(CHAT, 1) and await store.is_answered(CHAT, 2)
        await store.add(CHAT, "user", "в", 3)
        await store.mark_answered(CHAT, 4, turn=False)  # /help, answered while "в" waits
        assert await store.is_answered(CHAT, 4) and not await store.is_answered(CHAT, 3)
        assert await store.unanswered() == [(CHAT, 3)] and await store.turns(CHAT, 3) == [
            "а\nб",
            "ответ",
            "в",
        ]

    run(backend, body)


def test_a_refused_reply_is_forgotten_a_sent_one_is_kept(backend):
    async def body(store: Store) -> None:
        await store.add(CHAT, "user", "а", 1)
        refused = await store.add(CHAT, "bot", "не дошло", 1)
        await store.forget(CHAT, refused)
        assert await store.turns(CHAT, 3) == ["а"] and await store.unsent(CHAT) == []
        sent = await store.add(CHAT, "bot", "дошло", 1)
        await store.mark_answered(CHAT, 1, reply=sent)
        await store.forget(CHAT, sent)  # only an unsent reply can be forgotten
        assert await store.turns(CHAT, 3) == ["а", "дошло"]

    run(backend, body)


def test_reset_forgets_the_dialogue_not_which_messages_were_answered(backend):
    async def body(store: Store) -> None:
        await store.add(CHAT, "user", "а", 1)
        await store.mark_answered(CHAT, 1, reply=await store.add(CHAT, "bot", "б", 1))
        assert await store.reset(CHAT) == 2 and await store.turns(CHAT, 3) == []
        assert await store.is_answered(CHAT, 1)  # delivered again after /reset: still not answered twice

    run(backend, body)


def test_the_inbox_is_pruned_per_chat(backend):
    """A chat's inbox keeps its newest `keep` ids; an id older than those (pruned) counts as
    answered long ago, so a late redelivery is not answered again; another chat's inbox is its own."""

    async def body(store: Store) -> None:
        for i in range(3, 11):
            await store.mark_answered(CHAT, i, turn=False)
        await store.mark_answered(OTHER, 1, turn=False)
        rows = await store._run(
            lambda conn: conn.fetch("SELECT message_id FROM inbox WHERE chat_id = $1", CHAT)
        )
        assert sorted(r["message_id"] for r in rows) == [7, 8, 9, 10]  # pruned to the newest 4
        assert [await store.is_answered(CHAT, i) for i in range(1, 13)] == [True] * 10 + [False] * 2
        assert await store.is_answered(OTHER, 1) and not await store.is_answered(OTHER, 2)

    run(backend, body, keep=4)


# -- PostgreSQL only: the lock's bound ----------------------------------------------------------


def settings(url: str, **kw: float) -> DatabaseSettings:
    return DatabaseSettings(url, **{"connect_seconds": 5, "retry_seconds": 2, "lock_seconds": 3, **kw})


def test_the_lock_of_a_hung_holder_goes_after_the_bound(database_url):
    """A holder that stops talking (a frozen replica) loses the chat's lock after lock_seconds."""

    async def main() -> float:
        waiter = PostgresStore(settings(database_url, lock_seconds=2))
        await waiter.start()
        hung = await asyncpg.connect(database_url)  # what a frozen replica's lock connection looks like
        try:
            await hung.execute(
                "BEGIN; SET LOCAL idle_in_transaction_session_timeout = 2000; "
                f"SELECT pg_advisory_xact_lock({CHAT})"
            )
            start = asyncio.get_running_loop().time()
            async with waiter.chat_turn(CHAT):
                return asyncio.get_running_loop().time() - start
        finally:
            hung.terminate()
            await waiter.close()

    waited = asyncio.run(main())
    assert 1.5 < waited < 10


def test_a_live_holder_keeps_its_lock_past_the_bound(database_url):
    """The holder's keep-alive queries: a reply longer than lock_seconds keeps the chat's lock."""

    async def main() -> list[str]:
        a, b = PostgresStore(settings(database_url, lock_seconds=1)), PostgresStore(settings(database_url))
        await a.start()
        await b.start()
        log: list[str] = []
        try:
            first = asyncio.create_task(turn(a, CHAT, "a", 3.0, log))  # three bounds long
            await entered(log, "a")
            await asyncio.gather(first, turn(b, CHAT, "b", 0, log))
        finally:
            await a.close()
            await b.close()
        return log

    assert asyncio.run(main()) == ["a in", "a out", "b in", "b out"]


def test_a_turn_whose_lock_commit_breaks_ends_quietly_and_frees_the_chat(database_url, monkeypatch, caplog):
    """The server going away can leave asyncpg mid-error as the turn commits its lock ("another
    operation is in progress"): the turn ends without an error (its writes were committed on other
    connections) and the lock goes with the ended connection, so the next turn waits for nothing."""
    commit = asyncpg.transaction.Transaction.commit
    broken = ["once"]

    async def breaks_once(transaction) -> None:
        if broken:
            broken.pop()
            raise asyncpg.InternalClientError(
                "cannot switch to state 15; another operation (2) is in progress"
            )
        await commit(transaction)

    async def main() -> float:
        a, b = PostgresStore(settings(database_url, lock_seconds=30)), PostgresStore(settings(database_url))
        await a.start()
        await b.start()
        try:
            monkeypatch.setattr(asyncpg.transaction.Transaction, "commit", breaks_once)
            async with a.chat_turn(CHAT):
                await a.add(CHAT, "user", "Привет", 1)
            start = asyncio.get_running_loop().time()
            async with b.chat_turn(CHAT):
                waited = asyncio.get_running_loop().time() - start
            assert await b.turns(CHAT, 5) == ["Привет"]
            return waited
        finally:
            await a.close()
            await b.close()

    assert asyncio.run(main()) < 10 and not broken  # not the 30 s bound of a lock left behind
    assert "lock connection lost by the end of its turn (cannot switch to state 15" in caplog.text
