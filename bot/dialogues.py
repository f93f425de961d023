"""What the Telegram handlers share: the model, the history and the metrics; each message answered once.

Each chat's messages are handled one at a time, in order of arrival (the history's chat lock);
different chats concurrently. A message is known by Telegram's (chat id, message id): one the
history has as answered is only acknowledged when it comes again (a redelivery, the same update at
another replica). The user's message is stored before generating; the reply is stored before it is
sent and marked sent after, so a reply whose sender died mid-send is sent by the chat's next turn,
and a message whose handling died before its reply was stored is answered at the next start
(`recover`) or with the chat's next message. While a reply is generated the chat shows "typing…",
and a private chat also the reply so far, as drafts (bot/drafts.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from telegram import Bot, Chat, Message
from telegram.constants import ChatAction, ChatType
from telegram.error import NetworkError, TelegramError, TimedOut

from bot.drafts import Drafts
from bot.history.store import Store
from bot.metrics import Metrics
from bot.text import split_message
from bot.texts import RESET_DONE, UNAVAILABLE
from client.chat import ChatBot, Reply
from client.streaming import OnText
from client.transport import TritonError, TritonUnavailable
from contract.dialogue import CONTEXT_TURNS

log = logging.getLogger(__name__)

TYPING_EVERY = 4.0  # seconds between "typing…" actions (Telegram shows one for ~5 s)


def stand_in(bot: Bot, chat_id: int, message_id: int) -> Message:
    """A Message standing for one received before (its chat and id): its reply shortcuts answer it."""
    chat = Chat(chat_id, ChatType.PRIVATE if chat_id > 0 else ChatType.GROUP)  # groups' ids are negative
    message = Message(message_id, datetime.now(UTC), chat)
    message.set_bot(bot)
    return message


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
    """The model, the history and the metrics; each incoming message is answered once, one at a time
    per chat (see `turn`)."""

    def __init__(
        self,
        chatbot: ChatBot,
        history: Store,
        metrics: Metrics,
        health_every: float,
        draft_every: float = 0.0,
    ):
        self.chatbot, self.history, self.metrics = chatbot, history, metrics
        chatbot.versions.watch(metrics.model_changed)
        self.health_every, self.draft_every = health_every, draft_every
        self._background: set[asyncio.Task[Reply]] = set()
        self._tasks: list[asyncio.Task[None]] = []  # the health checks, the recovery at start

    def streams(self, message: Message) -> bool:
        """Whether the reply to `message` is shown as drafts: only private chats have them."""
        return self.draft_every > 0 and message.chat.type == ChatType.PRIVATE

    @asynccontextmanager
    async def turn(self, bot: Bot, chat_id: int, message_id: int) -> AsyncIterator[bool]:
        """The chat's turn for one incoming message: the chat's lock held (one message at a time,
        in order of arrival, across replicas with PostgreSQL), the replies a dead or cut-off sender
        left unsent sent first; yields whether the message still needs its answer (False: it was
        answered already and is only delivered again)."""
        async with self.history.chat_turn(chat_id):
            for unsent in await self.history.unsent(chat_id):
                log.info("chat %d: sending the reply to message %d again", chat_id, unsent.message_id)
                await self._deliver(stand_in(bot, chat_id, unsent.message_id), unsent.row, unsent.text)
            new = not await self.history.is_answered(chat_id, message_id)
            if not new:
                log.info(
                    "chat %d: message %d was answered before: delivered again, skipped", chat_id, message_id
                )
            yield new

    async def once(self, message: Message, text: str) -> None:
        """Answer with a fixed text (a command's), once."""
        async with self.turn(message.get_bot(), message.chat_id, message.message_id) as new:
            if new:
                await message.reply_text(text)
                await self.history.mark_answered(message.chat_id, message.message_id, turn=False)

    async def reset(self, message: Message) -> None:
        """Forget the chat's dialogue (after any reply still being written), once."""
        async with self.turn(message.get_bot(), message.chat_id, message.message_id) as new:
            if new:
                await self.history.reset(message.chat_id)
                await message.reply_text(RESET_DONE)
                await self.history.mark_answered(message.chat_id, message.message_id)

    async def answer(self, message: Message, text: str) -> None:
        """Store the user's message and answer it, once."""
        async with self.turn(message.get_bot(), message.chat_id, message.message_id) as new:
            if new:
                await self.history.add(message.chat_id, "user", text, message.message_id)
                await self._reply(message)

    async def _reply(self, message: Message, quote: bool = False) -> None:
        """Generate the reply to the stored dialogue under "typing…" (and drafts), store it, send it."""
        chat_id = message.chat_id
        started = time.perf_counter()
        drafts = Drafts(
            message.get_bot(), chat_id, self.draft_every if self.streams(message) else 0, self.metrics
        )
        try:
            async with typing(message), drafts:
                on_text = drafts.show if drafts.every else None
                reply = await self._reply_within(await self.history.turns(chat_id, CONTEXT_TURNS), on_text)
        except TritonError as exc:
            unavailable = isinstance(exc, TritonUnavailable)
            self.metrics.errors.labels("triton_unavailable" if unavailable else "triton_request").inc()
            self.metrics.triton_up.set(not unavailable)
            log.warning("chat %d: no reply: %s", chat_id, exc)
            await message.reply_text(UNAVAILABLE)
            await self.history.mark_answered(chat_id, message.message_id)
            return
        self.metrics.triton_up.set(1)
        row = await self.history.add(chat_id, "bot", reply.text, message.message_id)
        await self._deliver(message, row, reply.text, quote)
        self._count(reply, started, drafts.first_shown)

    async def _deliver(self, message: Message, row: int, text: str, quote: bool = True) -> None:
        """Send the stored reply `row` to `message`, then mark it sent. One Telegram refused is
        forgotten (the user never saw it); one lost on the way (it may have arrived) stays unsent
        and is sent again before the chat's next answer."""
        try:
            for part in split_message(text):
                await message.reply_text(part, do_quote=quote or None)
        except TelegramError as exc:
            if not isinstance(exc, TimedOut) and type(exc) is not NetworkError:
                await self.history.forget(message.chat_id, row)
            raise
        await self.history.mark_answered(message.chat_id, message.message_id, reply=row)

    async def recover(self, bot: Bot) -> None:
        """Answer the messages a stopped process stored and left unanswered (run at start)."""
        for chat_id, message_id in await self.history.unanswered():
            try:
                async with self.turn(bot, chat_id, message_id) as new:
                    if new:
                        log.info("chat %d: answering message %d, left unanswered", chat_id, message_id)
                        await self._reply(stand_in(bot, chat_id, message_id), quote=True)
            except Exception:  # the next chat is tried all the same
                log.exception("chat %d: message %d is still unanswered", chat_id, message_id)

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

    def run_in_background(self, bot: Bot) -> None:
        """Answer what a stopped process left unanswered; keep bot_triton_up current also while
        nobody writes (a health check every `health_every` s)."""

        async def watch() -> None:
            while True:
                self.metrics.triton_up.set(await self.chatbot.client.is_ready())
                await asyncio.sleep(self.health_every)

        self._tasks = [asyncio.create_task(watch()), asyncio.create_task(self.recover(bot))]

    async def close(self) -> None:
        """Stop the background tasks and unfinished generations; close the history and the client."""
        tasks = [*self._tasks, *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.history.close()
        await self.chatbot.client.close()
