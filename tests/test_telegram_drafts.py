"""Replies streamed as drafts (sendMessageDraft) while they are generated: the real Application,
the fake Bot API, the real Triton."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from bot.metrics import Metrics
from bot.settings import Settings
from bot.telegram import build_application
from bot.texts import RESET_DONE, UNAVAILABLE
from tests.helpers import cached_sequences
from tests.telegram_harness import (
    CHAT,
    GROUP,
    generated,
    run_bot,
    saved_turns,
    say,
    streaming_chatbot,
)

# Bounds setup too: the first test here may train, export and start the session's Triton (~1 min).
pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("no_leaked_threads")]


# -- replies streamed as drafts ------------------------------------------------------------


def drafts_settings(settings: Settings, every: float) -> Settings:
    return settings.model_copy(update={"draft_every": every})


def test_private_chat_sees_the_reply_grow_in_one_throttled_draft(tg, settings, triton, tokenizer):
    every, metrics = 0.3, Metrics()

    async def body(dialogues):
        await say(tg, CHAT, "Привет! Как дела?")

    run_bot(
        build_application(
            streaming_chatbot(triton.url, tokenizer), drafts_settings(settings, every), metrics
        ),
        body,
    )
    drafts, [reply] = tg.tried("sendMessageDraft", CHAT), tg.texts(CHAT)
    texts = [d.params["text"] for d in drafts]
    assert len(drafts) >= 2 and all(d.ok for d in drafts)
    assert len({d.params["draft_id"] for d in drafts}) == 1 and int(drafts[0].params["draft_id"]) != 0
    assert all(b.startswith(a) and len(b) > len(a) for a, b in itertools.pairwise(texts))  # it only grows
    assert reply.startswith(texts[-1]) and generated(reply)  # drafts show the final text's start
    assert all(b.at - a.at >= every for a, b in itertools.pairwise(drafts))  # the throttle holds
    [message] = tg.tried("sendMessage", CHAT)
    assert message.at > drafts[-1].at  # no draft after the message
    value = metrics.registry.get_sample_value
    assert value("bot_drafts_total", {"result": "sent"}) == len(drafts)
    assert value("bot_first_text_seconds_count") == 1
    assert value("bot_first_text_seconds_sum") < value("bot_reply_latency_seconds_sum")


@pytest.mark.parametrize(
    "code, description",
    [
        (400, "Bad Request: TEXTDRAFT_PEER_INVALID"),
        (
            429,
            "Too Many Requests: retry after 1",
        ),  # flood control, retried by the rate limiter, then given up
        (502, "Bad Gateway"),
    ],
)
def test_a_failing_draft_does_not_stop_the_reply(tg, settings, triton, tokenizer, caplog, code, description):
    metrics = Metrics()
    tg.fail_next("sendMessageDraft", code, description, times=3)

    async def body(dialogues):
        await say(tg, CHAT, "Привет!")
        await say(tg, CHAT, "Как дела?")  # the next reply tries drafts again

    run_bot(
        build_application(streaming_chatbot(triton.url, tokenizer), drafts_settings(settings, 0.1), metrics),
        body,
    )
    first, second = tg.texts(CHAT)
    assert generated(first) and generated(second)
    assert saved_turns(settings, CHAT) == ["Привет!", first, "Как дела?", second]
    tried, [sent, _] = tg.tried("sendMessageDraft", CHAT), tg.tried("sendMessage", CHAT)
    assert not [d for d in tried if d.at < sent.at and d.ok]  # the first reply's drafts stopped at the error
    assert [d for d in tried if d.at > sent.at]  # the next reply tried again
    # Optional (bot/botapi.py): logged once however many replies it fails, each failure counted.
    assert caplog.text.count("optional Bot API call sendMessageDraft failed") == 1
    failed = metrics.registry.get_sample_value("bot_drafts_total", {"result": "failed"})
    assert failed >= 1
    assert (
        metrics.registry.get_sample_value("bot_optional_call_failures_total", {"method": "sendMessageDraft"})
        == failed
    )
    assert metrics.registry.get_sample_value("bot_errors_total", {"kind": "telegram"}) == 0


def test_groups_get_typing_and_one_message_but_no_draft(tg, settings, triton, tokenizer):
    async def body(dialogues):
        await say(tg, GROUP, "@dialogue_test_bot привет", chat_type="supergroup")
        await say(tg, CHAT, "привет")

    run_bot(build_application(streaming_chatbot(triton.url, tokenizer), drafts_settings(settings, 0.1)), body)
    assert generated(tg.texts(GROUP)[0]) and tg.of("sendChatAction", GROUP)
    assert tg.tried("sendMessageDraft", GROUP) == [] and tg.of("sendMessageDraft", CHAT)


def test_reset_and_a_new_message_while_a_reply_streams_wait_their_turn(tg, settings, triton, tokenizer):
    bot = streaming_chatbot(triton.url, tokenizer, timeout=30)

    async def body(dialogues):
        tg.message(CHAT, "STALL расскажи что-нибудь")
        await tg.wait_for(lambda: tg.of("sendMessageDraft", CHAT))  # it streams, then stalls
        assert cached_sequences(triton) == 1  # mid-generation
        tg.message(CHAT, "/reset")
        await asyncio.sleep(0.3)  # in this order
        tg.message(CHAT, "второе")
        await asyncio.sleep(0.5)
        assert tg.texts(CHAT) == [] and len(bot.prompts) == 1
        assert await dialogues.history.turns(CHAT, 10) == ["STALL расскажи что-нибудь"]
        bot.release.set()
        await tg.wait_for(lambda: len(tg.texts(CHAT)) == 3)

    run_bot(build_application(bot, drafts_settings(settings, 0.1)), body)
    first, reset_done, second = tg.texts(CHAT)
    assert generated(first) and reset_done == RESET_DONE and generated(second)
    assert bot.prompts[-1] == ["второе"] and saved_turns(settings, CHAT) == ["второе", second]
    assert cached_sequences(triton) == 0  # every generation ended (END sent)


def test_a_reply_interrupted_midstream_still_ends_its_sequence(tg, settings, triton, tokenizer):
    bot = streaming_chatbot(triton.url, tokenizer, timeout=2)

    async def body(dialogues):
        await say(tg, CHAT, "STALL первый")  # never released: the reply times out
        assert cached_sequences(triton) == 0
        tg.message(CHAT, "STALL второй")
        await tg.wait_for(lambda: len(tg.of("sendMessageDraft", CHAT)) > 1 and cached_sequences(triton) == 1)
        # stopped while the second reply streams: PTB waits for the handler, whose reply times out

    run_bot(build_application(bot, drafts_settings(settings, 0.1)), body)
    assert tg.texts(CHAT) == [UNAVAILABLE, UNAVAILABLE]
    assert cached_sequences(triton) == 0
