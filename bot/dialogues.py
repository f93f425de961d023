"""What the Telegram handlers share: the model, the history, the metrics and a lock per chat.

Each chat's messages are answered one at a time, in order of arrival (its lock); different chats
concurrently. The user's message is stored before generating and the reply after it is sent
(bot/history.py), so the dialogue survives restarts and failures. While a reply is generated the
chat shows "typing…", and a private chat also the reply so far, as drafts (bot/drafts.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from telegram import Message
from telegram.constants import ChatAction, ChatType
from telegram.error import TelegramError

from bot.chat import ChatBot, Reply
from bot.console import UNAVAILABLE
from bot.drafts import Drafts
from bot.history import Store
from bot.metrics import Metrics
from bot.streaming import OnText
from bot.text import split_message
from bot.triton_client import TritonError, TritonUnavailable
from contract.dialogue import CONTEXT_TURNS

log = logging.getLogger(__name__)

TYPING_EVERY = 4.0  # seconds between "typing…" actions (Telegram shows one for ~5 s)


@asynccontextmanager
async def typing(message: Message) -> AsyncIterator[None]:
    """Show "typing…" in the message's chat until the block ends."""

    async def keep_typing() -> None:
        while True:
            try:
                await message.reply_chat_action(ChatAction.TYPING)
            except TelegramError as exc:
                log.debug("chat action not sent: %s", exc)
            await asyncio.sleep(TYPING_EVERY)

    task = asyncio.create_task(keep_typing())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait({task})


class Dialogues:
    """The model, the history and the metrics, with a lock per chat: one message at a time per chat."""

    def __init__(
        self,
        chatbot: ChatBot,
        history: Store,
        metrics: Metrics,
        health_every: float,
        draft_every: float = 0.0,
    ):
        self.chatbot, self.history, self.metrics = chatbot, history, metrics
        self.health_every, self.draft_every = health_every, draft_every
        self._background: set[asyncio.Task[Reply]] = set()
        self._watcher: asyncio.Task[None] | None = None

    def lock(self, chat_id: int) -> AbstractAsyncContextManager[None]:
        """The chat's lock: its messages are answered one at a time, in order of arrival (across
        replicas with PostgreSQL)."""
        return self.history.chat_turn(chat_id)

    def streams(self, message: Message) -> bool:
        """Whether the reply to `message` is shown as drafts: only private chats have them."""
        return self.draft_every > 0 and message.chat.type == ChatType.PRIVATE

    async def answer(self, message: Message, text: str) -> None:
        """Store the user's turn, generate under "typing…" (and drafts), send the reply and store it."""
        chat_id = message.chat_id
        async with self.lock(chat_id):
            await self.history.add(chat_id, "user", text)
            started = time.perf_counter()
            drafts = Drafts(
                message.get_bot(), chat_id, self.draft_every if self.streams(message) else 0, self.metrics
            )
            try:
                async with typing(message), drafts:
                    on_text = drafts.show if drafts.every else None
                    reply = await self._reply_within(
                        await self.history.turns(chat_id, CONTEXT_TURNS), on_text
                    )
            except TritonError as exc:
                unavailable = isinstance(exc, TritonUnavailable)
                self.metrics.errors.labels("triton_unavailable" if unavailable else "triton_request").inc()
                self.metrics.triton_up.set(not unavailable)
                log.warning("chat %d: no reply: %s", chat_id, exc)
                await message.reply_text(UNAVAILABLE)
                return
            self.metrics.triton_up.set(1)
            for part in split_message(reply.text):
                await message.reply_text(part)
            await self.history.add(chat_id, "bot", reply.text)
            self._count(reply, started, drafts.first_shown)

    def _count(self, reply: Reply, started: float, first_shown: float | None) -> None:
        """Metrics and a log line for a reply just sent."""
        now = time.perf_counter()
        self.metrics.replies.inc()
        self.metrics.latency.observe(now - started)
        self.metrics.first_text.observe((first_shown or now) - started)
        self.metrics.tokens.inc(len(reply.generation.tokens))
        log.info(
            "reply of %d tokens in %.0f ms, first text after %.0f ms",
            len(reply.generation.tokens),
            (now - started) * 1000,
            ((first_shown or now) - started) * 1000,
        )

    async def _reply_within(self, turns: list[str], on_text: OnText | None) -> Reply:
        """The model's reply, given up after the Triton client's timeout (cleanup goes on meanwhile)."""
        task = asyncio.create_task(self.chatbot.reply(turns, on_text=on_text))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.chatbot.client.timeout)
        except TimeoutError:
            raise TritonUnavailable(f"no reply within {self.chatbot.client.timeout:g} s") from None
        finally:
            task.cancel()  # no-op when it is done; frees Triton's cache (END) when it is not

    def watch_triton(self) -> None:
        """Keep bot_triton_up current also while nobody writes: a health check every `health_every` s."""

        async def watch() -> None:
            while True:
                self.metrics.triton_up.set(await self.chatbot.client.is_ready())
                await asyncio.sleep(self.health_every)

        self._watcher = asyncio.create_task(watch())

    async def close(self) -> None:
        """Stop the health checks and unfinished generations; close the history and the client."""
        tasks = [task for task in (self._watcher, *self._background) if task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.history.close()
        await self.chatbot.client.close()
