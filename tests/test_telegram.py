"""The Telegram bot: the real PTB Application against a fake Bot API and the real Triton."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from telegram.ext import Application

import bot.dialogues as dialogues_module
from bot.chat import ChatBot, DialogueTokenizer, Reply
from bot.console import RESET_DONE, UNAVAILABLE
from bot.dialogues import Dialogues
from bot.handlers import HELP, NOT_TEXT, REFUSED, SORRY, START, STATE
from bot.history import History
from bot.metrics import Metrics
from bot.sampling import SamplingConfig
from bot.settings import Settings
from bot.streaming import OnText
from bot.telegram import ALLOWED_UPDATES, build_application
from bot.triton_client import TritonClient
from serve.server import TritonServer, free_port
from tests.fake_telegram import FakeTelegram
from tests.test_generate import Slow, cached_sequences

ROOT = Path(__file__).resolve().parent.parent
CHAT, OTHER, GROUP = 1001, 2002, -1003003
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
pytestmark = pytest.mark.timeout(300)


class RecordingChatBot(ChatBot):
    """The real ChatBot; records every prompt's turns, holds replies to "HOLD" until released,
    stalls replies to "STALL" after their first visible text (mid-generation: Triton holds the
    sequence) until released, and fails on "BOOM" with an unexpected error."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prompts: list[list[str]] = []
        self.release = asyncio.Event()

    async def reply(self, turns: list[str], on_text: OnText | None = None) -> Reply:
        self.prompts.append(list(turns))
        if "HOLD" in turns[-1]:
            await self.release.wait()
        if "BOOM" in turns[-1]:
            raise RuntimeError("a bug")
        if "STALL" in turns[-1] and on_text:
            show = on_text

            async def on_text(text: str) -> None:
                show(text)
                await self.release.wait()

        return await super().reply(turns, on_text=on_text)


@pytest.fixture(scope="module")
def tokenizer(model_repository) -> DialogueTokenizer:
    return DialogueTokenizer(model_repository / "rudialogpt" / "tokenizer")


@pytest.fixture(autouse=True)
def no_leaked_threads():
    before = set(threading.enumerate())
    yield
    assert set(threading.enumerate()) <= before


@pytest.fixture
def tg():
    with FakeTelegram() as fake:
        yield fake


@pytest.fixture
def settings(tg, tmp_path) -> Settings:
    return Settings(tg.token, tg.url, tmp_path / "data", metrics_port=0)


def chatbot(url: str, tokenizer: DialogueTokenizer, timeout: float = 10.0) -> RecordingChatBot:
    return RecordingChatBot(
        TritonClient(url, "rudialogpt", timeout=timeout), tokenizer, SamplingConfig(max_new_tokens=12), seed=0
    )


def streaming_chatbot(url: str, tokenizer: DialogueTokenizer, timeout: float = 10.0) -> RecordingChatBot:
    """A chatbot whose replies take 24 tokens of >= 50 ms each (no stop token): long enough to stream."""
    bot = RecordingChatBot(
        Slow(url, "rudialogpt", timeout=timeout), tokenizer, SamplingConfig(max_new_tokens=24), seed=0
    )
    bot.sampling = bot.sampling.with_(stop_ids=())
    return bot


@asynccontextmanager
async def running(application: Application) -> AsyncIterator[Dialogues]:
    """The application in the test's event loop, as PTB documents it for a loop of one's own (with
    run_polling's hooks, in its order). `python -m bot` tests run the real run_polling/run_webhook."""
    try:
        async with application:  # initialize() … shutdown()
            await application.post_init(application)
            await application.updater.start_polling(
                poll_interval=0.05, timeout=1, allowed_updates=ALLOWED_UPDATES
            )
            await application.start()
            try:
                yield application.bot_data[STATE]
            finally:
                await application.updater.stop()
                await application.stop()
    finally:
        await application.post_shutdown(application)
    assert asyncio.all_tasks() == {asyncio.current_task()}  # nothing left running


async def say(tg: FakeTelegram, chat_id: int, text: str | None = None, **kw) -> float:
    """Send a message and wait for the bot's next message to the chat; the seconds it took."""
    expected = len(tg.texts(chat_id)) + 1
    tg.message(chat_id, text, **kw)
    return await tg.wait_for(lambda: len(tg.texts(chat_id)) >= expected, timeout=60)


def saved_turns(settings: Settings, chat_id: int) -> list[str]:
    """The chat's history as the stopped bot left it on disk."""
    with History.in_dir(settings.data_dir) as history:
        return history.turns(chat_id, 100)


def generated(text: str) -> bool:
    return bool(text.strip()) and text not in (UNAVAILABLE, SORRY, NOT_TEXT, HELP, START)


# -- the bot against the fake Bot API and the real Triton ----------------------------------


def test_text_message_gets_typing_and_a_generated_reply(tg, settings, triton, tokenizer):
    metrics = Metrics()

    async def body():
        async with running(build_application(chatbot(triton.url, tokenizer), settings, metrics)):
            await say(tg, CHAT, "Привет! Как дела?")

    asyncio.run(body())
    [reply] = tg.texts(CHAT)
    assert generated(reply) and saved_turns(settings, CHAT) == ["Привет! Как дела?", reply]
    assert tg.of("sendChatAction", CHAT)[0]["action"] == "typing"
    assert all("parse_mode" not in p for p in tg.of("sendMessage"))  # plain text
    assert [c["command"] for c in json.loads(tg.of("setMyCommands")[0]["commands"])] == [
        "start",
        "help",
        "reset",
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


def test_start_help_reset_and_unknown_command(tg, settings, triton, tokenizer):
    bot = chatbot(triton.url, tokenizer)

    async def body():
        async with running(build_application(bot, settings)) as dialogues:
            await say(tg, CHAT, "/start")
            await say(tg, CHAT, "/help")
            await say(tg, CHAT, "Меня зовут Аня")
            await say(tg, CHAT, "/reset")
            assert await dialogues.history.turns(CHAT, 10) == []
            await say(tg, CHAT, "Что нового?")
            await say(tg, CHAT, "/unknown")

    asyncio.run(body())
    texts = tg.texts(CHAT)
    assert texts[:2] == [START, HELP] and texts[3] == RESET_DONE and texts[5] == HELP
    assert generated(texts[2]) and generated(texts[4])
    assert bot.prompts[-1] == ["Что нового?"]  # nothing from before /reset
    assert saved_turns(settings, CHAT) == ["Что нового?", texts[4]]


def test_allow_list_refuses_other_chats(tg, settings, triton, tokenizer):
    bot = chatbot(triton.url, tokenizer)
    settings = Settings(tg.token, tg.url, settings.data_dir, frozenset({CHAT}), metrics_port=0)

    async def body():
        async with running(build_application(bot, settings)):
            await say(tg, OTHER, "Привет!")
            tg.message(GROUP, "всем привет", chat_type="supergroup")  # not addressed: not even refused
            await say(tg, GROUP, "@dialogue_test_bot привет", chat_type="supergroup")
            await say(tg, CHAT, "Привет!")

    asyncio.run(body())
    assert tg.texts(OTHER) == [REFUSED] and tg.texts(GROUP) == [REFUSED]
    assert not tg.of("sendChatAction", OTHER) and not tg.of("sendChatAction", GROUP)
    assert bot.prompts == [["Привет!"]] and generated(tg.texts(CHAT)[0])


def test_non_text_blank_long_and_marker_messages(tg, settings, triton, tokenizer):
    long_text = " ".join(["слово"] * 1700)[:10_000]

    async def body():
        async with running(build_application(chatbot(triton.url, tokenizer), settings)):
            await say(tg, CHAT, sticker=STICKER)
            await say(tg, CHAT, photo=PHOTO, caption="смотри")
            tg.message(CHAT, "   \n\t ")  # ignored
            tg.message(CHAT, "@@ПЕРВЫЙ@@")  # nothing left once the marker is removed: ignored
            await say(tg, CHAT, long_text)
            await say(tg, CHAT, "Привет @@ПЕРВЫЙ@@ как дела @@ВТОРОЙ@@")

    asyncio.run(body())
    texts = tg.texts(CHAT)
    assert len(texts) == 4 and texts[:2] == [NOT_TEXT, NOT_TEXT]
    assert generated(texts[2]) and generated(texts[3])
    assert saved_turns(settings, CHAT) == [long_text, texts[2], "Привет как дела", texts[3]]


def test_group_answers_only_when_mentioned_or_replied_to(tg, settings, triton, tokenizer):
    group = {"chat_type": "supergroup"}

    async def body():
        async with running(build_application(chatbot(triton.url, tokenizer), settings)):
            tg.message(GROUP, "всем привет", **group)
            tg.message(GROUP, sticker=STICKER, **group)
            await say(tg, GROUP, "@Dialogue_Test_Bot как дела?", **group)
            await say(tg, GROUP, "а ты кто?", reply_to_bot=True, **group)
            await say(tg, GROUP, sticker=STICKER, reply_to_bot=True, **group)

    asyncio.run(body())
    texts = tg.texts(GROUP)
    assert len(texts) == 3 and generated(texts[0]) and generated(texts[1]) and texts[2] == NOT_TEXT
    assert saved_turns(settings, GROUP) == ["как дела?", texts[0], "а ты кто?", texts[1]]
    assert all("reply_parameters" in p for p in tg.of("sendMessage", GROUP))  # quotes whom it answers


def test_slow_reply_blocks_neither_typing_nor_other_chats_and_one_chat_stays_in_order(
    tg, settings, triton, tokenizer, monkeypatch
):
    monkeypatch.setattr(dialogues_module, "TYPING_EVERY", 0.1)
    bot = chatbot(triton.url, tokenizer, timeout=30)

    async def body():
        async with running(build_application(bot, settings)):
            tg.message(CHAT, "HOLD первый")  # its reply waits until released
            await tg.wait_for(lambda: len(tg.of("sendChatAction", CHAT)) >= 3)  # "typing…" is repeated
            tg.message(CHAT, "второй")  # the same chat: answered after the first
            await say(tg, OTHER, "Привет из другого чата")  # answered meanwhile
            assert tg.texts(CHAT) == [] and len(bot.prompts) == 2
            bot.release.set()
            await tg.wait_for(lambda: len(tg.texts(CHAT)) == 2)

    asyncio.run(body())
    first, second = tg.texts(CHAT)
    assert saved_turns(settings, CHAT) == ["HOLD первый", first, "второй", second]
    assert bot.prompts[-1] == ["HOLD первый", first, "второй"]


def test_triton_down_slow_and_back(tg, settings, model_repository, tokenizer, tmp_path):
    """A separate Triton: SIGKILLed, then started again on the same ports; frozen, then resumed."""
    server = TritonServer(
        model_repository, free_port(), free_port(), free_port(), log_file=tmp_path / "triton.log"
    )
    metrics, bot = Metrics(), chatbot(server.url, tokenizer, timeout=3.0)
    up = lambda: metrics.registry.get_sample_value("bot_triton_up")  # noqa: E731

    async def body():
        async with running(build_application(bot, settings, metrics, health_every=0.2)):
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

    server.start()
    try:
        down_s, frozen_s = asyncio.run(body())
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
    first, second = chatbot(triton.url, tokenizer), chatbot(triton.url, tokenizer)

    async def body():
        async with running(build_application(first, settings)):
            await say(tg, CHAT, "Меня зовут Аня")
        async with running(build_application(second, settings)):
            await say(tg, CHAT, "Как меня зовут?")

    asyncio.run(body())
    texts = tg.texts(CHAT)
    assert len(texts) == 2  # the first message was not handled twice
    assert second.prompts == [["Меня зовут Аня", texts[0], "Как меня зовут?"]]


def test_token_never_reaches_the_logs(tg, settings, triton, tokenizer, caplog):
    caplog.set_level(logging.DEBUG)  # also httpx, whose request lines carry the URL with the token
    metrics = Metrics()

    async def body():
        async with running(build_application(chatbot(triton.url, tokenizer), settings, metrics)):
            # A proxy that echoes the URL in its error: the error handler logs it with the traceback.
            tg.fail_next("sendMessage", 400, f"Bad Request: POST {tg.url}/bot{tg.token}/sendMessage refused")
            await say(tg, CHAT, "Привет!")
            await say(tg, CHAT, "BOOM")  # an unexpected error: the user's message is kept

    asyncio.run(body())
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


# -- replies streamed as drafts ------------------------------------------------------------


def drafts_settings(settings: Settings, every: float) -> Settings:
    return Settings(settings.token, settings.base_url, settings.data_dir, metrics_port=0, draft_every=every)


def test_private_chat_sees_the_reply_grow_in_one_throttled_draft(tg, settings, triton, tokenizer):
    every, metrics = 0.3, Metrics()

    async def body():
        async with running(
            build_application(
                streaming_chatbot(triton.url, tokenizer), drafts_settings(settings, every), metrics
            )
        ):
            await say(tg, CHAT, "Привет! Как дела?")

    asyncio.run(body())
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

    async def body():
        async with running(
            build_application(
                streaming_chatbot(triton.url, tokenizer), drafts_settings(settings, 0.1), metrics
            )
        ):
            await say(tg, CHAT, "Привет!")
            await say(tg, CHAT, "Как дела?")  # the next reply tries drafts again

    asyncio.run(body())
    first, second = tg.texts(CHAT)
    assert generated(first) and generated(second)
    assert saved_turns(settings, CHAT) == ["Привет!", first, "Как дела?", second]
    tried, [sent, _] = tg.tried("sendMessageDraft", CHAT), tg.tried("sendMessage", CHAT)
    assert not [d for d in tried if d.at < sent.at and d.ok]  # the first reply's drafts stopped at the error
    assert [d for d in tried if d.at > sent.at]  # the next reply tried again
    assert "draft not shown" in caplog.text
    assert metrics.registry.get_sample_value("bot_drafts_total", {"result": "failed"}) >= 1
    assert metrics.registry.get_sample_value("bot_errors_total", {"kind": "telegram"}) == 0


def test_groups_get_typing_and_one_message_but_no_draft(tg, settings, triton, tokenizer):
    async def body():
        async with running(
            build_application(streaming_chatbot(triton.url, tokenizer), drafts_settings(settings, 0.1))
        ):
            await say(tg, GROUP, "@dialogue_test_bot привет", chat_type="supergroup")
            await say(tg, CHAT, "привет")

    asyncio.run(body())
    assert generated(tg.texts(GROUP)[0]) and tg.of("sendChatAction", GROUP)
    assert tg.tried("sendMessageDraft", GROUP) == [] and tg.of("sendMessageDraft", CHAT)


def test_reset_and_a_new_message_while_a_reply_streams_wait_their_turn(tg, settings, triton, tokenizer):
    bot = streaming_chatbot(triton.url, tokenizer, timeout=30)

    async def body():
        async with running(build_application(bot, drafts_settings(settings, 0.1))) as dialogues:
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

    asyncio.run(body())
    first, reset_done, second = tg.texts(CHAT)
    assert generated(first) and reset_done == RESET_DONE and generated(second)
    assert bot.prompts[-1] == ["второе"] and saved_turns(settings, CHAT) == ["второе", second]
    assert cached_sequences(triton) == 0  # every generation ended (END sent)


def test_a_reply_interrupted_midstream_still_ends_its_sequence(tg, settings, triton, tokenizer):
    bot = streaming_chatbot(triton.url, tokenizer, timeout=2)

    async def body():
        async with running(build_application(bot, drafts_settings(settings, 0.1))):
            await say(tg, CHAT, "STALL первый")  # never released: the reply times out
            assert cached_sequences(triton) == 0
            tg.message(CHAT, "STALL второй")
            await tg.wait_for(
                lambda: len(tg.of("sendMessageDraft", CHAT)) > 1 and cached_sequences(triton) == 1
            )
        # stopped while the second reply streams: PTB waits for the handler, whose reply times out

    asyncio.run(body())
    assert tg.texts(CHAT) == [UNAVAILABLE, UNAVAILABLE]
    assert cached_sequences(triton) == 0


def test_bare_commands_in_a_group_are_for_whoever_is_addressed(tg, settings, triton, tokenizer):
    group = {"chat_type": "supergroup"}

    async def body():
        async with running(build_application(chatbot(triton.url, tokenizer), settings)) as dialogues:
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

    asyncio.run(body())
    texts = tg.texts(GROUP)
    assert texts[1:3] == [HELP, RESET_DONE] and texts[4] == RESET_DONE and len(texts) == 5
    assert saved_turns(settings, GROUP) == []


# -- `python -m bot` ------------------------------------------------------------------------


def bot_env(tg: FakeTelegram, tmp_path: Path, **env: str) -> dict[str, str]:
    return {
        **os.environ,
        "TELEGRAM_BOT_TOKEN": tg.token,
        "TELEGRAM_BASE_URL": tg.url,
        "BOT_DATA_DIR": str(tmp_path),
        "BOT_METRICS_PORT": "0",
        **env,
    }


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def python_m_bot(model_repository: Path, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bot",
        "--tokenizer",
        str(model_repository / "rudialogpt" / "tokenizer"),
        "--max-new-tokens",
        "8",
        *flags,
    ]


def test_python_m_bot_webhook_mode(tg, triton, model_repository, tmp_path):
    port, metrics_port, secret = free_port(), free_port(), "s3cret-Value_1"
    env = bot_env(
        tg,
        tmp_path,
        TRITON_URL=triton.url,
        TRITON_MODEL="rudialogpt",
        BOT_METRICS_PORT=str(metrics_port),
        BOT_WEBHOOK_URL="https://bot.example.com/telegram-hook",
        BOT_WEBHOOK_SECRET=secret,
        BOT_WEBHOOK_PORT=str(port),
    )
    proc = subprocess.Popen(
        python_m_bot(model_repository, "--webhook"),
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def post(update: dict, secret_token: str) -> int:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/telegram-hook",
            json.dumps(update).encode(),
            {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": secret_token},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        # PTB sets the webhook, then starts listening.
        asyncio.run(tg.wait_for(lambda: listening(port) or proc.poll() is not None, timeout=60))
        [hook] = tg.of("setWebhook")
        assert hook["url"] == "https://bot.example.com/telegram-hook" and hook["secret_token"] == secret
        assert post(tg.message(OTHER, "чужой"), "wrong-secret") == 403
        assert post(tg.message(CHAT, "Привет!"), secret) == 200
        asyncio.run(tg.wait_for(lambda: tg.texts(CHAT)))
        # Counted just after the reply is sent: scrape until it shows up.
        asyncio.run(
            tg.wait_for(
                lambda: (
                    "bot_replies_total 1.0"
                    in urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
                    .read()
                    .decode()
                ),
                timeout=10,
            )
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert generated(tg.texts(CHAT)[0]) and tg.texts(OTHER) == []
    assert tg.token.lower() not in (out + err).lower()


def test_python_m_bot_long_polling_streams_drafts(tg, triton, model_repository, tmp_path):
    env = bot_env(tg, tmp_path, TRITON_URL=triton.url, TRITON_MODEL="rudialogpt", BOT_DRAFT_INTERVAL="0.05")
    proc = subprocess.Popen(
        python_m_bot(model_repository, "--max-new-tokens", "40", "--seed", "3"),
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:  # run_polling itself: its start-up, the handlers, its shutdown on SIGTERM
        tg.message(CHAT, "Привет! Расскажи, как прошёл твой день?")
        asyncio.run(tg.wait_for(lambda: tg.texts(CHAT) or proc.poll() is not None, timeout=60))
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    [reply], drafts = tg.texts(CHAT), tg.of("sendMessageDraft", CHAT)
    assert generated(reply) and drafts and reply.startswith(drafts[-1]["text"])
    assert "drafts every 0.05 s" in err and "first text after" in err


@pytest.mark.parametrize(
    "token, message",
    [("", "TELEGRAM_BOT_TOKEN is not set"), ("999:REJECTED-token", "TELEGRAM_BOT_TOKEN was rejected")],
)
def test_python_m_bot_missing_or_rejected_token_exits_2(tg, model_repository, tmp_path, token, message):
    env = bot_env(tg, tmp_path, TRITON_URL="127.0.0.1:9")
    env["TELEGRAM_BOT_TOKEN"] = token
    proc = subprocess.run(
        python_m_bot(model_repository), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and message in proc.stderr
    if token:
        assert [c.token for c in tg.calls] == [token]  # getMe, refused
        assert "<TOKEN>" in proc.stderr and token.lower() not in (proc.stdout + proc.stderr).lower()
