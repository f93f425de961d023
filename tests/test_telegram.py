"""The Telegram bot end to end: the real PTB Application, run by its own run_polling, against a fake
Bot API and the real Triton. Drafts: test_telegram_drafts.py; `python -m bot`: test_telegram_cli.py."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal

import pytest
from prometheus_client import generate_latest

import bot.dialogues as dialogues_module
from bot.metrics import Metrics
from bot.telegram import build_application
from bot.texts import FALLBACK, HELP, NOT_TEXT, REFUSED, RESET_DONE, SORRY, START, UNAVAILABLE
from tests.helpers import start_triton
from tests.telegram_harness import (
    CHAT,
    GROUP,
    OTHER,
    chatbot,
    generated,
    run_bot,
    saved_turns,
    say,
)

STICKER = {
    "file_id": "st1",
    "file_unique_id": "u1",
    "type": "regular",
    "width": 512,
    "height": 512,
    "is_animated": False,
    "is_video": False,
}
PHOTO = [{"file_id": "ph1", "file_unique_id": "u2", "width": 90, "height": 90}]
# Bounds setup too: the first test here may train, export and start the session's Triton (~1 min).
pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("no_leaked_threads")]


# -- the bot against the fake Bot API and the real Triton ----------------------------------


def test_text_message_gets_typing_and_a_generated_reply(tg, settings, triton, tokenizer):
    metrics = Metrics()

    async def body(dialogues):
        await say(tg, CHAT, "Привет! Как дела?")

    run_bot(build_application(chatbot(triton.url, tokenizer), settings, metrics), body)
    [reply] = tg.texts(CHAT)
    assert generated(reply) and saved_turns(settings, CHAT) == ["Привет! Как дела?", reply]
    assert tg.of("sendChatAction", CHAT)[0]["action"] == "typing"
    assert all("parse_mode" not in p for p in tg.of("sendMessage"))  # plain text
    assert [c["command"] for c in json.loads(tg.of("setMyCommands")[0]["commands"])] == [
        "start",
        "help",
        "reset",
        "privacy",
        "forget",
        "share",
    ]
    value = metrics.registry.get_sample_value
    assert value("bot_replies_total") == 1 and value("bot_reply_latency_seconds_count") == 1
    assert value("bot_generated_tokens_total") >= 1 and value("bot_triton_up") == 1
    assert value("bot_errors_total", {"kind": "triton_unavailable"}) == 0
    exposed = generate_latest(metrics.registry).decode()
    for name in (
        "bot_replies_total",
        "bot_reply_latency_seconds_bucket",
        "bot_generated_tokens_total",
        'bot_errors_total{kind="unexpected"}',
        "bot_triton_up",
    ):
        assert name in exposed


def test_a_model_that_always_answers_empty_fails_the_generated_check(
    tg, settings, triton, tokenizer, monkeypatch
):
    """The bot sends its fallback text after two empty generations; `generated()`, which every
    Telegram test uses to say a reply came from the model, does not count it."""
    import client.chat
    from client.generate import Generation

    async def empty(*args, **kwargs):
        return Generation([], stopped=True)

    monkeypatch.setattr(client.chat, "generate", empty)

    async def body(dialogues):
        await say(tg, CHAT, "Привет!")

    run_bot(build_application(chatbot(triton.url, tokenizer), settings), body)
    [reply] = tg.texts(CHAT)
    assert reply == FALLBACK and not generated(reply)


def test_start_help_reset_and_unknown_command(tg, settings, triton, tokenizer):
    bot = chatbot(triton.url, tokenizer)

    async def body(dialogues):
        await say(tg, CHAT, "/start")
        await say(tg, CHAT, "/help")
        await say(tg, CHAT, "Меня зовут Аня")
        await say(tg, CHAT, "/reset")
        assert await dialogues.history.turns(CHAT, 10) == []
        await say(tg, CHAT, "Что нового?")
        await say(tg, CHAT, "/unknown")

    run_bot(build_application(bot, settings), body)
    texts = tg.texts(CHAT)
    assert texts[:2] == [START, HELP] and texts[3] == RESET_DONE and texts[5] == HELP
    assert generated(texts[2]) and generated(texts[4])
    assert bot.prompts[-1] == ["Что нового?"]  # nothing from before /reset
    assert saved_turns(settings, CHAT) == ["Что нового?", texts[4]]


def test_allow_list_refuses_other_chats(tg, settings, triton, tokenizer):
    bot = chatbot(triton.url, tokenizer)
    settings = settings.model_copy(update={"allowed_chat_ids": frozenset({CHAT})})

    async def body(dialogues):
        await say(tg, OTHER, "Привет!")
        tg.message(GROUP, "всем привет", chat_type="supergroup")  # not addressed: not even refused
        await say(tg, GROUP, "@dialogue_test_bot привет", chat_type="supergroup")
        await say(tg, CHAT, "Привет!")

    run_bot(build_application(bot, settings), body)
    assert tg.texts(OTHER) == [REFUSED] and tg.texts(GROUP) == [REFUSED]
    assert not tg.of("sendChatAction", OTHER) and not tg.of("sendChatAction", GROUP)
    assert bot.prompts == [["Привет!"]] and generated(tg.texts(CHAT)[0])


def test_non_text_blank_long_and_marker_messages(tg, settings, triton, tokenizer):
    long_text = " ".join(["слово"] * 1700)[:10_000]

    async def body(dialogues):
        await say(tg, CHAT, sticker=STICKER)
        await say(tg, CHAT, photo=PHOTO, caption="смотри")
        tg.message(CHAT, "   \n\t ")  # ignored
        tg.message(CHAT, "@@ПЕРВЫЙ@@")  # nothing left once the marker is removed: ignored
        await say(tg, CHAT, long_text)
        await say(tg, CHAT, "Привет @@ПЕРВЫЙ@@ как дела @@ВТОРОЙ@@")

    run_bot(build_application(chatbot(triton.url, tokenizer), settings), body)
    texts = tg.texts(CHAT)
    assert len(texts) == 4 and texts[:2] == [NOT_TEXT, NOT_TEXT]
    assert generated(texts[2]) and generated(texts[3])
    assert saved_turns(settings, CHAT) == [long_text, texts[2], "Привет как дела", texts[3]]


def test_group_answers_only_when_mentioned_or_replied_to(tg, settings, triton, tokenizer):
    group = {"chat_type": "supergroup"}

    async def body(dialogues):
        tg.message(GROUP, "всем привет", **group)
        tg.message(GROUP, sticker=STICKER, **group)
        await say(tg, GROUP, "@Dialogue_Test_Bot как дела?", **group)
        await say(tg, GROUP, "а ты кто?", reply_to_bot=True, **group)
        await say(tg, GROUP, sticker=STICKER, reply_to_bot=True, **group)

    run_bot(build_application(chatbot(triton.url, tokenizer), settings), body)
    texts = tg.texts(GROUP)
    assert len(texts) == 3 and generated(texts[0]) and generated(texts[1]) and texts[2] == NOT_TEXT
    assert saved_turns(settings, GROUP) == ["как дела?", texts[0], "а ты кто?", texts[1]]
    assert all("reply_parameters" in p for p in tg.of("sendMessage", GROUP))  # quotes whom it answers


def test_slow_reply_blocks_neither_typing_nor_other_chats_and_one_chat_stays_in_order(
    tg, settings, triton, tokenizer, monkeypatch
):
    monkeypatch.setattr(dialogues_module, "TYPING_EVERY", 0.1)
    bot = chatbot(triton.url, tokenizer, timeout=30)

    async def body(dialogues):
        tg.message(CHAT, "HOLD первый")  # its reply waits until released
        await tg.wait_for(lambda: len(tg.of("sendChatAction", CHAT)) >= 3)  # "typing…" is repeated
        tg.message(CHAT, "второй")  # the same chat: answered after the first
        await say(tg, OTHER, "Привет из другого чата")  # answered meanwhile
        assert tg.texts(CHAT) == [] and len(bot.prompts) == 2
        bot.release.set()
        await tg.wait_for(lambda: len(tg.texts(CHAT)) == 2)

    run_bot(build_application(bot, settings), body)
    first, second = tg.texts(CHAT)
    assert saved_turns(settings, CHAT) == ["HOLD первый", first, "второй", second]
    assert bot.prompts[-1] == ["HOLD первый", first, "второй"]


def test_triton_down_slow_and_back(tg, settings, model_repository, tokenizer, tmp_path):
    """A separate Triton: SIGKILLed, then started again on the same ports; frozen, then resumed."""
    server = start_triton(model_repository, tmp_path / "triton.log")
    metrics, bot = Metrics(), chatbot(server.url, tokenizer, timeout=3.0)
    up = lambda: metrics.registry.get_sample_value("bot_triton_up")  # noqa: E731

    async def body(dialogues):
        await say(tg, CHAT, "Привет!")
        await asyncio.to_thread(server.kill)  # SIGKILL: no graceful shutdown
        await tg.wait_for(lambda: up() == 0)  # the health check noticed
        down_s = await say(tg, CHAT, "Ты тут?")
        await asyncio.to_thread(server.start)
        await tg.wait_for(lambda: up() == 1)
        await say(tg, CHAT, "А теперь?")
        os.killpg(server.process.pid, signal.SIGSTOP)
        try:
            frozen_s = await say(tg, CHAT, "Алло?")
        finally:
            os.killpg(server.process.pid, signal.SIGCONT)
        await say(tg, CHAT, "Снова тут?")
        return down_s, frozen_s

    try:
        down_s, frozen_s = run_bot(build_application(bot, settings, metrics, health_every=0.2), body)
    finally:
        server.stop()
    texts = tg.texts(CHAT)
    assert texts[1] == UNAVAILABLE and texts[3] == UNAVAILABLE
    assert generated(texts[0]) and generated(texts[2]) and generated(texts[4])
    assert down_s < 3 + 4 and frozen_s < 3 + 4  # within the client's timeout (and some slack)
    # A failed message is kept and answered together with the next one, as one user turn.
    assert saved_turns(settings, CHAT) == [
        "Привет!",
        texts[0],
        "Ты тут?\nА теперь?",
        texts[2],
        "Алло?\nСнова тут?",
        texts[4],
    ]
    assert bot.prompts[2] == ["Привет!", texts[0], "Ты тут?\nА теперь?"]
    assert bot.prompts[-1] == ["Ты тут?\nА теперь?", texts[2], "Алло?\nСнова тут?"]
    assert metrics.registry.get_sample_value("bot_errors_total", {"kind": "triton_unavailable"}) == 2


def test_history_survives_a_restart(tg, settings, triton, tokenizer):
    """And the message the first bot answered is not answered again when Telegram delivers it again
    (found on a busy machine: the first bot's last getUpdates confirmation timed out at shutdown)."""
    first, second = chatbot(triton.url, tokenizer), chatbot(triton.url, tokenizer)

    async def before(dialogues):
        update = tg.message(CHAT, "Меня зовут Аня")
        await tg.wait_for(lambda: tg.texts(CHAT))
        return update

    async def after(dialogues):
        await say(tg, CHAT, "Как меня зовут?")

    update = run_bot(build_application(first, settings), before)
    tg.deliver(update)  # the confirmation was lost
    run_bot(build_application(second, settings), after)
    texts = tg.texts(CHAT)
    assert len(texts) == 2  # the first message was not handled twice
    assert second.prompts == [["Меня зовут Аня", texts[0], "Как меня зовут?"]]
    assert saved_turns(settings, CHAT) == ["Меня зовут Аня", texts[0], "Как меня зовут?", texts[1]]


def test_a_message_delivered_again_is_answered_once(tg, settings, triton, tokenizer, caplog):
    """While it is being answered and after; a command too."""
    caplog.set_level(logging.INFO, logger="bot.waiting")
    bot = chatbot(triton.url, tokenizer)

    async def deliver_again(update: dict) -> None:
        polls = len(tg.of("getUpdates"))
        tg.deliver(update)
        await tg.wait_for(lambda: len(tg.of("getUpdates")) > polls)  # handed out
        await asyncio.sleep(0.2)  # and dispatched: it waits for the chat's turn

    async def body(dialogues):
        held = tg.message(CHAT, "HOLD Привет")
        await tg.wait_for(lambda: bot.prompts)
        await deliver_again(held)
        bot.release.set()
        await tg.wait_for(lambda: len(tg.texts(CHAT)) == 1)
        await deliver_again(held)
        start = tg.message(CHAT, "/start")
        await tg.wait_for(lambda: len(tg.texts(CHAT)) == 2)
        await deliver_again(start)
        await say(tg, CHAT, "Пока")

    run_bot(build_application(bot, settings), body)
    reply, greeting, bye = tg.texts(CHAT)
    assert generated(reply) and greeting == START and generated(bye)
    assert len(bot.prompts) == 2 and saved_turns(settings, CHAT) == ["HOLD Привет", reply, "Пока", bye]
    assert caplog.text.count("is waiting or being answered: delivered again, skipped") == 1
    assert caplog.text.count("was answered before: delivered again, skipped") == 2


def test_token_never_reaches_the_logs(tg, settings, triton, tokenizer, caplog):
    caplog.set_level(logging.DEBUG)  # also httpx, whose request lines carry the URL with the token
    metrics = Metrics()

    async def body(dialogues):
        # A proxy that echoes the URL in its error: the error handler logs it with the traceback.
        tg.fail_next("sendMessage", 400, f"Bad Request: POST {tg.url}/bot{tg.token}/sendMessage refused")
        await say(tg, CHAT, "Привет!")
        await say(tg, CHAT, "BOOM")  # an unexpected error: the user's message is kept

    run_bot(build_application(chatbot(triton.url, tokenizer), settings, metrics), body)
    assert saved_turns(settings, CHAT) == ["Привет!\nBOOM"]  # the reply that failed to send is not stored
    assert tg.texts(CHAT) == [SORRY, SORRY]
    value = metrics.registry.get_sample_value
    assert (
        value("bot_errors_total", {"kind": "telegram"}) == 1
        and value("bot_errors_total", {"kind": "unexpected"}) == 1
    )
    assert "RuntimeError: a bug" in caplog.text
    assert "error while handling an update" in caplog.text and "Traceback" in caplog.text
    assert "<TOKEN>/sendmessage refused" in caplog.text  # PTB capitalises error texts: any case is hidden
    token = tg.token.lower()
    assert token not in caplog.text.lower()
    assert not [r for r in caplog.records if token in (r.getMessage() + (r.exc_text or "")).lower()]


def test_bare_commands_in_a_group_are_for_whoever_is_addressed(tg, settings, triton, tokenizer):
    group = {"chat_type": "supergroup"}

    async def body(dialogues):
        await say(tg, GROUP, "@dialogue_test_bot привет", **group)
        tg.message(GROUP, "/reset", **group)  # meant for another bot
        tg.message(GROUP, "/reset@other_bot", **group)
        tg.message(GROUP, "/help", **group)
        await say(tg, GROUP, "/help@dialogue_test_bot", **group)
        assert len(await dialogues.history.turns(GROUP, 10)) == 2
        await say(tg, GROUP, "/reset", reply_to_bot=True, **group)
        assert await dialogues.history.turns(GROUP, 10) == []
        await say(tg, GROUP, "@dialogue_test_bot привет", **group)
        await say(tg, GROUP, "/reset@dialogue_test_bot", **group)

    run_bot(build_application(chatbot(triton.url, tokenizer), settings), body)
    texts = tg.texts(GROUP)
    assert texts[1:3] == [HELP, RESET_DONE] and texts[4] == RESET_DONE and len(texts) == 5
    assert saved_turns(settings, GROUP) == []
