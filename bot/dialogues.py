"""What the Telegram handlers share: the model, the history and the metrics; each message answered once.

Each chat's messages are handled one turn at a time, in order of arrival (the history's chat lock);
different chats concurrently. Messages that arrive while their chat's turn is under way wait in
the chat's short line (bot/waiting.py) and are answered together, as one turn; a flood beyond
its bound is skipped with one note. A message is known by Telegram's (chat id, message id): one the
history has as answered is only acknowledged when it comes again (a redelivery, the same update at
another replica). The user's message is stored before generating; the reply is recorded (with its
prompt turns, model version and sampling, for votes) before it is sent with its 👍/👎 buttons
(bot/feedback.py), and marked sent after, so a reply whose sender died mid-send is sent by the
chat's next turn, and a message whose handling died before its reply was stored is answered at the
next start (`recover`) or with the chat's next message. While a reply is generated the chat shows "typing…",
and a private chat also the reply so far, as drafts (bot/drafts.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from telegram import Bot, Chat, Message
from telegram.constants import ChatAction, ChatType
from telegram.error import NetworkError, TelegramError, TimedOut

from bot.botapi import OptionalCalls
from bot.drafts import Drafts
from bot.feedback import Buttons, Votes, keyboard
from bot.history.store import Store, StoreUnavailable
from bot.metrics import Metrics
from bot.text import split_message
from bot.texts import FLOOD_NOTE, RESET_DONE, SORRY, UNAVAILABLE
from bot.waiting import Pending, Waiting, again
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
async def typing(message: Message, optional: OptionalCalls) -> AsyncIterator[None]:
    """Show "typing…" in the message's chat until the block ends (an optional call)."""

    async def keep_typing() -> None:
        while True:
            await optional.call("sendChatAction", message.reply_chat_action(ChatAction.TYPING))
            await asyncio.sleep(TYPING_EVERY)

    task = asyncio.create_task(keep_typing())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait({task})


class Dialogues:
    """The model, the history and the metrics; each incoming message is answered once, one turn at
    a time per chat (the chat's line, bot/waiting.py; a turn: `_take_turn`)."""

    def __init__(
        self,
        chatbot: ChatBot,
        history: Store,
        metrics: Metrics,
        health_every: float,
        draft_every: float = 0.0,
        optional: OptionalCalls | None = None,
        buttons: Buttons | None = None,
    ):
        self.chatbot, self.history, self.metrics = chatbot, history, metrics
        chatbot.versions.watch(metrics.model_changed)
        self.health_every, self.draft_every = health_every, draft_every
        self.optional = optional or OptionalCalls(metrics)
        self.buttons = buttons or Buttons()
        self.votes = Votes(history, metrics, self.optional, self.buttons)
        self.waiting = Waiting(history, metrics, self._take_turn, self.failed)
        self._background: set[asyncio.Task[Reply]] = set()
        self._tasks: list[asyncio.Task[Any]] = []  # the health checks, the recovery, the command menu

    def streams(self, message: Message) -> bool:
        """Whether the reply to `message` is shown as drafts: only private chats have them."""
        return self.draft_every > 0 and message.chat.type == ChatType.PRIVATE

    # -- what the handlers call: the message joins its chat's line --------------------------------

    async def answer(self, message: Message, text: str) -> None:
        """Answer the user's text (with the texts waiting beside it), once."""
        await self.waiting.submit(Pending(message, "text", text))

    async def once(self, message: Message, text: str) -> None:
        """Answer with a fixed text (a command's), once."""
        await self.waiting.submit(Pending(message, "fixed", text))

    async def reset(self, message: Message) -> None:
        """Forget the chat's dialogue (after the turns before it), once."""
        await self.waiting.submit(Pending(message, "reset"))

    async def command(self, message: Message, action: Callable[[], Awaitable[str]]) -> None:
        """Run `action` in the chat's turn (no reply is being written meanwhile) and send what it
        returns, once: /privacy, /share, /forget (bot/feedback.py)."""
        await self.waiting.submit(Pending(message, "command", action=action))

    async def _take_turn(self, turn: list[Pending]) -> None:
        """One turn: a command, or the texts that waited together, answered as one user turn."""
        first, last = turn[0], turn[-1].message
        chat_id, bot = last.chat_id, last.get_bot()
        if skipped := self.waiting.note_due(chat_id):
            log.info("chat %d floods: %d messages skipped; it gets the note", chat_id, skipped)
            await self.optional.call("sendMessage", bot.send_message(chat_id, FLOOD_NOTE))
        async with self.history.chat_turn(chat_id):
            await self._send_unsent(bot, chat_id)
            new = [p for p in turn if not await self._answered_before(*p.key)]
            if not new:
                return
            if first.kind == "fixed":
                await first.message.reply_text(first.text)
                await self.history.mark_answered(chat_id, first.message.message_id, turn=False)
            elif first.kind in ("reset", "command"):
                text = await first.action() if first.action else RESET_DONE
                if first.kind == "reset":
                    await self.history.reset(chat_id)
                await first.message.reply_text(text)
                await self.history.mark_answered(chat_id, first.message.message_id)
            else:
                for pending in new:
                    await self.history.add(chat_id, "user", pending.text, pending.message.message_id)
                await self._reply(new[-1].message)

    async def _send_unsent(self, bot: Bot, chat_id: int) -> None:
        """Send the replies a dead or cut-off sender left unsent (under the chat's lock)."""
        for unsent in await self.history.unsent(chat_id):
            log.info("chat %d: sending the reply to message %d again", chat_id, unsent.message_id)
            message = stand_in(bot, chat_id, unsent.message_id)
            await self._deliver(message, unsent.row, unsent.text, reply_id=unsent.reply)

    async def _answered_before(self, chat_id: int, message_id: int) -> bool:
        answered = await self.history.is_answered(chat_id, message_id)
        if answered:
            again(chat_id, message_id)
        return answered

    @asynccontextmanager
    async def turn(self, bot: Bot, chat_id: int, message_id: int) -> AsyncIterator[bool]:
        """The chat's turn for one stored message (`recover`): the chat's lock held (across
        replicas with PostgreSQL), the replies left unsent sent first; yields whether the message
        still needs its answer (False: it was answered already)."""
        async with self.history.chat_turn(chat_id):
            await self._send_unsent(bot, chat_id)
            yield not await self._answered_before(chat_id, message_id)

    async def failed(self, messages: list[Message], error: BaseException | None) -> None:
        """A turn or an update failed: log it with its traceback, count it, apologise for the last
        message and record the messages as answered, unless the history's database is down (the
        user is asked to write again)."""
        log.error("error while handling an update", exc_info=error)
        unavailable = isinstance(error, StoreUnavailable)
        kind = "telegram" if isinstance(error, TelegramError) else "database" if unavailable else "unexpected"
        self.metrics.errors.labels(kind).inc()
        if not messages:
            return
        try:
            await messages[-1].reply_text(UNAVAILABLE if unavailable else SORRY)
        except TelegramError as exc:
            log.warning("could not apologise: %s", exc)
        try:
            for message in messages if not unavailable else ():  # answered by the apology
                await self.history.mark_answered(message.chat_id, message.message_id, turn=False)
        except StoreUnavailable as exc:
            log.warning("could not record the apology: %s", exc)

    async def _reply(self, message: Message, quote: bool = False) -> None:
        """Generate the reply to the stored dialogue under "typing…" (and drafts), store it, send it."""
        chat_id = message.chat_id
        started = time.perf_counter()
        every = self.draft_every if self.streams(message) else 0
        drafts = Drafts(message.get_bot(), chat_id, every, self.metrics, self.optional)
        try:
            async with typing(message, self.optional), drafts:
                on_text = drafts.show if drafts.every else None
                turns = await self.history.turns(chat_id, CONTEXT_TURNS)
                reply = await self._reply_within(turns, on_text)
        except TritonError as exc:
            unavailable = isinstance(exc, TritonUnavailable)
            self.metrics.errors.labels("triton_unavailable" if unavailable else "triton_request").inc()
            self.metrics.triton_up.set(not unavailable)
            log.warning("chat %d: no reply: %s", chat_id, exc)
            await message.reply_text(UNAVAILABLE)
            await self.history.mark_answered(chat_id, message.message_id)
            return
        self.metrics.triton_up.set(1)
        sampling = asdict(self.chatbot.sampling)
        stored = await self.history.record_reply(
            chat_id, message.message_id, turns, reply.text, reply.version, sampling
        )
        await self._deliver(message, stored.row, reply.text, quote, stored.id)
        self._count(reply, started, drafts.first_shown)

    async def _deliver(
        self, message: Message, row: int, text: str, quote: bool = True, reply_id: int | None = None
    ) -> None:
        """Send the stored reply `row` to `message` (its last part with the vote buttons of
        `reply_id`, where the chat has them), record the messages it was sent as, then mark it
        sent. One Telegram refused is forgotten (the user never saw it); one lost on the way (it
        may have arrived) stays unsent and is sent again before the chat's next answer."""
        parts = split_message(text)
        buttons = keyboard(reply_id) if reply_id is not None and self.buttons.under(message.chat) else None
        sent: list[int] = []
        try:
            for k, part in enumerate(parts, 1):
                markup = buttons if k == len(parts) else None
                sent.append((await message.reply_text(part, do_quote=quote or None, reply_markup=markup)).id)
        except TelegramError as exc:
            if not isinstance(exc, TimedOut) and type(exc) is not NetworkError:
                await self.history.forget(message.chat_id, row)
            raise
        if reply_id is not None:
            await self.history.attach(message.chat_id, reply_id, sent)
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

    def run_in_background(self, bot: Bot, menu: Callable[[], Awaitable[object]] | None = None) -> None:
        """Answer what a stopped process left unanswered; keep bot_triton_up current also while
        nobody writes (a health check every `health_every` s); set the command menu (`menu()`,
        retried with backoff: bot/botapi.py)."""

        async def watch() -> None:
            while True:
                self.metrics.triton_up.set(await self.chatbot.client.is_ready())
                await asyncio.sleep(self.health_every)

        self._tasks = [asyncio.create_task(watch()), asyncio.create_task(self.recover(bot))]
        if menu is not None:
            self._tasks.append(asyncio.create_task(self.optional.until_done("setMyCommands", menu)))

    async def close(self) -> None:
        """Stop the background tasks and unfinished generations; close the history and the client."""
        tasks = [*self._tasks, *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.history.close()
        await self.chatbot.client.close()
