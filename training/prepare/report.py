"""What a conversion read, skipped and wrote: per chat and in total, as printed to stdout."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from training.prepare.dialogues import DialogueRows, Rules
from training.prepare.telegram_export import GROUP_TYPES

REASONS = {  # a skipped message's reason: how the report names it
    "service": "service (joins, calls, pins…)",
    "unsupported": "unsupported",
    "no_text": "no text (stickers, voice, media without a caption)",
    "forwarded": "forwarded (--keep-forwarded keeps them)",
    "no_author": "no author",
    "no_time": "no date",
}
NAME_WIDTH = 28  # characters of a chat's name in the table
MAX_CHAT_LINES = 30  # more converted chats than this: the table shows those with the most rows


@dataclass
class ChatReport:
    """One converted chat."""

    name: str  # the chat's name (its type for saved messages)
    type: str  # the export's chat type
    messages: int = 0  # entries in its `messages`
    kept: int = 0  # messages that went into turns
    skipped: Counter[str] = field(default_factory=Counter)  # skipped messages per reason (REASONS)
    dialogues: int = 0
    turns: int = 0
    speaker_turns: int = 0
    rows: int = 0  # rows formed, before identical rows were dropped
    cut: int = 0  # turns longer than the limit

    def finish(self, rows: DialogueRows) -> None:
        """Take the chat's counts from its DialogueRows."""
        self.dialogues, self.turns, self.speaker_turns = rows.dialogues, rows.turns, rows.speaker_turns
        self.rows, self.cut = rows.rows, rows.cut


@dataclass
class TelegramReport:
    """A conversion of a Telegram export, for `python -m training.prepare telegram`'s output."""

    export: Path
    output: Path
    rules: Rules
    kind: str = ""  # "one chat" or "whole account"
    speaker: str = ""  # "Name (user123)"
    chats: list[ChatReport] = field(default_factory=list)  # converted chats, in file order
    skipped_chats: Counter[str] = field(default_factory=Counter)  # chats not converted, per type
    skipped_messages: int = 0  # entries in the chats not converted
    written: int = 0  # distinct rows in the CSV
    duplicates: int = 0  # rows dropped as identical to a row written before
    replaced: bool = False  # the CSV replaced an existing file

    def total(self, name: str) -> int:
        return sum(getattr(chat, name) for chat in self.chats)

    def format(self) -> str:
        """The report: a line per converted chat, then the totals."""
        gap = f"{self.rules.gap_seconds / 60:g}"
        lines = [
            f"{self.export} ({self.kind}), speaker {self.speaker}, "
            f"gap {gap} min, turns cut at {self.rules.max_chars} characters",
            f"{'chat':<{NAME_WIDTH}} {'type':<18} {'messages':>8} {'kept':>7} {'dialogues':>9} {'rows':>7}",
        ]
        shown, rest = self.chats, []
        if len(self.chats) > MAX_CHAT_LINES:
            most = sorted(self.chats, key=lambda c: c.rows, reverse=True)[: MAX_CHAT_LINES - 5]
            top = {id(c) for c in most}
            shown = [c for c in self.chats if id(c) in top]  # in file order
            rest = [c for c in self.chats if id(c) not in top]
        for c in shown:
            name = c.name if len(c.name) <= NAME_WIDTH else c.name[: NAME_WIDTH - 1] + "…"
            lines.append(
                f"{name:<{NAME_WIDTH}} {c.type:<18} {c.messages:>8} {c.kept:>7} {c.dialogues:>9} {c.rows:>7}"
            )
        if rest:
            lines.append(
                f"… and {len(rest)} more chats with fewer rows: {sum(c.messages for c in rest)} messages, "
                f"{sum(c.rows for c in rest)} rows"
            )
        if self.skipped_chats:
            kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.skipped_chats.items()))
            groups = "; --groups converts the groups" if GROUP_TYPES & set(self.skipped_chats) else ""
            lines.append(
                f"chats not converted: {sum(self.skipped_chats.values())} ({kinds}), "
                f"{self.skipped_messages} messages{groups}"
            )
        skipped: Counter[str] = Counter()
        for c in self.chats:
            skipped.update(c.skipped)
        reasons = ", ".join(f"{skipped[r]} {text}" for r, text in REASONS.items() if skipped[r])
        lines += [
            f"messages read {self.total('messages')}, kept {self.total('kept')}, "
            f"skipped {sum(skipped.values())}" + (f": {reasons}" if reasons else ""),
            f"dialogues {self.total('dialogues')}, turns {self.total('turns')} "
            f"({self.total('speaker_turns')} of the speaker), turns cut {self.total('cut')}",
            f"rows {self.total('rows')}, identical dropped {self.duplicates}, written {self.written} "
            f"to {self.output}" + (" (replaced the earlier file)" if self.replaced else ""),
        ]
        return "\n".join(lines)
