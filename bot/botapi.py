"""The Bot API as the bot calls it: the few calls it cannot work without, and the optional rest.

Essential, at start only: getMe (PTB's initialize: it checks the token and gives the bot's
@username) and, in webhook mode, setWebhook. A rejected token (getMe answering 401 or 404) ends the
process at once with one line naming TELEGRAM_BOT_TOKEN; a webhook the server refuses (a 4xx) with
one naming BOT_WEBHOOK_URL. A server error (5xx), flood control (429) or a timeout is retried with
backoff (START_DELAY s, doubling up to START_CAP s) for START_SECONDS, then the process ends with a
line saying which call the Bot API did not answer (the orchestrator restarts it, with its own
backoff). getUpdates is PTB's and retried for as long as the bot runs; replies (sendMessage) are
handled in bot/dialogues.py.

Optional (bot/metrics.py: OPTIONAL_METHODS): what a reply does not need. Each goes through
`OptionalCalls`: a failure of any kind (4xx, 5xx, timeout, a method the server lacks) is counted
in bot_optional_call_failures_total{method} and logged once per method and process (later ones at
DEBUG level), and the bot goes on without it. The command menu is set from a background task,
retried with backoff (MENU_TRIES tries; not again after a 404: the server lacks the method);
deleteWebhook at the start of long polling is skipped when it fails; typing, drafts and the flood
note are tried again with the next reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from telegram.error import EndPointNotFound, InvalidToken, NetworkError, RetryAfter, TelegramError, TimedOut
from telegram.ext import AIORateLimiter, ExtBot
from telegram.request import HTTPXRequest

from bot.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

START_SECONDS = 300.0  # how long getMe and setWebhook are retried at start before the bot exits
START_DELAY, START_CAP = 1.0, 30.0  # their backoff: the first wait and the longest, seconds
MENU_TRIES, MENU_DELAY, MENU_CAP = 10, 2.0, 300.0  # setMyCommands: tries, first wait, longest wait


class StartFailed(ValueError):
    """The bot cannot start: `python -m bot` prints it as one `error: …` line and exits with 2."""


def transient(exc: TelegramError) -> bool:
    """A failure the same call may get past later: a server error, a timeout, flood control."""
    return isinstance(exc, (TimedOut, RetryAfter)) or type(exc) is NetworkError


def unsupported(exc: TelegramError) -> bool:
    """The server lacks the method: the Bot API answers 404, which PTB raises as InvalidToken
    (the token itself was accepted by getMe at start)."""
    return isinstance(exc, (InvalidToken, EndPointNotFound))


class OptionalCalls:
    """Runs the Bot API calls the bot can do without: failures counted, logged once per method."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self._logged: set[str] = set()

    def failed(self, method: str, exc: TelegramError) -> None:
        self.metrics.optional_failures.labels(method).inc()
        if method in self._logged:
            log.debug("optional Bot API call %s failed again: %s", method, exc)
            return
        self._logged.add(method)
        log.warning(
            "optional Bot API call %s failed (%s: %s): the bot goes on without it; further "
            "failures of %s are counted in bot_optional_call_failures_total, not logged",
            method,
            type(exc).__name__,
            exc,
            method,
        )

    async def _try(self, method: str, call: Awaitable[object]) -> TelegramError | None:
        try:
            await call
        except TelegramError as exc:
            self.failed(method, exc)
            return exc
        return None

    async def call(self, method: str, call: Awaitable[object]) -> bool:
        """Await the call to `method`; whether it worked."""
        return await self._try(method, call) is None

    async def until_done(self, method: str, call: Callable[[], Awaitable[object]]) -> bool:
        """`call()` until it works, at most MENU_TRIES times, waiting MENU_DELAY s after the first
        failure and twice as long after each next one (at most MENU_CAP); not again after a 404
        (the server lacks the method). Whether it worked. Meant for a background task."""
        tries, delay = MENU_TRIES, MENU_DELAY
        for attempt in range(1, tries + 1):
            error = await self._try(method, call())
            if error is None:
                if attempt > 1:
                    log.info("optional Bot API call %s worked at try %d", method, attempt)
                return True
            if unsupported(error) or attempt == tries:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, MENU_CAP)
        log.warning(
            "optional Bot API call %s given up after %d tries: the bot works without it", method, attempt
        )
        return False


class BotAPI(ExtBot[int]):
    """PTB's ExtBot as ApplicationBuilder makes it (a pool of 256 connections, AIORateLimiter),
    its start-up calls made robust: getMe and setWebhook retried or refused with a clear line,
    deleteWebhook optional."""

    def __init__(self, token: str, base_url: str, optional: OptionalCalls):
        super().__init__(
            token,
            base_url=f"{base_url}/bot",
            base_file_url=f"{base_url}/file/bot",
            request=HTTPXRequest(connection_pool_size=256),
            get_updates_request=HTTPXRequest(),
            rate_limiter=AIORateLimiter(max_retries=2),
        )
        self._optional, self._api_url = optional, base_url  # (PTB lets a bot set only _names)

    async def _essential(self, method: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, again with backoff while it fails transiently, for START_SECONDS."""
        deadline, delay = time.monotonic() + START_SECONDS, START_DELAY
        while True:
            try:
                return await call()
            except TelegramError as exc:
                left = deadline - time.monotonic()
                if not transient(exc):
                    raise
                if left <= 0:
                    raise StartFailed(
                        f"TELEGRAM_BASE_URL: the Bot API at {self._api_url} did not answer {method} "
                        f"within {START_SECONDS:g} s ({type(exc).__name__}: {exc}); is it up and reachable?"
                    ) from None
                log.warning("%s failed (%s: %s): retrying in %.1f s", method, type(exc).__name__, exc, delay)
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, START_CAP)

    async def initialize(self) -> None:
        """PTB's initialize (getMe), retried while the Bot API is down; a rejected token ends it."""
        start = super().initialize
        try:
            await self._essential("getMe", start)
        except InvalidToken:
            raise StartFailed(
                "TELEGRAM_BOT_TOKEN was rejected by the Bot API (getMe): copy it from @BotFather again"
            ) from None
        except TelegramError as exc:
            raise StartFailed(
                f"TELEGRAM_BASE_URL: the Bot API at {self._api_url} refused getMe: {exc}"
            ) from None

    async def set_webhook(self, *args: Any, **kwargs: Any) -> bool:
        """setWebhook, retried while the Bot API is down; a refusal ends the start."""
        set_webhook = super().set_webhook
        try:
            return await self._essential("setWebhook", lambda: set_webhook(*args, **kwargs))
        except TelegramError as exc:
            raise StartFailed(
                f"BOT_WEBHOOK_URL: the Bot API refused to set the webhook ({type(exc).__name__}: {exc}): "
                "it must be a public https:// URL on port 443, 80, 88 or 8443"
            ) from None

    async def delete_webhook(self, *args: Any, **kwargs: Any) -> bool:
        """deleteWebhook (PTB calls it before long polling): optional. If a webhook really is set,
        getUpdates fails with a Conflict, which PTB logs and retries."""
        return await self._optional.call("deleteWebhook", super().delete_webhook(*args, **kwargs))
