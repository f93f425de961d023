"""bot/history/feedback.py and votes.py: the callback format and reactions; stored replies, votes
and consent on SQLite and a real PostgreSQL (as tests/test_history.py). /forget, retention and the
liked replies: test_feedback_forget.py; migrations from v1 and v2 and two replicas voting at once:
test_feedback_migrations.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.history.store import DatabaseSettings, Store, Unsent
from bot.history.votes import Consent, Tally, callback_data, parse_callback, reaction_vote
from tests.feedback_store import (
    ANNA,
    BACKENDS,
    BORIS,
    CHAT,
    OTHER,
    SAMPLING,
    VIKA,
    answered,
    arguments,
    column,
    run,
)


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path) -> tuple[Path, DatabaseSettings]:
    return arguments(request, tmp_path)


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
