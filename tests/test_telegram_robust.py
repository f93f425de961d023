"""A Bot API server that fails what a reply does not need, is down at start, refuses the token or
the webhook, or redelivers updates late and out of order: the real Application, by long polling and
by webhook (PTB's run_polling and run_webhook), the fake Bot API's switches, the real Triton.
`python -m bot` against such a server: test_telegram_cli.py; a flood: test_telegram_flood.py."""

from __future__ import annotations

import asyncio
import logging

import pytest

import bot.botapi as botapi
from bot.botapi import StartFailed
from bot.metrics import Metrics
from bot.settings import Settings
from bot.telegram import build_application
from tests.fake_telegram import NOT_FOUND, SERVER_ERROR, TIMEOUT, Failure, FakeTelegram
from tests.telegram_harness import CHAT, GROUP, OTHER, chatbot, generated, run_bot, saved_turns, say

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("no_leaked_threads")]

MODES = ["polling", "webhook"]
REFUSED = Failure(400, "Bad Request: method is not available on this server")


def webhook_of(tg: FakeTelegram, mode: str) -> FakeTelegram | None:
    """run_bot's `webhook` argument for the mode."""
    return tg if mode == "webhook" else None


def with_drafts(settings: Settings) -> Settings:
    return settings.model_copy(update={"draft_every": 0.05})


@pytest.fixture
def quick(monkeypatch):
    """Backoffs in tenths of a second, a start given up after 1 s."""
    monkeypatch.setattr(botapi, "MENU_DELAY", 0.2)
    monkeypatch.setattr(botapi, "START_DELAY", 0.1)
    monkeypatch.setattr(botapi, "START_SECONDS", 1.0)


def failure_lines(caplog) -> list[str]:
    """The methods named by the once-per-method warnings of failed optional calls, in order."""
    return [
        r.args[0]
        for r in caplog.records
        if r.getMessage().startswith("optional Bot API call") and "failed (" in r.msg
    ]


# -- 1. optional calls never stop the bot ---------------------------------------------------------


@pytest.mark.parametrize(
    "mode, menu",
    [("polling", SERVER_ERROR), ("webhook", SERVER_ERROR), ("polling", NOT_FOUND), ("webhook", TIMEOUT)],
    ids=["polling-500", "webhook-500", "polling-404", "webhook-timeout"],
)
def test_optional_calls_that_fail_never_stop_the_bot(
    tg, settings, triton, tokenizer, caplog, quick, mode, menu
):
    """The command menu, typing, drafts and deleteWebhook fail (the menu as `menu`): every message is
    answered; each method's failure is logged once and each failure counted; the menu is retried in
    the background until the server takes it, unless the server lacks the method (404)."""
    caplog.set_level(logging.INFO, logger="bot")
    tg.failing.update(
        setMyCommands=menu, sendChatAction=NOT_FOUND, sendMessageDraft=REFUSED, deleteWebhook=SERVER_ERROR
    )
    metrics = Metrics()

    async def body(dialogues):
        for text in ("Привет!", "Как дела?", "Что нового?"):
            await say(tg, CHAT, text)
        await say(tg, GROUP, "@dialogue_test_bot привет", chat_type="supergroup")
        assert not tg.of("setMyCommands")
        del tg.failing["setMyCommands"]  # the server takes it from now on
        if menu is NOT_FOUND:
            await asyncio.sleep(1.0)  # a try would have come by now
        else:
            await tg.wait_for(lambda: tg.of("setMyCommands"), timeout=15)

    run_bot(
        build_application(chatbot(triton.url, tokenizer), with_drafts(settings), metrics),
        body,
        webhook_of(tg, mode),
    )
    texts = tg.texts(CHAT)
    assert len(texts) == 3 and all(generated(t) for t in texts) and generated(tg.texts(GROUP)[0])
    assert saved_turns(settings, CHAT) == [
        "Привет!",
        texts[0],
        "Как дела?",
        texts[1],
        "Что нового?",
        texts[2],
    ]
    first_reply = tg.tried("sendMessage")[0].at
    assert tg.tried("setMyCommands")[0].at < first_reply  # tried at start, but not waited for
    menu_tries = tg.tried("setMyCommands")
    if menu is NOT_FOUND:
        assert len(menu_tries) == 1 and not tg.of("setMyCommands")  # not tried again
    else:
        assert len(menu_tries) >= 2 and menu_tries[-1].ok and menu_tries[-1].at > first_reply
    failed = {
        method: metrics.registry.get_sample_value("bot_optional_call_failures_total", {"method": method})
        for method in tg.failing | {"setMyCommands": menu}
    }
    # Counted per call: typing is tried as each reply starts, drafts in private chats while it grows.
    assert failed["sendChatAction"] >= 1 and 1 <= failed["sendMessageDraft"] <= 3
    assert failed["setMyCommands"] == len(menu_tries) - (menu is not NOT_FOUND)
    assert failed["deleteWebhook"] == (1 if mode == "polling" else 0)  # PTB deletes it before polling
    assert sorted(failure_lines(caplog)) == sorted(m for m, n in failed.items() if n)  # once each
    assert metrics.registry.get_sample_value("bot_errors_total", {"kind": "telegram"}) == 0


# -- 1. what makes the bot useless stops it; a Bot API down at start is waited for ----------------


@pytest.mark.parametrize("mode", MODES)
def test_a_bot_api_down_at_start_is_waited_for(tg, settings, triton, tokenizer, caplog, quick, mode):
    tg.fail_next("getMe", 502, "Bad Gateway", times=2)
    tg.fail_next("getMe", 500, "Internal Server Error")
    tg.fail_next("setWebhook", 500, "Internal Server Error", times=2)

    async def body(dialogues):
        await say(tg, CHAT, "Привет!")

    run_bot(build_application(chatbot(triton.url, tokenizer), settings), body, webhook_of(tg, mode))
    assert generated(tg.texts(CHAT)[0])
    assert [c.ok for c in tg.tried("getMe")] == [False, False, False, True]
    assert caplog.text.count("getMe failed (NetworkError") == 3
    if mode == "webhook":
        assert [c.ok for c in tg.tried("setWebhook")] == [False, False, True]


@pytest.mark.parametrize(
    "mode, method, failure, error",
    [
        ("polling", "getMe", Failure(401, "Unauthorized"), "TELEGRAM_BOT_TOKEN was rejected by the Bot API"),
        ("webhook", "getMe", NOT_FOUND, "TELEGRAM_BOT_TOKEN was rejected by the Bot API"),
        (
            "polling",
            "getMe",
            SERVER_ERROR,
            "TELEGRAM_BASE_URL: the Bot API at http://127.0.0.1:.* did not answer getMe",
        ),
        (
            "webhook",
            "setWebhook",
            Failure(400, "Bad Request: bad webhook: HTTPS url must be provided"),
            "BOT_WEBHOOK_URL",
        ),
        ("webhook", "setWebhook", SERVER_ERROR, "did not answer setWebhook within 1 s"),
    ],
    ids=["token-401", "token-404", "getMe-500", "webhook-400", "webhook-500"],
)
def test_only_what_makes_the_bot_useless_stops_it(
    tg, settings, tokenizer, quick, mode, method, failure, error
):
    tg.failing[method] = failure

    async def body(dialogues):
        raise AssertionError("the bot started")

    with pytest.raises(StartFailed, match=error) as stopped:
        run_bot(build_application(chatbot("127.0.0.1:9", tokenizer), settings), body, webhook_of(tg, mode))
    assert not tg.tried("getUpdates") and not tg.tried("sendMessage")
    if method == "getMe":  # nothing else was tried (the menu's task starts after getMe, in post_init)
        assert {c.method for c in tg.calls} == {"getMe"}
    assert len(str(stopped.value).splitlines()) == 1 and tg.token not in str(stopped.value)


# -- 2. a server that redelivers, late and out of order --------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_server_that_redelivers_late_and_out_of_order_gets_each_message_answered_once(
    tg, settings, triton, tokenizer, caplog, mode
):
    """The issue's server: it ignores the offset (every update comes twice more), holds two chats'
    updates back and hands a batch out chat by chat, and refuses the menu, typing and drafts.
    Four chats write three messages each, one after the other's reply: each message is answered
    once, in order, and the history alternates."""
    caplog.set_level(logging.INFO, logger="bot.waiting")
    chats = (CHAT, OTHER, 3003, 4004)
    tg.updates.redeliver, tg.updates.disorder = 2, True
    tg.updates.late = {OTHER: 0.4, 4004: 0.8}
    tg.failing.update(setMyCommands=SERVER_ERROR, sendChatAction=REFUSED, sendMessageDraft=REFUSED)

    async def conversation(chat_id: int) -> None:
        for k in range(3):
            await say(tg, chat_id, f"Чат {chat_id}, сообщение {k + 1}")

    async def body(dialogues):
        await asyncio.gather(*(conversation(c) for c in chats))
        await asyncio.sleep(1.5)  # the last ones come again meanwhile

    run_bot(
        build_application(chatbot(triton.url, tokenizer), with_drafts(settings)), body, webhook_of(tg, mode)
    )
    for chat_id in chats:
        texts = tg.texts(chat_id)
        assert len(texts) == 3 and all(generated(t) for t in texts), texts
        asked = [f"Чат {chat_id}, сообщение {k + 1}" for k in range(3)]
        assert saved_turns(settings, chat_id) == [t for pair in zip(asked, texts, strict=True) for t in pair]
    handed = len(tg.queued) * 3  # each update three times
    skipped = caplog.text.count("delivered again, skipped")
    assert skipped >= handed - len(tg.queued), (skipped, handed)  # every copy but the first dropped
    if mode == "webhook":
        assert [status for _, status in tg.updates.posts].count(200) >= handed
    print(f"\n{mode}: {len(tg.queued)} messages, {handed} deliveries, {skipped} dropped as delivered again")
