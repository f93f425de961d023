"""Telegram Desktop's JSON export into the training CSV: `convert(TelegramConfig(...))`.

Which messages count (decided before turns are formed): entries of type "message" with an
author (`from_id`), a time and text; service and unsupported entries, media without a caption
(stickers, voice messages, photos…) and, unless keep_forwarded, forwarded messages are skipped
and counted by reason. A photo or file keeps its caption (the export's `text`).

Which chats: a one-chat export is converted whatever its type. Of a whole-account export, the
personal chats (`personal_chat`); with groups also `private_group`, `private_supergroup` and
`public_supergroup` (from `chats` and `left_chats`). Saved messages, bots, channels and the
replies or verification-code chats are never converted.

Whose turns are the responses: `speaker`, a name as in the export's `from` or an id as in
`from_id` (`user123`, or `123` for a user); by default the owner of a whole-account export
(`personal_information.user_id`). A one-chat export needs it: the error lists the chat's authors.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from training.prepare.dialogues import (
    DEFAULT_GAP_MINUTES,
    DEFAULT_MAX_CHARS,
    MIN_MAX_CHARS,
    DialogueRows,
    Rules,
    clean_text,
)
from training.prepare.output import PrepareError, RowWriter, check_output
from training.prepare.report import ChatReport, TelegramReport
from training.prepare.telegram_export import (
    ACCOUNT,
    CHAT_END,
    GROUP_TYPES,
    PERSONAL_TYPES,
    SINGLE,
    Chat,
    Export,
    Message,
)

_ID_RE = re.compile(r"(?:user|channel|chat)\d+")  # a from_id as the export writes it
PROGRESS_BYTES = 8 * 2**20  # smaller exports convert in about a second: no bar


@dataclass
class TelegramConfig:
    """One conversion of a Telegram Desktop export into the training CSV."""

    export: Path  # the export's result.json: one chat, or the whole account
    output: Path  # the CSV to write; replaced only once the whole export converted without error
    speaker: str | None = None  # whose turns are responses: `from` name or `from_id`; None: the owner
    gap_minutes: float = DEFAULT_GAP_MINUTES  # a pause longer than this ends a dialogue
    max_chars: int = DEFAULT_MAX_CHARS  # longer turns are cut: a response keeps its start, a context its end
    groups: bool = False  # whole-account export: convert groups too, not only personal chats
    keep_forwarded: bool = False  # forwarded messages count as their forwarder's text
    progress: bool = True  # a progress bar on stderr, when stderr is a terminal

    def __post_init__(self) -> None:
        """Normalize paths and reject settings no conversion could use."""
        self.export, self.output = Path(self.export), Path(self.output)
        if self.speaker is not None:
            self.speaker = self.speaker.strip()
        checks = {
            "--gap-minutes must be > 0": self.gap_minutes > 0,
            f"--max-chars must be >= {MIN_MAX_CHARS}": self.max_chars >= MIN_MAX_CHARS,
            "--speaker must not be empty": self.speaker != "",
        }
        bad = [message for message, ok in checks.items() if not ok]
        if bad:
            raise PrepareError("; ".join(bad))


@dataclass
class Speaker:
    """The --speaker value as the id and the name it may be."""

    given: str | None  # as passed; None: the account's owner
    id: str | None = None  # a from_id ("user123")
    name: str | None = None  # a `from` name
    authors: Counter[str] = field(default_factory=Counter)  # kept messages per from_id
    names: dict[str, str] = field(default_factory=dict)  # from_id -> its latest `from`

    @classmethod
    def parse(cls, value: str | None) -> Speaker:
        if value is None:
            return cls(None)
        if value.isdigit():
            return cls(value, id=f"user{value}")
        return cls(value, id=value) if _ID_RE.fullmatch(value) else cls(value, name=value)

    def matches(self, message: Message) -> bool:
        return message.author == self.id or (self.name is not None and message.name == self.name)

    def listing(self, limit: int = 12) -> str:
        """The authors with their message counts, most first."""
        top = [f"{self.names.get(a) or '(no name)'} ({a}): {n}" for a, n in self.authors.most_common(limit)]
        more = len(self.authors) - limit
        return "; ".join(top) + (f"; and {more} more" if more > 0 else "")


def convert(cfg: TelegramConfig) -> TelegramReport:
    """Write cfg.output from cfg.export; the report says what was read, skipped and written.

    Raises PrepareError (nothing written) for a file that is no complete export, a speaker that
    has no messages, or an export that gives no row."""
    if not cfg.export.is_file():
        raise PrepareError(f"{cfg.export}: no such file; pass the result.json of a Telegram Desktop export")
    check_output(cfg.output, cfg.export)
    speaker = Speaker.parse(cfg.speaker)
    rules = Rules(gap_seconds=cfg.gap_minutes * 60, max_chars=cfg.max_chars)
    report = TelegramReport(export=cfg.export, output=cfg.output, rules=rules)
    with RowWriter(cfg.output) as out, cfg.export.open("rb") as stream, _progress(cfg) as bar:
        export = Export(cfg.export, stream, on_read=bar.update if bar is not None else None)
        chat: ChatReport | None = None
        rows = DialogueRows(rules, out.write)
        for item in export:
            if isinstance(item, Message):
                if chat is not None:
                    _add(item, chat, rows, speaker, cfg.keep_forwarded)
                else:
                    report.skipped_messages += 1
            elif isinstance(item, Chat):
                chat = _start(item, export, speaker, cfg.groups, report)
                rows = DialogueRows(rules, out.write)
            elif item is CHAT_END:
                if chat is not None:
                    rows.close()
                    chat.finish(rows)
                chat = None
        report.kind = export.kind or SINGLE
        _check_speaker(cfg, speaker, report)
        report.speaker = _describe(speaker)
        if out.written == 0:
            raise PrepareError(_no_rows(cfg, report))
        report.written, report.duplicates = out.written, out.duplicates
    report.replaced = out.replaced
    return report


@contextmanager
def _progress(cfg: TelegramConfig) -> Iterator[tqdm | None]:
    """A progress bar over the export's bytes, on stderr where it is a terminal and the file large."""
    size = cfg.export.stat().st_size
    if not (cfg.progress and sys.stderr.isatty() and size > PROGRESS_BYTES):
        yield None
        return
    bar = tqdm(total=size, desc=cfg.export.name, unit="B", unit_scale=True, leave=False, file=sys.stderr)
    try:
        yield bar
    finally:
        bar.close()


def _start(
    chat: Chat, export: Export, speaker: Speaker, groups: bool, report: TelegramReport
) -> ChatReport | None:
    """The chat's report if the chat is converted, else None (counted as skipped)."""
    if export.kind == ACCOUNT and speaker.given is None and speaker.id is None:
        if export.owner is None:
            raise PrepareError(
                f"{export.path}: the export has no personal_information, so its owner is unknown; "
                "pass --speaker NAME or --speaker ID (as in the messages' from / from_id)"
            )
        speaker.id = export.owner
    taken = export.kind == SINGLE or chat.type in PERSONAL_TYPES or (groups and chat.type in GROUP_TYPES)
    if not taken:
        report.skipped_chats[chat.type or "unknown"] += 1
        return None
    name = chat.name if chat.name is not None else chat.type
    report.chats.append(ChatReport(name=name, type=chat.type))
    return report.chats[-1]


def _add(
    message: Message, chat: ChatReport, rows: DialogueRows, speaker: Speaker, keep_forwarded: bool
) -> None:
    """One message of a converted chat: skipped with its reason, or into the chat's turns."""
    chat.messages += 1
    if message.type != "message":
        reason = "service" if message.type == "service" else "unsupported"
    elif message.author is None:
        reason = "no_author"
    elif message.time is None:
        reason = "no_time"
    elif message.forwarded and not keep_forwarded:
        reason = "forwarded"
    elif not (text := clean_text(message.text)):
        reason = "no_text"
    else:
        chat.kept += 1
        speaker.authors[message.author] += 1
        if message.name:
            speaker.names[message.author] = message.name
        rows.add(message.author, message.time, text, speaker.matches(message))
        return
    chat.skipped[reason] += 1


def _check_speaker(cfg: TelegramConfig, speaker: Speaker, report: TelegramReport) -> None:
    """Raise for a missing, unknown or ambiguous speaker, listing the authors to choose from."""
    if not speaker.authors:
        raise PrepareError(
            f"{cfg.export}: no chat with text messages to convert"
            + (" (only skipped chat types; add --groups for groups)" if report.skipped_chats else "")
        )
    if speaker.given is None and speaker.id is None:
        raise PrepareError(
            f"{cfg.export} is one chat: pass --speaker with the author whose replies to learn "
            f"(a name or an id). Authors and their text messages: {speaker.listing()}"
        )
    matched = [a for a in speaker.authors if a == speaker.id or speaker.names.get(a) == speaker.name]
    if not matched:
        who = f"--speaker {cfg.speaker!r}" if cfg.speaker else f"the account's owner ({speaker.id})"
        groups = not cfg.groups and bool(GROUP_TYPES & set(report.skipped_chats))
        raise PrepareError(
            f"{who} has no text messages in the converted chats; "
            + ("add --groups to convert the groups too, or " if groups else "")
            + f"pass --speaker with one of the authors (name or id): {speaker.listing()}"
        )
    if speaker.name is not None and len(matched) > 1:
        ids = ", ".join(f"{a}: {speaker.authors[a]}" for a in matched)
        raise PrepareError(
            f"--speaker {speaker.name!r} is the name of {len(matched)} authors ({ids}); pass one "
            "of the ids instead, e.g. --speaker " + matched[0]
        )
    speaker.id = matched[0]


def _describe(speaker: Speaker) -> str:
    assert speaker.id is not None
    name = speaker.names.get(speaker.id)
    return f"{name} ({speaker.id})" if name else speaker.id


def _no_rows(cfg: TelegramConfig, report: TelegramReport) -> str:
    turns = sum(c.speaker_turns for c in report.chats)
    return (
        f"{cfg.export}: no rows for {report.speaker}: none of their {turns} turns follows another "
        f"turn within --gap-minutes {cfg.gap_minutes:g} of it; raise --gap-minutes"
        + ("" if cfg.keep_forwarded else ", add --keep-forwarded")
        + ("" if cfg.groups or report.kind == SINGLE else ", add --groups")
        + " or pick another --speaker"
    )
