"""A reply shown in a private chat while it is generated, with the Bot API's sendMessageDraft.

One `draft_id` per reply (Telegram animates the changes of one draft); the final text is sent
with sendMessage as usual. Drafts go out from a task of their own, so a slow Bot API never slows
the generation: each draft carries the latest visible text, and the next one leaves no sooner
than `every` seconds after the previous one was answered. Calls go through the application's
rate limiter (AIORateLimiter) like every other call. Drafts are optional (bot/botapi.py): a draft
that fails is counted (and its method's first failure logged) and drafts stop for that reply; the
reply itself is sent as always, and the next reply tries drafts again.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from telegram import Bot
from telegram.constants import MessageLimit

from bot.botapi import OptionalCalls
from bot.metrics import Metrics
from bot.text import fit

log = logging.getLogger(__name__)

FINISH_WAIT = 1.0  # seconds a draft call still in flight may delay the final message, then it is dropped


class Drafts:
    """`async with Drafts(...) as drafts:` call `drafts.show(text)` as the reply grows (`every` 0: none)."""

    def __init__(self, bot: Bot, chat_id: int, every: float, metrics: Metrics, optional: OptionalCalls):
        self.bot, self.chat_id, self.every = bot, chat_id, every
        self.metrics, self.optional = metrics, optional
        self.draft_id = secrets.randbits(31) or 1  # non-zero, per reply
        self.first_shown: float | None = None  # perf_counter() when the first draft was answered
        self._text = ""
        self._changed = asyncio.Event()
        self._sending = self._closing = False
        self._task: asyncio.Task[None] | None = None

    def show(self, text: str) -> None:
        """Make `text` the next draft (a later call before it leaves replaces it)."""
        self._text = text[: fit(text, MessageLimit.MAX_TEXT_LENGTH)]
        self._changed.set()

    async def __aenter__(self) -> Drafts:
        if self.every > 0:
            self._task = asyncio.create_task(self._send_drafts())
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop: a draft in flight gets FINISH_WAIT s to land before the final message (never over it)."""
        self._closing = True
        if self._task is None:
            return
        if not self._sending:
            self._task.cancel()
        if not (await asyncio.wait({self._task}, timeout=FINISH_WAIT))[0]:
            self._task.cancel()
            await asyncio.wait({self._task})
        if not self._task.cancelled() and (error := self._task.exception()):
            log.error("chat %d: drafts stopped by an unexpected error", self.chat_id, exc_info=error)

    async def _send_drafts(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            self._sending = True
            try:
                shown = await self.optional.call(
                    "sendMessageDraft", self.bot.send_message_draft(self.chat_id, self.draft_id, self._text)
                )
            finally:
                self._sending = False
            if not shown:  # this reply comes without drafts
                self.metrics.drafts.labels("failed").inc()
                return
            self.metrics.drafts.labels("sent").inc()
            if self.first_shown is None:
                self.first_shown = time.perf_counter()
            if self._closing:
                return
            await asyncio.sleep(self.every)
