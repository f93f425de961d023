"""What the bot, the store and training share about feedback on the model's replies: the vote
buttons' callback_data, the reactions that count as votes, retention, the results of the store's
feedback calls (bot/history/feedback.py) and `read_liked`, the one query of the liked replies
(the store's `liked` and `python -m training.prepare history` both run it).

Imports nothing but the standard library: training imports it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.history.schema import Connection

UP, DOWN = "👍", "👎"  # the buttons' labels, and the reactions that count as votes
VOTES = {UP: 1, DOWN: -1}
# Retention (docs/bot.md, "Feedback, consent and privacy"; the bot's /privacy text quotes it): a
# chat's newest KEEP_ROWS (200, bot/history/store.py) replies are kept, older ones are deleted as
# new ones come unless someone voted on them; every reply and its votes are deleted REPLY_DAYS
# after it was sent, voted or not; /forget deletes the chat's all at once.
REPLY_DAYS = 365
SWEEP_SECONDS = 3600.0  # replies past REPLY_DAYS are deleted at start and then at most this often
SHARE_DEFAULT = "share_default"  # bot_settings' name for BOT_SHARE_DEFAULT, as the bot last started with

# callback_data of a vote button: "v:<reply id>:<+|->", at most 23 bytes (Telegram allows 64).
CALLBACK_RE = re.compile(r"v:([1-9][0-9]{0,18}):([+-])")
SIGNS = {1: "+", -1: "-"}


def callback_data(reply_id: int, vote: int) -> str:
    """The callback_data of the button that votes `vote` (+1 or -1) for the stored reply."""
    return f"v:{reply_id}:{SIGNS[vote]}"


def parse_callback(data: str | None) -> tuple[int, int] | None:
    """(reply id, vote) of a vote button's callback_data; None when it is no vote button's."""
    match = CALLBACK_RE.fullmatch(data or "")
    if match is None:
        return None
    return int(match[1]), 1 if match[2] == "+" else -1


def reaction_vote(old: Iterable[str], new: Iterable[str]) -> int | None:
    """The vote a user's change of reactions (emoji, as Telegram's message_reaction update lists
    them) casts: +1 for a 👍 set, -1 for a 👎 set, 0 when the one they had is taken back; None when
    the change touches neither (another emoji: the vote stays as it is)."""
    before = {VOTES[e] for e in old if e in VOTES}
    after = {VOTES[e] for e in new if e in VOTES}
    if before == after:
        return None
    if len(after) == 1:
        return after.pop()
    added = after - before  # both thumbs (a premium user's several reactions): the one just set
    return added.pop() if len(added) == 1 else 0


@dataclass(frozen=True)
class StoredReply:
    """A recorded reply: `row` is its message in the dialogue (for mark_answered and forget), `id`
    names it for votes (callback_data)."""

    row: int
    id: int


@dataclass(frozen=True)
class Tally:
    """A reply's votes. `found` False: the reply is gone (forgotten, pruned, or of another chat):
    answer the press politely. `changed`: whether this vote changed the user's vote (False: the
    same press again, e.g. a redelivered callback). `version`: the model version that wrote the
    reply (`vote` sets it, for the bot's metrics; equality ignores it)."""

    found: bool
    up: int = 0
    down: int = 0
    changed: bool = False
    version: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Consent:
    """Whether a chat's dialogues may train the next model; `chosen` False: the chat never said
    (/share), so the bot's default (BOT_SHARE_DEFAULT) applies."""

    shared: bool
    chosen: bool


@dataclass(frozen=True)
class Forgotten:
    """What forget_chat deleted, per table."""

    messages: int = 0
    replies: int = 0
    votes: int = 0
    consent: int = 0
    inbox: int = 0  # pending (unanswered) messages

    @property
    def total(self) -> int:
        return self.messages + self.replies + self.votes + self.consent + self.inbox


@dataclass(frozen=True)
class Liked:
    """A reply with at least `min_margin` more 👍 than 👎, and whether its chat shares."""

    id: int
    chat_id: int
    prompt: list[str]  # the turns it answered, oldest first
    text: str
    up: int
    down: int
    shared: bool


@dataclass(frozen=True)
class Harvest:
    """What training may take from the store: `liked` holds every liked reply, shared or not."""

    replies: int  # replies stored
    liked: list[Liked]

    @property
    def rows(self) -> list[Liked]:
        """The liked replies of chats that agreed (their own /share, or the bot's default)."""
        return [r for r in self.liked if r.shared]


TALLY = (
    "SELECT coalesce(sum(CASE WHEN vote > 0 THEN 1 ELSE 0 END), 0) AS up, "
    "coalesce(sum(CASE WHEN vote < 0 THEN 1 ELSE 0 END), 0) AS down FROM votes WHERE reply_id = $1"
)
DEFAULT = f"(SELECT value = '1' FROM bot_settings WHERE name = '{SHARE_DEFAULT}')"
LIKED = f"""SELECT r.id, r.chat_id, r.prompt, r.text, v.up, v.down,
        coalesce(c.shared, {DEFAULT}, FALSE) AS shared
    FROM replies r
    JOIN (SELECT reply_id, sum(CASE WHEN vote > 0 THEN 1 ELSE 0 END) AS up,
            sum(CASE WHEN vote < 0 THEN 1 ELSE 0 END) AS down
        FROM votes GROUP BY reply_id) v ON v.reply_id = r.id
    LEFT JOIN consent c ON c.chat_id = r.chat_id
    WHERE v.up - v.down >= $1
    ORDER BY r.id"""


async def read_liked(conn: Connection, min_margin: int = 1) -> Harvest:
    """The replies with at least `min_margin` more 👍 than 👎 (one statement: a consistent view)."""
    if min_margin < 1:
        raise ValueError(f"min_margin must be >= 1 (more 👍 than 👎), got {min_margin}")
    rows = await conn.fetch(LIKED, min_margin)
    liked = [Liked(r[0], r[1], list(json.loads(r[2])), r[3], int(r[4]), int(r[5]), bool(r[6])) for r in rows]
    return Harvest(int(await conn.fetchval("SELECT count(*) FROM replies")), liked)
