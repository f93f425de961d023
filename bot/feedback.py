"""The Telegram side of feedback (docs/bot.md, "Feedback, consent and privacy"): the 👍/👎 buttons
under each reply and their counts, presses and reactions stored as votes, and what /privacy, /share
and /forget do in a chat's turn. The store's half is bot/history/feedback.py; the buttons'
callback_data and the reactions that count are bot/history/votes.py's.

A press is answered (answerCallbackQuery: the client stops waiting) once its vote is stored, then
the message's buttons are edited to show the counts (editMessageReplyMarkup). Both are optional
calls (bot/botapi.py): a failure is counted, never fatal. The store keeps one vote per (reply,
user), so a press delivered twice, or at two replicas, counts once; this process also drops a
callback query id it has handled (a stale copy cannot undo a later press). A 👍 or 👎 reaction on
any part of a reply is the user's vote too; anonymous reactions (a channel, an anonymous admin)
name no user and are skipped.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from telegram import (
    Bot,
    CallbackQuery,
    Chat,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    MessageReactionUpdated,
    ReactionType,
    ReactionTypeEmoji,
)
from telegram.constants import ChatMemberStatus, ChatType
from telegram.error import TelegramError

from bot import texts
from bot.botapi import OptionalCalls
from bot.history.store import KEEP_ROWS, Store
from bot.history.votes import DOWN, REPLY_DAYS, UP, Tally, callback_data, parse_callback, reaction_vote
from bot.metrics import Metrics

log = logging.getLogger(__name__)

RECENT = 10_000  # callback query ids handled, and messages' counts shown, remembered
K = TypeVar("K")
V = TypeVar("V")
ADMINS = (ChatMemberStatus.OWNER, ChatMemberStatus.ADMINISTRATOR)


@dataclass(frozen=True)
class Buttons:
    """Which chats' replies carry the vote buttons: BOT_FEEDBACK_BUTTONS (`on`), and in groups
    only with BOT_FEEDBACK_GROUPS (`groups`). Presses on buttons sent before are always answered."""

    on: bool = True
    groups: bool = False

    def under(self, chat: Chat) -> bool:
        return self.on and (chat.type == ChatType.PRIVATE or self.groups)


def label(emoji: str, count: int) -> str:
    return f"{emoji} {count}" if count else emoji


def keyboard(reply_id: int, tally: Tally | None = None) -> InlineKeyboardMarkup:
    """👍 and 👎 for the stored reply `reply_id`, each with its count once it has votes."""
    up, down = (tally.up, tally.down) if tally else (0, 0)
    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(label(UP, up), callback_data=callback_data(reply_id, 1)),
                InlineKeyboardButton(label(DOWN, down), callback_data=callback_data(reply_id, -1)),
            ]
        ]
    )


def emojis(reactions: tuple[ReactionType, ...]) -> list[str]:
    return [r.emoji for r in reactions if isinstance(r, ReactionTypeEmoji)]


def remember(recent: OrderedDict[K, V], key: K, value: V) -> None:
    """Keep `key` as the newest of at most RECENT entries."""
    recent[key] = value
    recent.move_to_end(key)
    while len(recent) > RECENT:
        recent.popitem(last=False)


class Votes:
    """Presses and reactions stored as votes, counted in bot_feedback_total, shown on the buttons."""

    def __init__(self, history: Store, metrics: Metrics, optional: OptionalCalls, buttons: Buttons):
        self.history, self.metrics, self.optional, self.buttons = history, metrics, optional, buttons
        self._seen: OrderedDict[str, None] = OrderedDict()  # callback query ids handled
        self._shown: OrderedDict[tuple[int, int], tuple[int, int]] = OrderedDict()  # message: counts
        self._locks: weakref.WeakValueDictionary[tuple[int, int], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def press(self, query: CallbackQuery) -> None:
        """A button pressed: the vote stored, the press answered (also when storing failed: the
        error then goes on to the error handler), the counts shown."""
        text: str | None = texts.VOTE_FAILED
        changed: int | None = None
        try:
            text, changed = await self._vote(query)
        finally:
            await self.optional.call("answerCallbackQuery", query.answer(text))
        if changed is not None and query.message:
            await self._show(query.get_bot(), query.message.chat.id, query.message.message_id, changed)

    async def _vote(self, query: CallbackQuery) -> tuple[str | None, int | None]:
        """The press's answer; the reply's id if the vote changed it."""
        parsed, message = parse_callback(query.data), query.message
        if parsed is None or message is None or query.id in self._seen:
            return None, None  # not a vote button's, or this press again: answered, not counted
        reply_id, vote = parsed
        tally = await self.history.vote(message.chat.id, reply_id, query.from_user.id, vote)
        remember(self._seen, query.id, None)
        if not tally.found:
            return texts.VOTE_GONE, None
        if tally.changed:
            self.metrics.voted(tally.version, vote)
        return texts.VOTED[vote], reply_id if tally.changed else None

    async def react(self, bot: Bot, reaction: MessageReactionUpdated) -> None:
        """A reaction changed: a 👍 or 👎 on a reply set, changed or took back the user's vote."""
        vote = reaction_vote(emojis(reaction.old_reaction), emojis(reaction.new_reaction))
        if reaction.user is None or vote is None:
            return  # anonymous, or another emoji
        chat_id = reaction.chat.id
        reply_id = await self.history.find_reply(chat_id, reaction.message_id)
        if reply_id is None:
            return  # not a stored reply of the model's
        tally = await self.history.vote(chat_id, reply_id, reaction.user.id, vote)
        if not tally.changed:
            return
        self.metrics.voted(tally.version, vote)
        if self.buttons.under(reaction.chat) and (parts := await self.history.sent_as(chat_id, reply_id)):
            await self._show(bot, chat_id, parts[-1], reply_id)  # the buttons are on the last part

    async def _show(self, bot: Bot, chat_id: int, message_id: int, reply_id: int) -> None:
        """Edit the message's buttons to the reply's counts: one edit at a time per message, the
        counts read under it, none when they are what it shows already."""
        key = (chat_id, message_id)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:
            tally = await self.history.tally(chat_id, reply_id)
            counts = (tally.up, tally.down)
            if not tally.found or self._shown.get(key) == counts:
                return
            call = bot.edit_message_reply_markup(chat_id, message_id, reply_markup=keyboard(reply_id, tally))
            if await self.optional.call("editMessageReplyMarkup", call):
                remember(self._shown, key, counts)


# -- the commands, each run in the chat's turn (Dialogues.command): what it did, as the reply ---------


async def privacy(history: Store, chat_id: int) -> str:
    """/privacy: what is stored, for how long, how to remove it; whether this chat shares."""
    consent = await history.consent(chat_id)
    return texts.PRIVACY.format(
        keep=KEEP_ROWS, days=REPLY_DAYS, consent=texts.CONSENT[consent.chosen, consent.shared]
    )


async def share(history: Store, chat_id: int, user_id: int | None, shared: bool) -> str:
    """/share (`shared`) or /share off: the chat's choice stored, with who made it."""
    await history.set_consent(chat_id, shared, user_id)
    return texts.SHARE_ON if shared else texts.SHARE_OFF


async def forget(history: Store, chat_id: int) -> str:
    """/forget: everything of the chat deleted from the store in use; how much."""
    forgotten = await history.forget_chat(chat_id)
    log.info("chat %d forgotten: %s", chat_id, forgotten)
    return texts.FORGOTTEN.format(**vars(forgotten))


def action(command: Callable[..., Awaitable[str]], *args: object) -> Callable[[], Awaitable[str]]:
    """`command(*args)`, to run in the chat's turn."""
    return partial(command, *args)


async def may_share(message: Message, optional: OptionalCalls) -> bool | None:
    """Whether the sender may agree for the chat: anyone in a private chat, an administrator in a
    group (an anonymous one writes as the group itself). None: getChatMember failed."""
    chat, user = message.chat, message.from_user
    if chat.type == ChatType.PRIVATE or (message.sender_chat and message.sender_chat.id == chat.id):
        return True
    if user is None:
        return False
    try:
        member = await message.get_bot().get_chat_member(chat.id, user.id)
    except TelegramError as exc:
        optional.failed("getChatMember", exc)
        return None
    return member.status in ADMINS
