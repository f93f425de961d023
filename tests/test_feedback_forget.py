"""bot/history/feedback.py: /forget, retention and the liked replies training reads, on SQLite and a
real PostgreSQL. The other calls: test_feedback.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from bot.history.store import DatabaseSettings, Store
from bot.history.votes import Consent, Forgotten, Tally
from tests.feedback_store import ANNA, BACKENDS, BORIS, CHAT, OTHER, VIKA, answered, arguments, column, run


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path) -> tuple[Path, DatabaseSettings]:
    return arguments(request, tmp_path)


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
