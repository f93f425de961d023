"""The Telegram bot (python-telegram-bot 22): long polling by default, a webhook with --webhook.

Updates are handled concurrently, so one slow reply never holds up other chats; the messages of
one chat are answered in order (a lock per chat). Each text message is stored before generating
and the reply after it is sent (bot/history.py), so the dialogue survives restarts and failures.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncContextManager, AsyncIterator, Mapping
from urllib.parse import urlsplit

from telegram import BotCommand, Message, Update
from telegram.constants import ChatAction, ChatType, MessageLimit
from telegram.error import InvalidToken, TelegramError
from telegram.ext import (AIORateLimiter, Application, ApplicationBuilder, CommandHandler, ContextTypes,
                          MessageHandler, filters)

from bot.chat import ChatBot, Reply
from bot.console import RESET_DONE, UNAVAILABLE
from bot.history import DatabaseSettings, Store, StoreUnavailable, open_store
from bot.metrics import Metrics
from bot.triton_client import TritonError, TritonUnavailable
from contract.dialogue import CONTEXT_TURNS, clean_turn

log = logging.getLogger(__name__)

START = ("Привет! Я бот-собеседник: отвечаю с помощью нейросети ruDialoGPT и помню три последние "
         "реплики разговора. Просто напиши мне что-нибудь.\n/help — подсказка, /reset — начать заново.")
HELP = ("Пиши сообщения — я отвечаю, учитывая три последние реплики.\n"
        "/reset — забыть разговор и начать сначала.\n"
        "В группе я отвечаю, когда меня упоминают (@имя) или отвечают на моё сообщение.\n"
        "Ответы пишет нейросеть: они бывают странными и не обязательно верны.")
NOT_TEXT = "Я понимаю только текст — напиши, пожалуйста, словами."
REFUSED = "Извините, в этом чате бот недоступен."
SORRY = "Что-то пошло не так. Попробуйте, пожалуйста, ещё раз чуть позже."
COMMANDS = [BotCommand("start", "что это за бот"), BotCommand("help", "подсказка"),
            BotCommand("reset", "начать разговор заново")]
TYPING_EVERY = 4.0  # seconds between "typing…" actions (Telegram shows one for ~5 s)
HEALTH_EVERY = 15.0  # seconds between Triton health checks for bot_triton_up
ALLOWED_UPDATES = [Update.MESSAGE]
STATE = "dialogues"  # key of the Dialogues in application.bot_data


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(env.get(name) or default)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {env[name]!r}") from None


@dataclass(frozen=True)
class Settings:
    """The bot's environment variables (the README lists them)."""

    token: str = field(repr=False)
    base_url: str = "https://api.telegram.org"
    data_dir: Path = Path("data")
    allowed_chat_ids: frozenset[int] = frozenset()
    metrics_port: int = 9100
    webhook_url: str = ""
    webhook_secret: str = field(default="", repr=False)
    webhook_port: int = 8443
    database: DatabaseSettings = DatabaseSettings()  # BOT_DATABASE_URL etc.: PostgreSQL history

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, webhook: bool = False) -> Settings:
        """Read and check the variables; a ValueError names the one that is missing or wrong."""
        token = env.get("TELEGRAM_BOT_TOKEN", "").strip()
        if not token:
            raise ValueError("TELEGRAM_BOT_TOKEN is not set: create a bot with @BotFather and export its token")
        ids = env.get("ALLOWED_CHAT_IDS", "")
        try:
            allowed = frozenset(int(i) for i in ids.split(",") if i.strip())
        except ValueError:
            raise ValueError(f"ALLOWED_CHAT_IDS must be comma-separated chat ids, got {ids!r}") from None
        settings = cls(token, env.get("TELEGRAM_BASE_URL", cls.base_url).rstrip("/"),
                       Path(env.get("BOT_DATA_DIR") or cls.data_dir), allowed,
                       _int(env, "BOT_METRICS_PORT", cls.metrics_port), env.get("BOT_WEBHOOK_URL", ""),
                       env.get("BOT_WEBHOOK_SECRET", ""), _int(env, "BOT_WEBHOOK_PORT", cls.webhook_port),
                       DatabaseSettings.from_env(env))
        if webhook and not settings.webhook_url.startswith("https://"):
            raise ValueError("--webhook needs BOT_WEBHOOK_URL, the public https:// URL Telegram posts to")
        if webhook and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", settings.webhook_secret):
            raise ValueError("--webhook needs BOT_WEBHOOK_SECRET: 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return settings


def _fit(text: str, limit: int) -> int:
    """How many leading characters of `text` fit in `limit` UTF-16 units."""
    units = 0
    for i, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return i
    return len(text)


def split_message(text: str, limit: int = MessageLimit.MAX_TEXT_LENGTH) -> list[str]:
    """`text` in parts of at most `limit` UTF-16 units (Telegram's measure), cut at spaces if possible."""
    parts = []
    while (cut := _fit(text, limit)) < len(text):
        space = text.rfind(" ", 0, cut + 1)
        cut = space if space > cut // 2 else max(cut, 1)
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    return [*parts, text] if text else parts


class RedactToken(logging.Filter):
    """Replaces the bot token (in any case: error texts get capitalised) in a record's message and
    traceback before a handler writes it."""

    def __init__(self, token: str):
        super().__init__()
        self.token = token
        self._pattern = re.compile(re.escape(token), re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self._pattern.search(message):
            record.msg, record.args = self._pattern.sub("<TOKEN>", message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._pattern.sub("<TOKEN>", record.exc_text)
        return True


def hide_token_in_logs(token: str) -> None:
    """Add RedactToken to every handler of the root logger (once per token)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactToken) and f.token == token for f in handler.filters):
            handler.addFilter(RedactToken(token))


class Addressed(filters.MessageFilter):
    """Private chats; in groups only messages that mention the bot or reply to one of its messages."""

    def filter(self, message: Message) -> bool:
        if message.chat.type == ChatType.PRIVATE:
            return True
        bot = message.get_bot()
        replied = message.reply_to_message
        if replied and replied.from_user and replied.from_user.id == bot.id:
            return True
        return f"@{bot.username}".lower() in (message.text or message.caption or "").lower()


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
    """What the handlers share: the model, the history, the metrics and a lock per chat."""

    def __init__(self, chatbot: ChatBot, history: Store, metrics: Metrics, health_every: float):
        self.chatbot, self.history, self.metrics, self.health_every = chatbot, history, metrics, health_every
        self._background: set[asyncio.Task] = set()
        self._watcher: asyncio.Task | None = None

    def lock(self, chat_id: int) -> AsyncContextManager[None]:
        """The chat's lock: its messages are answered one at a time, in order of arrival (across
        replicas with PostgreSQL)."""
        return self.history.chat_turn(chat_id)

    async def answer(self, message: Message, text: str) -> None:
        """Store the user's turn, generate under "typing…", send the reply and store it."""
        chat_id = message.chat_id
        async with self.lock(chat_id):
            await self.history.add(chat_id, "user", text)
            started = time.perf_counter()
            try:
                async with typing(message):
                    reply = await self._reply_within(await self.history.turns(chat_id, CONTEXT_TURNS))
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
            self.metrics.replies.inc()
            self.metrics.latency.observe(time.perf_counter() - started)
            self.metrics.tokens.inc(len(reply.generation.tokens))
            log.info("chat %d: reply of %d tokens in %.0f ms", chat_id, len(reply.generation.tokens),
                     reply.seconds * 1000)

    async def _reply_within(self, turns: list[str]) -> Reply:
        """The model's reply, given up after the Triton client's timeout (cleanup goes on meanwhile)."""
        task = asyncio.create_task(self.chatbot.reply(turns))
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


def _dialogues(context: ContextTypes.DEFAULT_TYPE) -> Dialogues:
    return context.bot_data[STATE]


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Greet the user and say what the bot is."""
    await update.effective_message.reply_text(START)


async def help_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Explain how to talk to the bot."""
    await update.effective_message.reply_text(HELP)


async def reset(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Forget this chat's dialogue (after any reply still being written)."""
    dialogues, chat_id = _dialogues(context), update.effective_chat.id
    async with dialogues.lock(chat_id):
        await dialogues.history.reset(chat_id)
    await update.effective_message.reply_text(RESET_DONE)


async def on_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Answer a text message (without the bot's @mention); blank ones are ignored."""
    message = update.effective_message
    text = clean_turn(re.sub(rf"@{re.escape(context.bot.username)}\b", " ", message.text, flags=re.I))
    if text:
        await _dialogues(context).answer(message, text)


async def not_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Tell the user that only text is understood (stickers, photos, voice…)."""
    await update.effective_message.reply_text(NOT_TEXT)


async def refuse(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Refuse a chat that is not on ALLOWED_CHAT_IDS."""
    log.info("chat %d is not allowed", update.effective_chat.id)
    await update.effective_message.reply_text(REFUSED)


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log the error with its traceback and apologise to the user."""
    log.error("error while handling an update", exc_info=context.error)
    unavailable = isinstance(context.error, StoreUnavailable)  # the history's database is down
    kind = "telegram" if isinstance(context.error, TelegramError) else "database" if unavailable else "unexpected"
    _dialogues(context).metrics.errors.labels(kind).inc()
    if isinstance(update, Update) and update.effective_message:
        try:
            await update.effective_message.reply_text(UNAVAILABLE if unavailable else SORRY)
        except TelegramError as exc:
            log.warning("could not apologise: %s", exc)


async def post_init(application: Application) -> None:
    """Connect the history, publish the command menu and start the Triton health checks."""
    await application.bot_data[STATE].history.start()
    await application.bot.set_my_commands(COMMANDS)
    application.bot_data[STATE].watch_triton()


async def post_shutdown(application: Application) -> None:
    """Stop the health checks, close the history and the Triton client."""
    await application.bot_data[STATE].close()


def build_application(chatbot: ChatBot, settings: Settings, metrics: Metrics | None = None,
                      health_every: float = HEALTH_EVERY) -> Application:
    """The bot's Application with its handlers; also hides the token in every log line."""
    hide_token_in_logs(settings.token)
    application = (ApplicationBuilder().token(settings.token)
                   .base_url(f"{settings.base_url}/bot").base_file_url(f"{settings.base_url}/file/bot")
                   .rate_limiter(AIORateLimiter(max_retries=2)).concurrent_updates(True)
                   .post_init(post_init).post_shutdown(post_shutdown).build())
    history = open_store(settings.data_dir, settings.database)
    application.bot_data[STATE] = Dialogues(chatbot, history, metrics or Metrics(), health_every)
    addressed = Addressed()
    allowed = filters.Chat(chat_id=settings.allowed_chat_ids) if settings.allowed_chat_ids else filters.ALL
    if settings.allowed_chat_ids:
        application.add_handler(MessageHandler(addressed & ~allowed, refuse))
    application.add_handlers([
        CommandHandler("start", start, filters=allowed),
        CommandHandler("help", help_command, filters=allowed),
        CommandHandler("reset", reset, filters=allowed),
        MessageHandler(allowed & addressed & filters.COMMAND, help_command),
        MessageHandler(allowed & addressed & filters.TEXT, on_text),
        MessageHandler(allowed & addressed & ~filters.StatusUpdate.ALL, not_text),
    ])
    application.add_error_handler(on_error)
    return application


def run_telegram(chatbot: ChatBot, webhook: bool = False) -> None:
    """Run the bot until SIGINT/SIGTERM; settings from the environment (Settings.from_env)."""
    settings = Settings.from_env(webhook=webhook)
    metrics = Metrics()
    if settings.metrics_port:
        try:
            metrics.serve(settings.metrics_port)
        except OSError as exc:
            raise ValueError(f"BOT_METRICS_PORT {settings.metrics_port}: {exc}") from None
    application = build_application(chatbot, settings, metrics)
    log.info("Telegram bot: %s, history in %s, metrics on %s", "webhook" if webhook else "long polling",
             application.bot_data[STATE].history.where, settings.metrics_port or "off")
    try:
        if webhook:
            application.run_webhook(listen="0.0.0.0", port=settings.webhook_port,
                                    url_path=urlsplit(settings.webhook_url).path.lstrip("/"),
                                    webhook_url=settings.webhook_url, secret_token=settings.webhook_secret,
                                    allowed_updates=ALLOWED_UPDATES)
        else:
            application.run_polling(allowed_updates=ALLOWED_UPDATES)
    except InvalidToken:
        raise ValueError("TELEGRAM_BOT_TOKEN was rejected by the Bot API: copy it from @BotFather again") from None
