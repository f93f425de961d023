"""A reply shown while it is generated: token ids in, the text a user may already see out.

Each shown text is the start of the next one and of the final reply (`contract.dialogue.clean_reply`
of all ids): no half UTF-8 character (the byte-level decoder gives U+FFFD for one) and no partial
turn marker (`@@ПЕР…` is held back until it is either a marker, which is removed, or plain text).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from client.generate import OnTokens
from contract.dialogue import MARKERS, clean_reply

OnText = Callable[[str], Awaitable[None] | None]  # gets the visible text each time it grows
REPLACEMENT = "\ufffd"  # what decoding makes of an incomplete UTF-8 sequence


def _word_prefixes() -> str:
    words = {marker.strip("@") for marker in MARKERS}
    prefixes = {word[:n] for word in words for n in range(1, len(word) + 1)}
    return "|".join(sorted(map(re.escape, prefixes), key=len, reverse=True))


# The tail of a text that could still grow into a turn marker (clean_reply removes complete ones,
# with any number of @ and spaces around the word, in any case).
_PARTIAL_MARKER = re.compile(rf"@+\s*(?:(?:{_word_prefixes()})\s*)?\Z", re.IGNORECASE)


def visible(decoded: str) -> str:
    """What of a reply decoded so far can be shown now (cleaned as the final reply will be)."""
    text = clean_reply(decoded.rstrip(REPLACEMENT))
    partial = _PARTIAL_MARKER.search(text)
    return text[: partial.start()].rstrip() if partial else text


class VisibleText:
    """The growing visible text of one generation; `update` says when there is more to show."""

    def __init__(self, decode: Callable[[list[int]], str]):
        self.decode = decode
        self.shown = ""

    def update(self, tokens: list[int]) -> str | None:
        """The visible text of `tokens` if it extends what was shown, else None."""
        text = visible(self.decode(tokens))
        if len(text) > len(self.shown) and text.startswith(self.shown):
            self.shown = text
            return text
        return None


def on_tokens(decode: Callable[[list[int]], str], on_text: OnText) -> OnTokens:
    """A generate() callback that calls `on_text` whenever the visible text grows; what an async
    `on_text` returns, the generation waits for before its next step."""
    text = VisibleText(decode)

    def call(tokens: list[int]) -> Awaitable[None] | None:
        return None if (shown := text.update(tokens)) is None else on_text(shown)

    return call
