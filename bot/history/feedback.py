"""Feedback on the model's replies: the stored replies, 👍/👎 votes, each chat's consent to train on
its dialogues, `/forget`, and the liked rows training reads (schema: the FEEDBACK migration of
bot/history/schema.py). `Feedback` is a part of the Store (bot/history/store.py): every method is
one transaction, on both backends, and doing it again changes nothing.

A reply is recorded (`record_reply`) with the bot's message in the dialogue, before it is sent; its
id names it in the buttons' callback_data (`callback_data`, `parse_callback`). Once sent, `attach`
maps the Telegram messages it was sent as to it, so a reaction on any part of a split reply finds
it (`find_reply`). A user has one vote per reply: pressing again changes it, 0 withdraws it, and the
same press delivered twice (or at two replicas) counts once. `forget_chat` deletes everything of a
chat. Retention (the bot's /privacy text quotes it) is described at REPLY_DAYS in
bot/history/votes.py, which also holds the callback format and the results' types.
"""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from bot.history.schema import Dialect
from bot.history.votes import (
    REPLY_DAYS,
    SHARE_DEFAULT,
    SWEEP_SECONDS,
    TALLY,
    Consent,
    Forgotten,
    Harvest,
    StoredReply,
    Tally,
    read_liked,
)

if TYPE_CHECKING:
    from bot.history.schema import Connection

T = TypeVar("T")


def _count(status: str) -> int:
    """The rows a statement changed, from its status ("DELETE 3")."""
    return int(status.split()[-1])


class Feedback(abc.ABC):
    """The feedback half of the Store; a backend sets DIALECT and runs `_run`."""

    DIALECT: Dialect
    keep: int  # per chat: replies beyond the newest `keep` are deleted unless voted on
    share_default: bool = False  # BOT_SHARE_DEFAULT: chats that never said /share share
    _swept: float = float("-inf")  # when old replies were last deleted (time.monotonic)

    @abc.abstractmethod
    async def _run(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """`work(connection)`; PostgreSQL retries it on a lost connection."""

    @abc.abstractmethod
    async def _insert(self, conn: Connection, chat_id: int, role: str, text: str, message_id: int) -> int:
        """Store a message of the dialogue within the caller's transaction (as `add`); its row."""

    async def _publish_settings(self) -> None:
        """Record BOT_SHARE_DEFAULT where training reads it; delete expired replies (at start)."""
        await self._run(
            lambda conn: conn.execute(
                "INSERT INTO bot_settings (name, value, at) VALUES ($1, $2, "
                f"{self.DIALECT.now}) ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
                "at = excluded.at",
                SHARE_DEFAULT,
                "1" if self.share_default else "0",
            )
        )
        await self.expire()

    async def record_reply(
        self,
        chat_id: int,
        message_id: int,
        prompt: Sequence[str],
        text: str,
        model_version: str | None,
        sampling: Mapping[str, Any],
    ) -> StoredReply:
        """Store the model's reply to the user's message `message_id` before it is sent: in the
        dialogue (unsent, as `add(chat_id, "bot", text, message_id)` does) and as a reply votes can
        name, with the `prompt` turns it answered, the model version and the sampling settings
        (JSON-able). Recorded again before it was sent, it is replaced; after, it stays. Prunes the
        chat's unvoted replies beyond `keep`."""
        prompt_json = json.dumps(list(prompt), ensure_ascii=False)
        sampling_json = json.dumps(dict(sampling), ensure_ascii=False, sort_keys=True)
        now = self.DIALECT.now

        async def record(conn: Connection) -> StoredReply:
            async with conn.transaction():
                row = await self._insert(conn, chat_id, "bot", text, message_id)
                await conn.execute(
                    "INSERT INTO replies (chat_id, message_id, prompt, text, model_version, sampling, at) "
                    f"VALUES ($1, $2, $3, $4, $5, $6, {now}) ON CONFLICT (chat_id, message_id) DO UPDATE "
                    "SET prompt = excluded.prompt, text = excluded.text, model_version = "
                    "excluded.model_version, sampling = excluded.sampling, at = excluded.at "
                    "WHERE replies.bot_message_id IS NULL",
                    chat_id,
                    message_id,
                    prompt_json,
                    text,
                    model_version,
                    sampling_json,
                )
                reply: int = await conn.fetchval(
                    "SELECT id FROM replies WHERE chat_id = $1 AND message_id = $2", chat_id, message_id
                )
                await conn.execute(
                    "DELETE FROM replies WHERE chat_id = $1 AND id <= (SELECT id FROM replies "
                    "WHERE chat_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2) "
                    "AND NOT EXISTS (SELECT 1 FROM votes WHERE votes.reply_id = replies.id)",
                    chat_id,
                    self.keep,
                )
                return StoredReply(row, reply)

        stored = await self._run(record)
        if time.monotonic() - self._swept > SWEEP_SECONDS:
            await self.expire()
        return stored

    async def expire(self, days: int = REPLY_DAYS) -> int:
        """Delete every chat's replies older than `days` (their votes too); how many."""
        self._swept = time.monotonic()
        status = await self._run(
            lambda conn: conn.execute(
                f"DELETE FROM replies WHERE at < {self.DIALECT.ago.format(days='$1')}", days
            )
        )
        return _count(status)

    async def attach(self, chat_id: int, reply_id: int, message_ids: Sequence[int]) -> bool:
        """Record the Telegram messages the reply was sent as (its parts, in order; the first is
        its `bot_message_id`), so a reaction on any of them finds it. False: the reply is gone."""
        if not message_ids:
            raise ValueError("attach needs the id of at least one sent message")

        async def attach(conn: Connection) -> bool:
            async with conn.transaction():
                status = await conn.execute(
                    "UPDATE replies SET bot_message_id = coalesce(bot_message_id, $3) "
                    "WHERE id = $1 AND chat_id = $2",
                    reply_id,
                    chat_id,
                    message_ids[0],
                )
                if not _count(status):
                    return False
                for message_id in message_ids:
                    await conn.execute(
                        "INSERT INTO reply_messages (chat_id, message_id, reply_id) VALUES ($1, $2, $3) "
                        "ON CONFLICT DO NOTHING",
                        chat_id,
                        message_id,
                        reply_id,
                    )
                return True

        return await self._run(attach)

    async def find_reply(self, chat_id: int, message_id: int) -> int | None:
        """The id of the stored reply that Telegram's message `message_id` (any part) is; None."""
        found = await self._run(
            lambda conn: conn.fetchval(
                "SELECT reply_id FROM reply_messages WHERE chat_id = $1 AND message_id = $2",
                chat_id,
                message_id,
            )
        )
        return None if found is None else int(found)

    async def sent_as(self, chat_id: int, reply_id: int) -> list[int]:
        """The Telegram messages the chat's reply was sent as, in order ([]: gone or not sent)."""
        rows = await self._run(
            lambda conn: conn.fetch(
                "SELECT message_id FROM reply_messages WHERE chat_id = $1 AND reply_id = $2 "
                "ORDER BY message_id",
                chat_id,
                reply_id,
            )
        )
        return [int(row[0]) for row in rows]

    async def vote(self, chat_id: int, reply_id: int, user_id: int, vote: int) -> Tally:
        """Set the user's vote on the chat's reply: +1, -1, or 0 to withdraw it; the reply's counts
        after. Not found (gone, or not this chat's): nothing is stored."""
        if vote not in (-1, 0, 1):
            raise ValueError(f"a vote is +1, -1 or 0 (withdrawn), got {vote!r}")

        async def cast(conn: Connection) -> Tally:
            async with conn.transaction():
                found = await conn.fetch(
                    "SELECT model_version FROM replies WHERE id = $1 AND chat_id = $2"
                    f"{self.DIALECT.key_share}",
                    reply_id,
                    chat_id,
                )
                if not found:
                    return Tally(found=False)
                if vote:
                    status = await conn.execute(
                        "INSERT INTO votes (reply_id, user_id, vote, at) "
                        f"VALUES ($1, $2, $3, {self.DIALECT.now}) ON CONFLICT (reply_id, user_id) "
                        "DO UPDATE SET vote = excluded.vote, at = excluded.at "
                        "WHERE votes.vote <> excluded.vote",
                        reply_id,
                        user_id,
                        vote,
                    )
                else:
                    status = await conn.execute(
                        "DELETE FROM votes WHERE reply_id = $1 AND user_id = $2", reply_id, user_id
                    )
                (up, down), *_ = await conn.fetch(TALLY, reply_id)
                return Tally(True, int(up), int(down), _count(status) > 0, found[0][0])

        return await self._run(cast)

    async def tally(self, chat_id: int, reply_id: int) -> Tally:
        """The chat's reply's votes (found False: it is gone)."""

        async def read(conn: Connection) -> Tally:
            found = await conn.fetchval(
                "SELECT id FROM replies WHERE id = $1 AND chat_id = $2", reply_id, chat_id
            )
            if found is None:
                return Tally(found=False)
            (up, down), *_ = await conn.fetch(TALLY, reply_id)
            return Tally(True, int(up), int(down))

        return await self._run(read)

    async def set_consent(self, chat_id: int, shared: bool, user_id: int | None = None) -> None:
        """Store the chat's own choice (/share, /share off), and who made it."""
        await self._run(
            lambda conn: conn.execute(
                f"INSERT INTO consent (chat_id, shared, user_id, at) VALUES ($1, $2, $3, {self.DIALECT.now}) "
                "ON CONFLICT (chat_id) DO UPDATE SET shared = excluded.shared, user_id = excluded.user_id, "
                "at = excluded.at",
                chat_id,
                shared,
                user_id,
            )
        )

    async def consent(self, chat_id: int) -> Consent:
        """Whether the chat shares: its own choice, else the bot's default (share_default)."""
        shared = await self._run(
            lambda conn: conn.fetchval("SELECT shared FROM consent WHERE chat_id = $1", chat_id)
        )
        return Consent(self.share_default, False) if shared is None else Consent(bool(shared), True)

    async def forget_chat(self, chat_id: int) -> Forgotten:
        """/forget: delete the chat's dialogue, replies, their votes and message ids, its consent and
        its pending inbox rows, in one transaction; how many of each. (The inbox keeps the bare ids
        of messages answered, so that one delivered again is still not answered twice.)"""

        async def forget(conn: Connection) -> Forgotten:
            async with conn.transaction():
                # the replies first, as `vote` locks them: no deadlock with a vote under way
                await conn.fetch(
                    f"SELECT id FROM replies WHERE chat_id = $1{self.DIALECT.for_update}", chat_id
                )
                votes = await conn.execute(
                    "DELETE FROM votes WHERE reply_id IN (SELECT id FROM replies WHERE chat_id = $1)", chat_id
                )
                counts = [
                    await conn.execute(f"DELETE FROM {table} WHERE chat_id = $1{where}", chat_id)
                    for table, where in [
                        ("replies", ""),
                        ("reply_messages", ""),  # gone with their replies (ON DELETE CASCADE) already
                        ("messages", ""),
                        ("consent", ""),
                        ("inbox", " AND NOT answered"),
                    ]
                ]
                replies, _, messages, consent, inbox = map(_count, counts)
                return Forgotten(messages, replies, _count(votes), consent, inbox)

        return await self._run(forget)

    async def liked(self, min_margin: int = 1) -> Harvest:
        """The replies with at least `min_margin` more 👍 than 👎, each with its chat's consent; the
        training rows are `.rows` (only chats that agreed)."""
        return await self._run(lambda conn: read_liked(conn, min_margin))
