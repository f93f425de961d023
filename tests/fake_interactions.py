"""The fake Bot API's users, the inline keyboards of the messages the bot sent, and what users do
with them (tests/fake_telegram.py's FakeTelegram is an Interactions): `press` a button (a
callback_query update), `react` to a message (a message_reaction update). answerCallbackQuery
answers a query once (again: 400, as Telegram's "query is too old"), editMessageReplyMarkup refuses
an unknown message or an unchanged keyboard (400, as Telegram does), getChatMember says
"administrator" for the (chat, user) pairs in `admins`, else "member"."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from tests.fake_updates import Updates

BOT_USER = {
    "id": 4242,
    "is_bot": True,
    "first_name": "Собеседник",
    "username": "dialogue_test_bot",
    "can_join_groups": True,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
}
USER = {"id": 1001, "is_bot": False, "first_name": "Аня"}
OTHER_USER = {"id": 1002, "is_bot": False, "first_name": "Борис"}
ADMIN_RIGHTS = dict.fromkeys(
    [
        "can_be_edited",
        "is_anonymous",
        "can_manage_chat",
        "can_delete_messages",
        "can_manage_video_chats",
        "can_restrict_members",
        "can_promote_members",
        "can_change_info",
        "can_invite_users",
        "can_post_stories",
        "can_edit_stories",
        "can_delete_stories",
    ],
    False,
)


class Interactions:
    """FakeTelegram's keyboards, presses, reactions and chat members."""

    _ids: Iterator[int]
    _chats: dict[int, dict]
    updates: Updates
    sent: dict[tuple[int, int], dict]  # (chat id, message id): a message the bot sent, as it is now
    admins: set[tuple[int, int]]  # (chat id, user id): getChatMember's administrators
    _queries: dict[str, bool]  # callback query id: answered

    def press(self, chat_id: int, message_id: int, data: str, user: dict[str, Any] = USER) -> dict[str, Any]:
        """Queue a user's press of an inline button with `data` under the bot's message; the update."""
        query = {
            "id": str(next(self._ids)),
            "from": user,
            "chat_instance": f"instance-{chat_id}",
            "message": json.loads(json.dumps(self.sent[chat_id, message_id])),  # as it is now
            "data": data,
        }
        self._queries[query["id"]] = False
        update = {"update_id": next(self._ids), "callback_query": query}
        self.updates.add(update)
        return update

    def react(
        self,
        chat_id: int,
        message_id: int,
        old: list[str],
        new: list[str],
        user: dict[str, Any] | None = USER,
    ) -> dict[str, Any]:
        """Queue a change of a user's emoji reactions on a message (`user` None: an anonymous one,
        as a group's anonymous admin's: the group is the actor); the update."""
        chat = self._chats.get(chat_id, {"id": chat_id, "type": "private"})
        reaction = {
            "chat": chat,
            "message_id": message_id,
            "date": int(time.time()),
            "old_reaction": [{"type": "emoji", "emoji": e} for e in old],
            "new_reaction": [{"type": "emoji", "emoji": e} for e in new],
            **({"user": user} if user else {"actor_chat": chat}),
        }
        update = {"update_id": next(self._ids), "message_reaction": reaction}
        self.updates.add(update)
        return update

    def keyboard(self, chat_id: int, message_id: int) -> list[tuple[str, str]]:
        """(label, callback_data) of the buttons under the bot's message as it is now."""
        markup = self.sent[chat_id, message_id].get("reply_markup") or {"inline_keyboard": []}
        return [(b["text"], b["callback_data"]) for row in markup["inline_keyboard"] for b in row]

    def replies(self, chat_id: int) -> list[dict]:
        """The messages the bot sent to the chat, as they are now (edited keyboards too), in order."""
        return [m for (chat, _), m in sorted(self.sent.items(), key=lambda kv: kv[0][1]) if chat == chat_id]

    def _keep(self, chat_id: int, message: dict, params: dict[str, str]) -> dict:
        """Keep a message the bot sent (sendMessage), with its inline keyboard."""
        if params.get("reply_markup"):
            message["reply_markup"] = as_json(params["reply_markup"])
        self.sent[chat_id, message["message_id"]] = message
        return message

    def _refused(self, method: str, params: dict[str, str]) -> tuple[int, str] | None:
        """The error the Bot API gives these calls where it refuses them, if any."""
        if method == "answerCallbackQuery":
            if self._queries.get(params["callback_query_id"]) is not False:
                return (
                    400,
                    "Bad Request: query is too old and response timeout expired or query ID is invalid",
                )
            self._queries[params["callback_query_id"]] = True
        if method == "editMessageReplyMarkup":
            message = self.sent.get((int(params["chat_id"]), int(params["message_id"])))
            if message is None:
                return 400, "Bad Request: message to edit not found"
            markup = as_json(params.get("reply_markup") or "null")
            if message.get("reply_markup") == markup:
                return (
                    400,
                    "Bad Request: message is not modified: specified new message content and "
                    "reply markup are exactly the same as a current content and reply markup of the message",
                )
            message["reply_markup"] = markup
        return None

    def _member(self, params: dict[str, str]) -> dict:
        user_id = int(params["user_id"])
        member = {"status": "member", "user": {**USER, "id": user_id}}
        if (int(params["chat_id"]), user_id) in self.admins:
            member.update(ADMIN_RIGHTS, status="administrator")
        return member


def as_json(value: Any) -> Any:
    """A form field holding an object (JSON-encoded), or the object a JSON body gave."""
    return json.loads(value) if isinstance(value, str) else value
