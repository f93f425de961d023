"""The Telegram bot's runner (python-telegram-bot 22): long polling by default, a webhook with --webhook.

Where things are: settings in bot/settings.py, handlers in bot/handlers.py, the texts users see
in bot/texts.py, the per-chat answering (locks, typing, history, metrics) in bot/dialogues.py, the
vote buttons, reactions and /privacy, /share, /forget in bot/feedback.py,
each chat's waiting messages (a flood) in bot/waiting.py, drafts of a reply being generated in
bot/drafts.py, the Bot API calls that must work at start and the optional ones in bot/botapi.py,
text splitting in bot/text.py, token redaction in bot/redact.py.
Here only the wiring: build the Application, start and stop what it shares. Nothing optional
blocks the start: the command menu is set from a background task while the bot already answers.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from telegram import Update
from telegram.ext import ApplicationBuilder

from bot.botapi import BotAPI, OptionalCalls
from bot.dialogues import Dialogues
from bot.feedback import Buttons
from bot.handlers import COMMANDS, STATE, BotApplication, add_handlers
from bot.history import open_store
from bot.metrics import Metrics
from bot.redact import hide_token_in_logs
from bot.settings import Settings
from client.chat import ChatBot

log = logging.getLogger(__name__)

HEALTH_EVERY = 15.0  # seconds between Triton health checks for bot_triton_up
# messages; presses of the vote buttons; reactions (votes too: private chats, and groups where the
# bot is an administrator)
ALLOWED_UPDATES = [Update.MESSAGE, Update.CALLBACK_QUERY, Update.MESSAGE_REACTION]


async def post_init(application: BotApplication) -> None:
    """Connect the history; start, in the background, answering what a stopped process left
    unanswered, the Triton health checks and the command menu (optional: retried with backoff)."""
    bot = application.bot
    await application.bot_data[STATE].history.start()
    application.bot_data[STATE].run_in_background(bot, menu=lambda: bot.set_my_commands(COMMANDS))


async def post_shutdown(application: BotApplication) -> None:
    """Stop the background tasks and generations, close the history and the Triton client."""
    await application.bot_data[STATE].close()


def build_application(
    chatbot: ChatBot, settings: Settings, metrics: Metrics | None = None, health_every: float = HEALTH_EVERY
) -> BotApplication:
    """The bot's Application with its handlers; also hides the token in every log line."""
    hide_token_in_logs(settings.token)
    metrics = metrics or Metrics()
    optional = OptionalCalls(metrics)
    application = (
        ApplicationBuilder()
        .bot(BotAPI(settings.token, settings.base_url, optional))
        .concurrent_updates(True)
        .post_init(post_init)
        .post_shutdown(post_shutdown)
        .build()
    )
    history = open_store(settings.data_dir, settings.database, settings.share_default)
    buttons = Buttons(settings.feedback_buttons, settings.feedback_groups)
    application.bot_data[STATE] = Dialogues(
        chatbot, history, metrics, health_every, settings.draft_every, optional, buttons
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
    if webhook:  # a token rejected or a webhook refused: bot/botapi.py's StartFailed (a ValueError)
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
