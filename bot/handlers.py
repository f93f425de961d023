"""The Telegram handlers and the filters that route updates to them (their texts: bot/texts.py;
the feedback's logic: bot/feedback.py)."""

from __future__ import annotations

import logging
from typing import Any

from telegram import BotCommand, Message, Update
from telegram.constants import ChatType
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    JobQueue,
    MessageHandler,
    MessageReactionHandler,
    filters,
)

from bot import feedback
from bot.botapi import BotAPI
from bot.dialogues import Dialogues
from bot.text import without_mention
from bot.texts import (
    COMMAND_MENU,
    HELP,
    NOT_TEXT,
    REFUSED,
    SHARE_ADMINS_ONLY,
    SHARE_UNCHECKED,
    SHARE_USAGE,
    START,
)
from contract.dialogue import clean_turn

log = logging.getLogger(__name__)

COMMANDS = [BotCommand(command, description) for command, description in COMMAND_MENU.items()]
STATE = "dialogues"  # key of the Dialogues in application.bot_data
Data = dict[Any, Any]  # python-telegram-bot's own type of user_data, chat_data and bot_data
# The Application bot/telegram.py builds: python-telegram-bot's default types, and its bot
# bot/botapi.py's BotAPI, an ExtBot[int] (AIORateLimiter takes an int, max_retries, per request).
BotApplication = Application[
    BotAPI, ContextTypes.DEFAULT_TYPE, Data, Data, Data, JobQueue[ContextTypes.DEFAULT_TYPE]
]


class Addressed(filters.MessageFilter):
    """Private chats; in groups only messages that mention the bot (/cmd@bot too) or reply to it."""

    def filter(self, message: Message) -> bool:
        if message.chat.type == ChatType.PRIVATE:
            return True
        bot = message.get_bot()
        replied = message.reply_to_message
        if replied and replied.from_user and replied.from_user.id == bot.id:
            return True
        return f"@{bot.username}".lower() in (message.text or message.caption or "").lower()


def dialogues(context: ContextTypes.DEFAULT_TYPE) -> Dialogues:
    """The application's Dialogues."""
    state: Dialogues = context.bot_data[STATE]
    return state


def message_of(update: Update) -> Message:
    """The update's message: every handler here is routed by message filters, so there is one."""
    if update.effective_message is None:
        raise ValueError(f"update {update.update_id} has no message")
    return update.effective_message


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Greet the user and say what the bot is."""
    await dialogues(context).once(message_of(update), START)


async def help_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Explain how to talk to the bot."""
    await dialogues(context).once(message_of(update), HELP)


async def reset(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Forget this chat's dialogue (after any reply still being written)."""
    await dialogues(context).reset(message_of(update))


async def privacy(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Say what is stored about the chat, for how long, how to remove it, and whether it shares."""
    message, state = message_of(update), dialogues(context)
    await state.command(message, feedback.action(feedback.privacy, state.history, message.chat_id))


async def forget(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Delete everything the store holds of the chat (after any reply still being written)."""
    message, state = message_of(update), dialogues(context)
    await state.command(message, feedback.action(feedback.forget, state.history, message.chat_id))


async def share(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/share: the chat agrees that its dialogues may train the next model (in a group: an
    administrator); /share off withdraws (anyone)."""
    message, state = message_of(update), dialogues(context)
    word = " ".join(context.args or []).strip().lower()
    if word not in ("", "on", "off"):
        await state.once(message, SHARE_USAGE)
        return
    shared = word != "off"
    allowed = await feedback.may_share(message, state.optional) if shared else True
    if not allowed:
        await state.once(message, SHARE_UNCHECKED if allowed is None else SHARE_ADMINS_ONLY)
        return
    user = message.from_user.id if message.from_user else None
    choice = feedback.action(feedback.share, state.history, message.chat_id, user, shared)
    await state.command(message, choice)


async def on_vote(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A vote button pressed (bot/feedback.py)."""
    if update.callback_query:
        await dialogues(context).votes.press(update.callback_query)


async def on_reaction(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A reaction changed on a message (bot/feedback.py: 👍 and 👎 on a reply are votes)."""
    if update.message_reaction:
        await dialogues(context).votes.react(context.bot, update.message_reaction)


async def on_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Answer a text message (without the bot's @mention); blank ones are ignored."""
    message = message_of(update)
    if text := clean_turn(without_mention(message.text or "", context.bot.username)):
        await dialogues(context).answer(message, text)


async def not_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Tell the user that only text is understood (stickers, photos, voice…)."""
    await dialogues(context).once(message_of(update), NOT_TEXT)


async def refuse(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Refuse a chat that is not on ALLOWED_CHAT_IDS (nothing of it is stored: a message delivered
    again is refused again)."""
    message = message_of(update)
    log.info("chat %d is not allowed", message.chat_id)
    await message.reply_text(REFUSED)


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log the error with its traceback, apologise to the user and record the message as answered
    (bot/dialogues.py: `failed`; a turn's own errors go there directly). A vote's error is logged
    and counted only (its press was answered)."""
    message = update.message if isinstance(update, Update) else None
    await dialogues(context).failed([message] if message else [], context.error)


def add_handlers(application: BotApplication, allowed_chat_ids: frozenset[int]) -> None:
    """Route updates: only addressed messages (commands too) from allowed chats reach the dialogue."""
    addressed = Addressed()
    allowed = filters.Chat(chat_id=allowed_chat_ids) if allowed_chat_ids else filters.ALL
    if allowed_chat_ids:
        application.add_handler(MessageHandler(addressed & ~allowed, refuse))
    answered = allowed & addressed
    application.add_handlers(
        [
            CommandHandler("start", start, filters=answered),
            CommandHandler("help", help_command, filters=answered),
            CommandHandler("reset", reset, filters=answered),
            CommandHandler("privacy", privacy, filters=answered),
            CommandHandler("forget", forget, filters=answered),
            CommandHandler("share", share, filters=answered),
            MessageHandler(answered & filters.COMMAND, help_command),
            MessageHandler(answered & filters.TEXT, on_text),
            MessageHandler(answered & ~filters.StatusUpdate.ALL, not_text),
            CallbackQueryHandler(on_vote),
            MessageReactionHandler(on_reaction),
        ]
    )
    application.add_error_handler(on_error)
