"""Each chat's messages waiting for their turn in this process: a short line per chat, bounded.

A chat's messages are answered one turn at a time, in order of arrival (bot/dialogues.py). A
message that arrives while its chat's turn is under way waits here, and the handler that brought
it returns at once: the chat's first message's handler answers them all, turn after turn. A turn
is a run of waiting texts, answered together as one user turn (the history merges them), once;
or one command (/start, /help, /reset, /forget, the note to a sticker…), in its place in the line. Texts
that came while the previous turn was answered are taken once the chat has paused for SETTLE
seconds (at most SETTLE_MAX after the previous turn), as a person reads to the end before
answering: a chat that keeps writing gets a reply at most about every SETTLE_MAX seconds.

At most LIMIT messages of a chat wait. When another comes, the oldest waiting one is skipped: it
is recorded as answered without a reply (so a delivery of it again is not answered either; the
ids are written together, before the chat's next turn or SKIP_BATCH at a time), and the chat's
next turn starts with one FLOOD_NOTE, once per flood (until the chat is quiet again). So a
flooding chat costs at most LIMIT waiting messages, SKIP_BATCH skipped ids and one handler task in
memory, and its inbox rows are pruned as any chat's (bot/history/store.py: KEEP_ROWS).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from telegram import Message

from bot.history.store import Store, StoreUnavailable
from bot.metrics import Metrics

log = logging.getLogger(__name__)

LIMIT = 10  # messages of one chat waiting for their turn (beyond: the oldest is skipped)
SKIP_BATCH = 100  # skipped ids of a chat written in one transaction at most (and at its next turn)
SETTLE, SETTLE_MAX = 0.5, 5.0  # seconds of the chat's pause awaited before a next text turn; at most
# answered by the model, by a fixed text, /reset, or by what a command's `action` did and says
Kind = Literal["text", "fixed", "reset", "command"]


@dataclass
class Pending:
    """One incoming message waiting for its turn: its kind and text (the user's, or the fixed reply);
    a command's `action`, run in the chat's turn, does its work and returns the reply."""

    message: Message
    kind: Kind
    text: str = ""
    action: Callable[[], Awaitable[str]] | None = None

    @property
    def key(self) -> tuple[int, int]:
        return self.message.chat_id, self.message.message_id


@dataclass
class _Chat:
    line: deque[Pending] = field(default_factory=deque)
    last: float = 0.0  # time.monotonic() when its latest message came
    skipped: int = 0  # messages skipped in this flood
    unrecorded: list[int] = field(default_factory=list)  # ids skipped, not written to the history yet
    noted: bool = False  # the note went out in this flood


def again(chat_id: int, message_id: int, answered: bool = True) -> None:
    """Log a message delivered again (Telegram lost a confirmation, a webhook retried, a replica)."""
    why = "was answered before" if answered else "is waiting or being answered"
    log.info("chat %d: message %d %s: delivered again, skipped", chat_id, message_id, why)


class Waiting:
    """The waiting lines of the chats that have a turn under way in this process; `submit` a
    message, and `take_turn(turn)` answers each turn (`failed(messages, error)` if it raises)."""

    def __init__(
        self,
        history: Store,
        metrics: Metrics,
        take_turn: Callable[[list[Pending]], Awaitable[None]],
        failed: Callable[[list[Message], BaseException], Awaitable[None]],
        limit: int = LIMIT,
    ):
        self.history, self.metrics, self.limit = history, metrics, limit
        self._take_turn, self._failed = take_turn, failed
        self._chats: dict[int, _Chat] = {}  # a chat is here while its turns go on
        self._keys: set[tuple[int, int]] = set()  # messages waiting or in their turn

    def holds(self, key: tuple[int, int]) -> bool:
        """Whether the message is waiting or being answered here (a delivery again is dropped)."""
        return key in self._keys

    def busy(self, chat_id: int) -> bool:
        """Whether the chat has a turn under way or messages waiting here."""
        return chat_id in self._chats

    def __len__(self) -> int:
        """Messages waiting, over all chats."""
        return sum(len(chat.line) for chat in self._chats.values())

    def add(self, pending: Pending) -> bool:
        """Queue the message (the oldest waiting one skipped if the line is full); whether its
        chat had no turn under way, so the caller answers the chat's line now."""
        chat_id = pending.message.chat_id
        first = chat_id not in self._chats
        chat = self._chats.setdefault(chat_id, _Chat())
        chat.line.append(pending)
        chat.last = time.monotonic()
        self._keys.add(pending.key)
        if len(chat.line) > self.limit:  # its key stays known until it is written
            skipped = chat.line.popleft()
            chat.unrecorded.append(skipped.message.message_id)
            chat.skipped += 1
            self.metrics.skipped.inc()
            log.debug("chat %d: message %d skipped: its chat floods", *skipped.key)
        return first

    def take(self, chat_id: int) -> list[Pending]:
        """The chat's next turn: the texts at the head of its line, or its next command; [] when
        nothing waits (the chat's turns end: its next message starts them again)."""
        chat = self._chats.get(chat_id)
        if chat is None or not chat.line:
            self._chats.pop(chat_id, None)
            return []
        turn = [chat.line.popleft()]
        while turn[0].kind == "text" and chat.line and chat.line[0].kind == "text":
            turn.append(chat.line.popleft())
        return turn

    def note_due(self, chat_id: int) -> int:
        """How many messages were skipped, if the chat is to get its note now (once per flood)."""
        chat = self._chats.get(chat_id)
        if chat is None or not chat.skipped or chat.noted:
            return 0
        chat.noted = True
        return chat.skipped

    def done(self, turn: list[Pending]) -> None:
        """The turn is over (answered or failed): a delivery of its messages again is checked
        against the history from now on."""
        for pending in turn:
            self._keys.discard(pending.key)

    def drop(self, chat_id: int) -> None:
        """Forget the chat's line (its answering task ended early: the process is stopping)."""
        chat = self._chats.pop(chat_id, None)
        for pending in chat.line if chat else ():
            self._keys.discard(pending.key)
        for message_id in chat.unrecorded if chat else ():
            self._keys.discard((chat_id, message_id))

    async def submit(self, pending: Pending) -> None:
        """Queue the message unless it is here already or answered; if its chat had no turn under
        way, answer the chat's line in this task, turn after turn, until it is empty."""
        chat_id, message_id = pending.key
        if self.holds(pending.key) or await self.history.is_answered(chat_id, message_id):
            again(chat_id, message_id, answered=not self.holds(pending.key))
            return
        if self.holds(pending.key):  # it came again while the history was asked
            again(chat_id, message_id, answered=False)
            return
        first = self.add(pending)
        if len(self._chats[chat_id].unrecorded) >= SKIP_BATCH:
            await self._record_skipped(chat_id)
        if not first:
            return
        try:
            while turn := self.take(chat_id):
                try:
                    await self._record_skipped(chat_id)
                    await self._take_turn(turn)
                except Exception as exc:  # the next turn is taken all the same
                    await self._failed([p.message for p in turn], exc)
                finally:
                    self.done(turn)
                await self._settle(chat_id)
        finally:
            self.drop(chat_id)  # nothing is left, unless stopped early

    async def _settle(self, chat_id: int) -> None:
        """Before a text turn that waited: until the chat pauses for SETTLE s, SETTLE_MAX s at most."""
        chat, deadline = self._chats.get(chat_id), time.monotonic() + SETTLE_MAX
        while chat and chat.line and chat.line[0].kind == "text" and (now := time.monotonic()) < deadline:
            if (pause := now - chat.last) >= SETTLE:
                return
            await asyncio.sleep(min(SETTLE - pause, deadline - now))

    async def _record_skipped(self, chat_id: int) -> None:
        """Write the chat's skipped ids as answered, in one transaction."""
        chat = self._chats.get(chat_id)
        if chat is None or not chat.unrecorded:
            return
        ids, chat.unrecorded = chat.unrecorded, []
        try:
            await self.history.skip(chat_id, ids)
        except StoreUnavailable as exc:
            log.warning("chat %d: could not record %d skipped messages: %s", chat_id, len(ids), exc)
        finally:
            for message_id in ids:
                self._keys.discard((chat_id, message_id))
