"""The Telegram bot's runner (python-telegram-bot 22): long polling by default, a webhook with --webhook.

Where things are: settings in bot/settings.py, handlers in bot/handlers.py, the texts users see
in bot/texts.py, the per-chat answering (locks, typing, history, metrics) in bot/dialogues.py,
drafts of a reply being generated in bot/drafts.py, text splitting in bot/text.py, token
redaction in bot/redact.py.
Here only the wiring: build the Application, start and stop what it shares.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from telegram import Update
from telegram.error import InvalidToken
from telegram.ext import AIORateLimiter, ApplicationBuilder

from bot.dialogues import Dialogues
from bot.handlers import COMMANDS, STATE, BotApplication, add_handlers
from bot.history import open_store
from bot.metrics import Metrics
from bot.redact import hide_token_in_logs
from bot.settings import Settings
from client.chat import ChatBot

log = logging.getLogger(__name__)

HEALTH_EVERY = 15.0  # seconds between Triton health checks for bot_triton_up
ALLOWED_UPDATES = [Update.MESSAGE]


async def post_init(application: BotApplication) -> None:
    """Connect the history, publish the command menu, start answering what a stopped process left
    unanswered and the Triton health checks."""
    await application.bot_data[STATE].history.start()
    await application.bot.set_my_commands(COMMANDS)
    application.bot_data[STATE].run_in_background(application.bot)


async def post_shutdown(application: BotApplication) -> None:
    """Stop the background tasks and generations, close the history and the Triton client."""
    await application.bot_data[STATE].close()


def build_application(
    chatbot: ChatBot, settings: Settings, metrics: Metrics | None = None, health_every: float = HEALTH_EVERY
) -> BotApplication:
    """The bot's Application with its handlers; also hides the token in every log line."""
    hide_token_in_logs(settings.token)
    application = (
        ApplicationBuilder()
        .token(settings.token)
        .base_url(f"{settings.base_url}/bot")
        .base_file_url(f"{settings.base_url}/file/bot")
        .rate_limiter(AIORateLimiter(max_retries=2))
        .concurrent_updates(True)
        .post_init(post_init)
        .post_shutdown(post_shutdown)
        .build()
    )
    history = open_store(settings.data_dir, settings.database, settings.share_default)
    application.bot_data[STATE] = Dialogues(
        chatbot, history, metrics or Metrics(), health_every, settings.draft_every
    )
    add_handlers(application, settings.allowed_chat_ids)
    return application


def run_telegram(chatbot: ChatBot, settings: Settings, webhook: bool = False) -> None:
    """Run the bot until SIGINT/SIGTERM (`settings` checked for its mode by Settings.from_env)."""
    metrics = Metrics()
    if settings.metrics_port:
        try:
            metrics.serve(settings.metrics_port)
        except OSError as exc:
            raise ValueError(f"BOT_METRICS_PORT {settings.metrics_port}: {exc}") from None
    application = build_application(chatbot, settings, metrics)
    log.info(
        "Telegram bot: %s, history in %s, metrics on %s, drafts %s",
        "webhook" if webhook else "long polling",
        application.bot_data[STATE].history.where,
        settings.metrics_port or "off",
        f"every {settings.draft_every:g} s" if settings.draft_every else "off",
    )
    try:
        if webhook:
            application.run_webhook(
                listen="0.0.0.0",
                port=settings.webhook_port,
                url_path=urlsplit(settings.webhook_url).path.lstrip("/"),
                webhook_url=settings.webhook_url,
                secret_token=settings.webhook_secret,
                allowed_updates=ALLOWED_UPDATES,
            )
        else:
            application.run_polling(allowed_updates=ALLOWED_UPDATES)
    except InvalidToken:
        raise ValueError(
            "TELEGRAM_BOT_TOKEN was rejected by the Bot API: copy it from @BotFather again"
        ) from None
