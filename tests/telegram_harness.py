"""The Telegram bot under test: a recording ChatBot, PTB's own run_polling (or run_webhook) driven
from a test, messages to the fake Bot API, `python -m bot`'s command line (fixtures are in
conftest.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import TypeVar

from telegram.ext import Application

from bot.dialogues import Dialogues
from bot.handlers import STATE
from bot.history.store import FILENAME, merge_turns
from bot.settings import Settings
from bot.telegram import ALLOWED_UPDATES
from bot.texts import FALLBACK, HELP, NOT_TEXT, SORRY, START, UNAVAILABLE
from client.chat import ChatBot, DialogueTokenizer, Reply
from client.rounds import TritonClient
from client.sampling import SamplingConfig
from client.streaming import OnText
from serve.server import free_port
from tests.fake_telegram import FakeTelegram
from tests.helpers import MODEL, ROOT, Slow

T = TypeVar("T")
CHAT, OTHER, GROUP = 1001, 2002, -1003003
LOCK_SECONDS = 4  # BOT_CHAT_LOCK_SECONDS of a Replica: how long a hung replica holds a chat
WEBHOOK_URL, WEBHOOK_SECRET = "https://bot.example.com/telegram-hook", "s3cret-Value_1"


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


def chatbot(url: str, tokenizer: DialogueTokenizer, timeout: float = 10.0) -> RecordingChatBot:
    return RecordingChatBot(
        TritonClient(url, MODEL, timeout=timeout),
        tokenizer,
        SamplingConfig(max_new_tokens=12),
        seed=0,
        fallback=FALLBACK,
    )


def streaming_chatbot(url: str, tokenizer: DialogueTokenizer, timeout: float = 10.0) -> RecordingChatBot:
    """A chatbot whose replies take 24 tokens of >= 50 ms each (no stop token): long enough to stream."""
    return RecordingChatBot(
        Slow(url, MODEL, timeout=timeout),
        tokenizer,
        SamplingConfig(max_new_tokens=24),
        seed=0,
        stops=False,
        fallback=FALLBACK,
    )


def run_bot(
    application: Application,
    scenario: Callable[[Dialogues], Awaitable[T]],
    webhook: FakeTelegram | None = None,
    poll_interval: float = 0.05,
) -> T:
    """Play `scenario(dialogues)` against the bot as `python -m bot` runs it: PTB's own run_polling
    (initialize, the application's post_init, polling, start; then stop, shutdown, post_shutdown)
    in a fresh event loop, the scenario a task in that loop; the bot stops when the scenario ends.
    With `webhook` (the fake Bot API) PTB's run_webhook instead (`--webhook`): it sets the webhook
    to WEBHOOK_URL, which the fake posts to at the local port the bot listens on.

    Unlike production, run_polling installs no signal handlers (Ctrl-C stays pytest's) and polls
    briskly, `poll_interval` s between polls (production: 0); the `python -m bot` tests run the
    whole entry point, signals included."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    async def play() -> T:
        while not application.running:  # run_polling starts it after post_init and polling
            await asyncio.sleep(0.01)
        # Two loop turns: past run_until_complete(start()), into run_forever, which stop_running ends.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        try:
            return await scenario(application.bot_data[STATE])
        finally:
            application.stop_running()

    task = loop.create_task(play())
    try:
        if webhook is None:
            application.run_polling(
                poll_interval=poll_interval,
                timeout=1,
                allowed_updates=ALLOWED_UPDATES,
                stop_signals=None,
                close_loop=False,
            )
        else:
            port = free_port()
            webhook.updates.webhook_target = f"http://127.0.0.1:{port}/telegram-hook"
            application.run_webhook(
                listen="127.0.0.1",
                port=port,
                url_path="telegram-hook",
                webhook_url=WEBHOOK_URL,
                secret_token=WEBHOOK_SECRET,
                allowed_updates=ALLOWED_UPDATES,
                stop_signals=None,
                close_loop=False,
            )
        result = task.result()  # the scenario's error, if it failed
        assert not asyncio.all_tasks(loop), f"left running: {asyncio.all_tasks(loop)}"
        return result
    finally:
        if not task.done():  # the start-up failed
            task.cancel()
            loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
        asyncio.set_event_loop(None)
        loop.close()


async def say(tg: FakeTelegram, chat_id: int, text: str | None = None, **kw) -> float:
    """Send a message and wait for the bot's next message to the chat; the seconds it took."""
    expected = len(tg.texts(chat_id)) + 1
    tg.message(chat_id, text, **kw)
    return await tg.wait_for(lambda: len(tg.texts(chat_id)) >= expected, timeout=60)


def saved_turns(settings: Settings, chat_id: int) -> list[str]:
    """The chat's history as the bot left it in its SQLite file (read while it runs, too)."""
    with closing(sqlite3.connect(settings.data_dir / FILENAME)) as db:
        rows = db.execute("SELECT role, text FROM messages WHERE chat_id = ? ORDER BY id DESC", (chat_id,))
        return merge_turns(rows, 100)


def generated(text: str) -> bool:
    """A reply the model generated, not one of the bot's fixed texts (the fallback for a model
    that said nothing twice among them)."""
    return bool(text.strip()) and text not in (UNAVAILABLE, SORRY, NOT_TEXT, HELP, START, FALLBACK)


def answered(text: str) -> bool:
    """A reply from the answering path: generated, or the fallback after two empty generations
    (what a garbage message or an unlucky draw of the tiny model gives). For tests of the bot's
    plumbing; tests of what the model says use generated()."""
    return generated(text) or text == FALLBACK


# -- `python -m bot` -----------------------------------------------------------------------------


def bot_env(tg: FakeTelegram, tmp_path: Path, **env: str) -> dict[str, str]:
    """The environment of a `python -m bot` that talks to the fake Bot API."""
    return {
        **os.environ,
        "TELEGRAM_BOT_TOKEN": tg.token,
        "TELEGRAM_BASE_URL": tg.url,
        "BOT_DATA_DIR": str(tmp_path),
        "BOT_METRICS_PORT": "0",
        **env,
    }


def python_m_bot(model_repository: Path, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bot",
        "--tokenizer",
        str(model_repository / MODEL),  # the model's folder: the bot follows its versions
        "--max-new-tokens",
        "8",
        *flags,
    ]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def wait(condition, timeout: float = 60.0, poll: float = 0.02) -> float:
    """Wait until the coroutine function `condition()` is true; the seconds it took."""
    start = time.monotonic()
    while not await condition():
        assert time.monotonic() - start < timeout, "timed out"
        await asyncio.sleep(poll)
    return time.monotonic() - start


class Replica:
    """`python -m bot` polling `tg`, its history in `database_url`; output in `log`."""

    def __init__(
        self, tg: FakeTelegram, triton, model_repository: Path, database_url: str, log: Path, **env: str
    ):
        self.tg, self.log = tg, log
        env = bot_env(
            tg,
            log.parent / "unused-data",
            TRITON_URL=triton.url,
            TRITON_MODEL="rudialogpt",
            BOT_DATABASE_URL=database_url,
            BOT_CHAT_LOCK_SECONDS=str(LOCK_SECONDS),
            **env,
        )
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                python_m_bot(model_repository), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def polling(self) -> bool:
        return bool(self.tg.of("getUpdates")) or self.process.poll() is not None

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)
