"""Text helpers for Telegram: its length measure (UTF-16 units), splitting, @mentions."""

from __future__ import annotations

import re

from telegram.constants import MessageLimit


def fit(text: str, limit: int) -> int:
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
    while (cut := fit(text, limit)) < len(text):
        space = text.rfind(" ", 0, cut + 1)
        cut = space if space > cut // 2 else max(cut, 1)
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    return [*parts, text] if text else parts


def without_mention(text: str, username: str) -> str:
    """`text` with the bot's @username (any case) replaced by a space."""
    return re.sub(rf"@{re.escape(username)}\b", " ", text, flags=re.IGNORECASE)
