"""Feedback in Telegram: the 👍/👎 buttons under each reply, presses and reactions as votes, the
counts on the buttons, /privacy, /share, /forget; the real Application on the fake Bot API, the
real Triton (bot/feedback.py). Two replicas voting at once: test_replicas.py; the whole loop from
an export to a model trained on the liked replies: test_feedback_loop.py."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing

import pytest

import bot.dialogues as dialogues_module
from bot.history.store import FILENAME, KEEP_ROWS
from bot.history.votes import REPLY_DAYS, parse_callback
from bot.metrics import Metrics
from bot.telegram import ALLOWED_UPDATES, build_application
from bot.texts import (
    CONSENT,
    FORGOTTEN,
    PRIVACY,
    SHARE_ADMINS_ONLY,
    SHARE_OFF,
    SHARE_ON,
    SHARE_UNCHECKED,
    SHARE_USAGE,
    SORRY,
    VOTE_GONE,
    VOTED,
)
from tests.fake_interactions import OTHER_USER, USER
from tests.fake_telegram import SERVER_ERROR
from tests.telegram_harness import CHAT, GROUP, answered, chatbot, run_bot, say

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("no_leaked_threads")]
VIKA = {"id": 1003, "is_bot": False, "first_name": "Вика"}
GLEB = {"id": 1004, "is_bot": False, "first_name": "Глеб"}
VOTES = ("up", "down", "withdrawn")


def labels(tg, chat_id: int, message_id: int) -> list[str]:
    return [text for text, _ in tg.keyboard(chat_id, message_id)]


def answers(tg) -> list[str | None]:
    """The texts the presses were answered with (answerCallbackQuery), in order."""
    return [params.get("text") for params in tg.of("answerCallbackQuery")]


def stored_replies(settings, chat_id: int) -> list[tuple]:
    with closing(sqlite3.connect(settings.data_dir / FILENAME)) as db:
        return db.execute(
            "SELECT id, prompt, text, model_version, sampling, bot_message_id FROM replies "
            "WHERE chat_id = ? ORDER BY id",
            (chat_id,),
        ).fetchall()


def test_presses_and_reactions_are_votes_once_per_user_and_the_buttons_show_the_counts(
    tg, settings, triton, tokenizer
):
    metrics = Metrics()

    async def body(dialogues):
        await say(tg, CHAT, "Привет! Как дела?")
        [reply] = tg.replies(CHAT)
        mid = reply["message_id"]
        (_, up), (_, down) = tg.keyboard(CHAT, mid)
        assert labels(tg, CHAT, mid) == ["👍", "👎"]

        async def shows(*expected: str) -> None:
            await tg.wait_for(lambda: labels(tg, CHAT, mid) == list(expected))

        first = tg.press(CHAT, mid, up)
        await shows("👍 1", "👎")
        tg.deliver(first)  # the same press delivered again: counted once
        tg.press(CHAT, mid, down)  # Аня changes her mind
        await shows("👍", "👎 1")
        tg.press(CHAT, mid, up, user=OTHER_USER)
        await shows("👍 1", "👎 1")
        tg.press(CHAT, mid, up, user=OTHER_USER)  # the same vote again: nothing changes
        tg.react(CHAT, mid, [], ["👍"], user=VIKA)  # a reaction is a vote too
        await shows("👍 2", "👎 1")
        tg.react(CHAT, mid, [], ["👍"], user=None)  # anonymous: no one to count
        tg.react(CHAT, mid, [], ["🔥"], user=GLEB)  # another emoji: no vote
        tg.react(CHAT, mid, ["👍"], ["👍", "❤"], user=VIKA)  # still 👍
        tg.react(CHAT, mid, ["👍", "❤"], ["❤"], user=VIKA)  # taken back: withdrawn
        await shows("👍 1", "👎 1")
        tg.press(CHAT, mid, "v:999999:+")  # a reply that is gone (or never was)
        tg.press(CHAT, mid, "something else")  # not a vote button's: answered, nothing stored
        await tg.wait_for(lambda: len(tg.tried("answerCallbackQuery")) == 7)
        return parse_callback(up)[0], await dialogues.history.tally(CHAT, parse_callback(up)[0])

    reply_id, tally = run_bot(build_application(chatbot(triton.url, tokenizer), settings, metrics), body)
    assert (tally.up, tally.down) == (1, 1)
    [(stored, prompt, text, version, sampling, bot_message_id)] = stored_replies(settings, CHAT)
    [reply] = tg.replies(CHAT)
    assert (stored, json.loads(prompt), text) == (reply_id, ["Привет! Как дела?"], reply["text"])
    assert version == "1"  # the session's repository serves version 1
    assert json.loads(sampling)["max_new_tokens"] == 12 and bot_message_id == reply["message_id"]
    assert "message_reaction" in json.loads(tg.of("getUpdates")[0]["allowed_updates"])
    assert json.loads(tg.of("getUpdates")[0]["allowed_updates"]) == ALLOWED_UPDATES
    # Every press answered; the copy delivered again too (Telegram refuses a second answer: counted).
    assert answers(tg)[:4] == [VOTED[1], VOTED[-1], VOTED[1], VOTED[1]]
    assert sorted(answers(tg)[4:], key=str) == sorted([VOTE_GONE, None], key=str)
    value = metrics.registry.get_sample_value
    assert value("bot_optional_call_failures_total", {"method": "answerCallbackQuery"}) == 1
    assert value("bot_optional_call_failures_total", {"method": "editMessageReplyMarkup"}) == 0
    feedback = {v: value("bot_feedback_total", {"version": "1", "vote": v}) for v in VOTES}
    assert feedback == {"up": 3, "down": 1, "withdrawn": 1}  # each change once, under its new vote
    assert len(tg.of("editMessageReplyMarkup")) == 5  # one per change the chat could see


def test_privacy_share_and_forget(tg, settings, triton, tokenizer):
    group = {"chat_type": "supergroup"}

    async def body(dialogues):
        await say(tg, CHAT, "/privacy")
        await say(tg, CHAT, "/share")
        await say(tg, CHAT, "/privacy")
        await say(tg, CHAT, "Привет!")
        [(_, up), _] = tg.keyboard(CHAT, tg.replies(CHAT)[-1]["message_id"])
        tg.press(CHAT, tg.replies(CHAT)[-1]["message_id"], up)
        await tg.wait_for(lambda: answers(tg) == [VOTED[1]])
        await say(tg, CHAT, "/share maybe")
        # In a group: buttons only with BOT_FEEDBACK_GROUPS; /share needs an administrator.
        await say(tg, GROUP, "@dialogue_test_bot привет", **group)
        await say(tg, GROUP, "/share@dialogue_test_bot", **group)
        tg.admins.add((GROUP, USER["id"]))
        await say(tg, GROUP, "/share@dialogue_test_bot", **group)
        await say(tg, GROUP, "/share@dialogue_test_bot off", user=OTHER_USER, **group)  # anyone may
        tg.failing["getChatMember"] = SERVER_ERROR
        await say(tg, GROUP, "/share@dialogue_test_bot", **group)
        assert (await dialogues.history.consent(GROUP)).shared is False
        await say(tg, CHAT, "/forget")
        tg.press(CHAT, tg.replies(CHAT)[-3]["message_id"], up)  # the forgotten reply's button
        await tg.wait_for(lambda: len(answers(tg)) == 2)
        await say(tg, CHAT, "/privacy")
        return await dialogues.history.consent(CHAT), await dialogues.history.turns(CHAT, 10)

    consent, turns = run_bot(build_application(chatbot(triton.url, tokenizer), settings), body)
    texts = tg.texts(CHAT)
    privacy, shared = (
        PRIVACY.format(keep=KEEP_ROWS, days=REPLY_DAYS, consent=CONSENT[c, c]) for c in (False, True)
    )
    assert texts[:3] == [privacy, SHARE_ON, shared]
    assert answered(texts[3]) and texts[4] == SHARE_USAGE
    # /forget: the dialogue (2 messages), the reply, its vote and the consent; nothing pending.
    assert texts[5] == FORGOTTEN.format(messages=2, replies=1, votes=1, consent=1, inbox=0)
    assert texts[6] == privacy and (consent.chosen, turns) == (False, [])
    assert answers(tg) == [VOTED[1], VOTE_GONE]
    assert stored_replies(settings, CHAT) == []
    group_texts = tg.texts(GROUP)
    assert answered(group_texts[0]) and "reply_markup" not in tg.replies(GROUP)[0]
    assert group_texts[1:] == [SHARE_ADMINS_ONLY, SHARE_ON, SHARE_OFF, SHARE_UNCHECKED]


def test_a_split_reply_and_one_sent_again_carry_their_buttons_on_the_last_part(
    tg, settings, triton, tokenizer, monkeypatch
):
    """A reply in two parts: the buttons under the second, a reaction on either counts, the counts go
    to the buttons. A reply lost on its way is sent again, with its buttons, before the next one."""
    monkeypatch.setattr(dialogues_module, "split_message", lambda text: [text[:3], text[3:] or "…"])

    # the chat's second message brings the first reply (sent again) and its own
    async def scenario(dialogues):
        tg.fail_next("sendMessage", 502, "Bad Gateway")
        await say(tg, CHAT, "Привет!")
        await say(tg, CHAT, "Как дела?")
        await tg.wait_for(lambda: len(tg.texts(CHAT)) == 1 + 2 + 2)
        parts = [m["message_id"] for m in tg.replies(CHAT)]
        tg.react(CHAT, parts[1], [], ["👎"])  # the first part of the reply sent again
        await tg.wait_for(lambda: labels(tg, CHAT, parts[2]) == ["👍", "👎 1"])
        return parts

    parts = run_bot(build_application(chatbot(triton.url, tokenizer), settings), scenario)
    texts = tg.texts(CHAT)
    assert texts[0] == SORRY and len(texts) == 5
    late_2, new_2 = parts[2], parts[4]
    assert [labels(tg, CHAT, m) for m in parts] == [[], [], ["👍", "👎 1"], [], ["👍", "👎"]]
    late, new = tg.keyboard(CHAT, late_2)[0][1], tg.keyboard(CHAT, new_2)[0][1]
    [(first, *_), (second, *_)] = stored_replies(settings, CHAT)
    assert (parse_callback(late)[0], parse_callback(new)[0]) == (first, second)
    quoted = [json.loads(p["reply_parameters"])["message_id"] for p in tg.of("sendMessage", CHAT)[1:3]]
    assert quoted == [tg.message_ids(CHAT)[0]] * 2  # the late reply quotes the message it answers


def test_buttons_off_leaves_replies_plain_and_reactions_still_count(tg, settings, triton, tokenizer):
    settings = settings.model_copy(update={"feedback_buttons": False})
    metrics = Metrics()

    async def body(dialogues):
        await say(tg, CHAT, "Привет!")
        [reply] = tg.replies(CHAT)
        tg.react(CHAT, reply["message_id"], [], ["👍"])
        up = {"version": "1", "vote": "up"}
        await tg.wait_for(lambda: metrics.registry.get_sample_value("bot_feedback_total", up) == 1)
        [(reply_id, *_)] = stored_replies(settings, CHAT)
        return await dialogues.history.tally(CHAT, reply_id)

    tally = run_bot(build_application(chatbot(triton.url, tokenizer), settings, metrics), body)
    assert "reply_markup" not in tg.of("sendMessage", CHAT)[0] and (tally.up, tally.down) == (1, 0)
    assert not tg.tried("editMessageReplyMarkup")  # no buttons to show the counts on
