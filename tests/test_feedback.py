"""bot/history/feedback.py and votes.py: stored replies, votes, consent, /forget, retention and the
liked replies, on SQLite and a real PostgreSQL (as tests/test_history.py); the callback format.
Migrations from v1 and v2 and two replicas voting at once: test_feedback_migrations.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.history import open_store
from bot.history.postgres import PostgresStore
from bot.history.sqlite import SQLiteStore
from bot.history.store import DatabaseSettings, Store, Unsent
from bot.history.votes import Consent, Forgotten, Tally, callback_data, parse_callback, reaction_vote

CHAT, OTHER = 42, -1001234567890
ANNA, BORIS, VIKA = 7, 8, 9  # user ids
SAMPLING = {"temperature": 1.2, "top_k": 10, "stop_ids": [50257]}
Body = Callable[[Store], Awaitable[Any]]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path) -> tuple[Path, DatabaseSettings]:
    """open_store's arguments for each backend; PostgreSQL gets a fresh database."""
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


# -- the callback format and reactions (no store) ------------------------------------------------


def test_callback_data_names_the_reply_within_telegrams_64_bytes():
    biggest = 2**63 - 1  # an id of either backend
    for reply_id in (1, 12345, biggest):
        for vote in (1, -1):
            data = callback_data(reply_id, vote)
            assert len(data.encode()) <= 64 and parse_callback(data) == (reply_id, vote)
    assert callback_data(5, 1) == "v:5:+" and callback_data(5, -1) == "v:5:-"
    for other in (
        None,
        "",
        "v:5",
        "v:0:+",
        "v:05:+",
        "v:5:0",
        "v:-5:+",
        "x:5:+",
        "v:5:+ ",
        "v:1" + "0" * 19 + ":+",
    ):
        assert parse_callback(other) is None


@pytest.mark.parametrize(
    "old, new, vote",
    [
        ([], ["👍"], 1),
        ([], ["👎"], -1),
        (["👍"], ["👎"], -1),
        (["👍"], [], 0),  # taken back: the vote is withdrawn
        (["👍"], ["👍", "❤"], None),  # another emoji: the vote stays
        ([], ["🔥"], None),
        (["👍"], ["👍", "👎"], -1),  # a premium user's second reaction: the one just set
        ([], ["👍", "👎"], 0),
    ],
)
def test_reactions_count_as_votes(old, new, vote):
    assert reaction_vote(old, new) == vote


# -- replies --------------------------------------------------------------------------------------


def test_a_reply_is_recorded_with_what_made_it_once(backend):
    async def body(store: Store) -> None:
        await store.add(CHAT, "user", "Как дела?", 5)
        first = await store.record_reply(CHAT, 5, ["Привет", "Привет!", "Как дела?"], "Хорошо", "2", SAMPLING)
        again = await store.record_reply(
            CHAT, 5, ["Привет", "Привет!", "Как дела?"], "Отлично", "3", SAMPLING
        )
        assert again == first  # a retry, or a new generation before it was sent: the same reply
        assert await store.unsent(CHAT) == [Unsent(first.row, 5, "Отлично", first.id)]
        assert await store.turns(CHAT, 3) == ["Как дела?", "Отлично"]
        assert await store.attach(CHAT, first.id, [100, 101, 102])  # sent as three messages
        await store.mark_answered(CHAT, 5, reply=first.row)
        assert await store.record_reply(CHAT, 5, ["?"], "Поздно", "4", {}) == first  # sent: it stays
        row = await store._run(
            lambda conn: conn.fetch(
                "SELECT chat_id, message_id, bot_message_id, prompt, text, model_version, sampling "
                "FROM replies WHERE id = $1",
                first.id,
            )
        )
        assert tuple(row[0]) == (
            CHAT,
            5,
            100,
            '["Привет", "Привет!", "Как дела?"]',
            "Отлично",
            "3",
            '{"stop_ids": [50257], "temperature": 1.2, "top_k": 10}',
        )
        assert await store.unsent(CHAT) == [] and await store.is_answered(CHAT, 5)

    run(backend, body)


def test_any_part_of_a_sent_reply_finds_it(backend):
    async def body(store: Store) -> None:
        await store.add(CHAT, "user", "Расскажи", 5)
        reply = (await store.record_reply(CHAT, 5, ["Расскажи"], "длинно", None, {})).id
        assert await store.find_reply(CHAT, 100) is None  # not sent yet
        for _ in range(2):  # attached again (a retry): nothing twice
            assert await store.attach(CHAT, reply, [100, 101])
        assert await store.attach(CHAT, reply, [200])  # sent again after a lost answer: both count
        assert [await store.find_reply(CHAT, m) for m in (100, 101, 200, 102)] == [reply, reply, reply, None]
        assert await store.find_reply(OTHER, 100) is None  # message ids are per chat
        assert not await store.attach(OTHER, reply, [300])  # not that chat's reply
        assert not await store.attach(CHAT, reply + 1000, [300])  # no such reply
        assert await column(store, "SELECT bot_message_id FROM replies") == [100]  # the first part

    run(backend, body)


def test_a_refused_reply_is_forgotten_with_its_record(backend):
    async def body(store: Store) -> None:
        await store.add(CHAT, "user", "а", 1)
        refused = await store.record_reply(CHAT, 1, ["а"], "не дошло", "3", {})
        await store.forget(CHAT, refused.row)
        assert await store.unsent(CHAT) == [] and await column(store, "SELECT id FROM replies") == []
        assert (await store.vote(CHAT, refused.id, ANNA, 1)).found is False

    run(backend, body)


# -- votes ----------------------------------------------------------------------------------------


def test_one_vote_per_user_changed_withdrawn_and_counted(backend):
    async def body(store: Store) -> list[Tally]:
        reply = await answered(store, CHAT, 1)
        return [
            await store.vote(CHAT, reply, ANNA, 1),
            await store.vote(CHAT, reply, ANNA, 1),  # a redelivered callback: counts once
            await store.vote(CHAT, reply, BORIS, -1),
            await store.vote(CHAT, reply, ANNA, -1),  # Anna changes her mind
            await store.vote(CHAT, reply, VIKA, 1),
            await store.vote(CHAT, reply, ANNA, 0),  # and withdraws
            await store.vote(CHAT, reply, ANNA, 0),
            await store.tally(CHAT, reply),
        ]

    assert run(backend, body) == [
        Tally(True, 1, 0, changed=True),
        Tally(True, 1, 0, changed=False),
        Tally(True, 1, 1, changed=True),
        Tally(True, 0, 2, changed=True),
        Tally(True, 1, 2, changed=True),
        Tally(True, 1, 1, changed=True),
        Tally(True, 1, 1, changed=False),
        Tally(True, 1, 1),
    ]


def test_a_vote_on_a_reply_that_is_gone_or_of_another_chat_is_answered_not_stored(backend):
    async def body(store: Store) -> None:
        reply = await answered(store, CHAT, 1)
        assert await store.vote(CHAT, reply + 1, ANNA, 1) == Tally(found=False)
        assert await store.vote(OTHER, reply, ANNA, 1) == Tally(found=False)  # a forged press
        assert await store.tally(OTHER, reply) == Tally(found=False)
        assert await store.tally(CHAT, reply) == Tally(True, 0, 0)
        with pytest.raises(ValueError, match="a vote is"):
            await store.vote(CHAT, reply, ANNA, 2)
        await store.forget_chat(CHAT)
        assert await store.vote(CHAT, reply, ANNA, 1) == Tally(found=False)
        assert await column(store, "SELECT count(*) FROM votes") == [0]

    run(backend, body)


# -- consent --------------------------------------------------------------------------------------


@pytest.mark.parametrize("default", [False, True])
def test_consent_is_the_bots_default_until_the_chat_says(backend, default):
    async def body(store: Store) -> list[Consent]:
        said = [await store.consent(CHAT)]
        await store.set_consent(CHAT, not default, ANNA)
        said.append(await store.consent(CHAT))
        await store.set_consent(CHAT, default, BORIS)
        said += [await store.consent(CHAT), await store.consent(OTHER)]
        return said

    assert run(backend, body, share_default=default) == [
        Consent(default, chosen=False),
        Consent(not default, chosen=True),
        Consent(default, chosen=True),
        Consent(default, chosen=False),
    ]


# -- /forget --------------------------------------------------------------------------------------


def test_forget_deletes_everything_of_the_chat_and_nothing_of_another(backend):
    async def fill(store: Store, chat: int) -> int:
        first = await answered(store, chat, 1, "Привет", "Привет!")
        second = await answered(store, chat, 2, "Как дела?", "Хорошо")
        await store.vote(chat, first, ANNA, 1)
        await store.vote(chat, first, BORIS, -1)
        await store.vote(chat, second, ANNA, 1)
        await store.set_consent(chat, True, ANNA)
        await store.add(chat, "user", "Ещё", 3)  # pending: its answer is under way
        return first

    async def body(store: Store) -> None:
        await fill(store, CHAT)
        other = await fill(store, OTHER)
        forgotten = await store.forget_chat(CHAT)
        assert forgotten == Forgotten(messages=5, replies=2, votes=3, consent=1, inbox=1)
        assert forgotten.total == 12
        assert await store.forget_chat(CHAT) == Forgotten()  # again: nothing left
        assert await store.turns(CHAT, 10) == [] and await store.unsent(CHAT) == []
        assert await store.find_reply(CHAT, 1001) is None and await store.consent(CHAT) == Consent(
            False, False
        )
        assert await store.unanswered() == [(OTHER, 3)]
        assert await store.is_answered(CHAT, 1)  # a bare id: delivered again, still not answered twice
        assert {r.chat_id for r in (await store.liked()).liked} == {OTHER}  # CHAT's are gone
        # the other chat is untouched
        assert await store.turns(OTHER, 10) == ["Привет", "Привет!", "Как дела?", "Хорошо", "Ещё"]
        assert await store.find_reply(OTHER, 1001) == other
        assert await store.tally(OTHER, other) == Tally(True, 1, 1)
        assert await store.consent(OTHER) == Consent(True, True)
        assert await column(store, "SELECT DISTINCT chat_id FROM reply_messages") == [OTHER]

    run(backend, body)


# -- retention ------------------------------------------------------------------------------------


def test_unvoted_replies_beyond_keep_are_pruned_voted_ones_stay(backend):
    async def body(store: Store) -> None:
        replies = [await answered(store, CHAT, i, f"вопрос {i}", f"ответ {i}") for i in range(1, 4)]
        await store.vote(CHAT, replies[0], ANNA, 1)
        await store.vote(CHAT, replies[1], ANNA, -1)
        other = await answered(store, OTHER, 1)
        replies += [await answered(store, CHAT, i) for i in range(4, 7)]
        kept = await column(store, "SELECT id FROM replies WHERE chat_id = $1 ORDER BY id", CHAT)
        assert kept == [replies[0], replies[1], *replies[-3:]]  # the voted two and the newest three
        assert await store.tally(CHAT, replies[1]) == Tally(True, 0, 1)
        assert await store.find_reply(CHAT, 1003) is None  # its message ids went with it
        assert await store.tally(OTHER, other) == Tally(True, 0, 0)  # per chat

    run(backend, body, keep=3)


def test_replies_past_their_days_are_deleted_with_their_votes(backend):
    async def body(store: Store) -> None:
        old = await answered(store, CHAT, 1)
        await store.vote(CHAT, old, ANNA, 1)
        assert await store.expire() == 0  # a year is far
        await asyncio.sleep(0.05)
        started = time.monotonic()
        assert await store.expire(days=0) == 1  # everything before now
        assert store._swept >= started
        assert await store.tally(CHAT, old) == Tally(found=False)
        assert await column(store, "SELECT count(*) FROM votes") == [0]
        assert await column(store, "SELECT count(*) FROM reply_messages") == [0]

    run(backend, body)


# -- the liked replies training reads -------------------------------------------------------------


@pytest.mark.parametrize("default", [False, True])
def test_liked_replies_of_chats_that_agreed(backend, default):
    async def body(store: Store) -> tuple[Any, ...]:
        liked, disliked, tied = [await answered(store, CHAT, i, f"в{i}", f"о{i}") for i in (1, 2, 3)]
        for user, votes in ((ANNA, (1, -1, 1)), (BORIS, (1, -1, -1)), (VIKA, (-1, 1, 0))):
            for reply, vote in zip((liked, disliked, tied), votes, strict=True):
                await store.vote(CHAT, reply, user, vote)
        silent = await answered(store, OTHER, 1, "чужое", "мнение")  # never said /share
        await store.vote(OTHER, silent, ANNA, 1)
        refused = await answered(store, 5, 1, "нет", "нельзя")
        await store.vote(5, refused, ANNA, 1)
        await store.set_consent(5, False, ANNA)
        await store.set_consent(CHAT, True, ANNA)
        harvest, strict = await store.liked(), await store.liked(min_margin=2)
        with pytest.raises(ValueError, match="min_margin must be >= 1"):
            await store.liked(min_margin=0)
        return harvest, strict, liked, silent, refused

    harvest, strict, liked, silent, refused = run(backend, body, share_default=default)
    assert harvest.replies == 5
    assert [(r.id, r.prompt, r.text, r.up, r.down, r.shared) for r in harvest.liked] == [
        (liked, ["в1"], "о1", 2, 1, True),
        (silent, ["чужое"], "мнение", 1, 0, default),  # the bot's default, published at its start
        (refused, ["нет"], "нельзя", 1, 0, False),
    ]
    assert [r.id for r in harvest.rows] == [liked, silent] if default else [liked]
    assert strict.liked == []  # 2 to 1 is a margin of 1
