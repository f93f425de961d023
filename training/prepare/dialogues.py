"""A chat's messages, in order, into rows of the training CSV (shared by every source).

- A turn is a run of consecutive messages of one author; its texts are joined with a newline.
- A dialogue ends where two consecutive messages are more than the gap apart.
- Each turn of the speaker that follows at least one turn of its dialogue gives a row: the
  response is that turn, context_3 the turn before it, context_2 and context_1 the two before
  that ("" where the dialogue has fewer).
- A turn longer than `max_chars` characters is cut: a response keeps its start (what the model
  learns to say first), a context keeps its end (the words the response answers), as the bot
  keeps the end of a long message. The cut falls on a space or line break where one lies in the
  outer half of the limit; nothing marks the cut (no "…" for the model to learn).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from contract.dialogue import clean_turn
from training.prepare.output import Row

DEFAULT_GAP_MINUTES = 60.0  # a pause longer than an hour starts a new dialogue
DEFAULT_MAX_CHARS = 500  # about 150 ruDialoGPT tokens: a response fits `python -m training`'s 256
MIN_MAX_CHARS = 20  # below this a cut turn says nothing


@dataclass(frozen=True)
class Rules:
    """How messages become turns, dialogues and rows."""

    gap_seconds: float  # a pause longer than this between two messages ends the dialogue
    max_chars: int  # turns longer than this are cut (a response keeps its start, a context its end)


def clean_text(text: str) -> str:
    """A message's text as a turn holds it: each line as contract.dialogue.clean_turn leaves it
    (no turn markers, no control or invisible characters, single spaces), blank lines dropped.
    "" when nothing is left: training would skip such a turn."""
    if text.isprintable() and "@" not in text:  # no control, format or line characters, no markers:
        return " ".join(text.split()) if "  " in text else text.strip()  # what clean_turn would do
    if "\n" not in text:
        return clean_turn(text)
    return "\n".join(line for line in map(clean_turn, text.split("\n")) if line)


def cut_start(text: str, limit: int) -> str:
    """The first `limit` characters of `text`, ending at a space or line break where one lies in
    the second half of them."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    if text[limit].isspace():
        return head.rstrip()
    space = max(head.rfind(" "), head.rfind("\n"))
    return head[:space].rstrip() if space >= limit // 2 else head


def cut_end(text: str, limit: int) -> str:
    """The last `limit` characters of `text`, starting after a space or line break where one lies
    in the first half of them."""
    if len(text) <= limit:
        return text
    tail = text[-limit:]
    if text[-limit - 1].isspace():
        return tail.lstrip()
    found = [i for i in (tail.find(" "), tail.find("\n")) if i >= 0]
    space = min(found, default=limit)
    return tail[space + 1 :].lstrip() if space <= limit // 2 else tail


class DialogueRows:
    """One chat's messages, fed in order with add(), into rows passed to `emit`; close() ends the
    chat. Texts must be clean_text()'s, non-empty. Counts what it did for the report."""

    def __init__(self, rules: Rules, emit: Callable[[Row], None]):
        self.rules, self.emit = rules, emit
        self.dialogues = 0  # dialogues with at least one message
        self.turns = 0  # turns of every author
        self.speaker_turns = 0  # turns of the speaker (rows where one follows another turn)
        self.rows = 0  # rows passed to emit
        self.cut = 0  # turns longer than max_chars (cut where they went into a row)
        self._history: deque[str] = deque(maxlen=3)  # the dialogue's last turns, as contexts
        self._author: str | None = None  # the author of the open turn; None: no open dialogue
        self._speaker = False  # whether the open turn is the speaker's
        self._texts: list[str] = []  # the open turn's messages (head and tail only, when long)
        self._size = 0  # characters in _texts
        self._last = 0.0  # time of the last message, in seconds

    def add(self, author: str, time: float, text: str, is_speaker: bool) -> None:
        """The chat's next message: `time` in seconds, `text` non-empty and clean."""
        if self._author is not None and time - self._last > self.rules.gap_seconds:
            self._end_dialogue()
        self._last = time
        if author != self._author:
            if self._author is None:
                self.dialogues += 1
            else:
                self._close_turn()
            self._author, self._speaker = author, is_speaker
        self._texts.append(text)
        self._size += len(text) + 1
        limit = self.rules.max_chars
        if self._size > 4 * limit:  # keep only what a cut can use: memory stays bounded
            joined = "\n".join(self._texts)
            self._texts = [joined[: limit + 1], joined[-limit - 1 :]]
            self._size = 2 * limit + 3

    def close(self) -> None:
        """End of the chat: the last turn is closed."""
        self._end_dialogue()

    def _end_dialogue(self) -> None:
        self._close_turn()
        self._history.clear()
        self._author = None

    def _close_turn(self) -> None:
        if not self._texts:
            return
        text = "\n".join(self._texts)
        self._texts, self._size = [], 0
        self.turns += 1
        limit = self.rules.max_chars
        if len(text) > limit:
            self.cut += 1
        if self._speaker:
            self.speaker_turns += 1
            if self._history:
                contexts = ("", "", *self._history)[-3:]
                self.emit((contexts[0], contexts[1], contexts[2], cut_start(text, limit)))
                self.rows += 1
        self._history.append(cut_end(text, limit))
