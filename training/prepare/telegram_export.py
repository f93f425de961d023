"""Telegram Desktop's machine-readable export (`result.json`), read as a stream with ijson.

Two shapes: one chat (top level `name`, `type`, `id`, `messages`) or the whole account
(`personal_information`, then `chats.list` and `left_chats.list`, each entry a chat with `name`,
`type`, `id`, `messages`). Telegram Desktop writes a chat's `name`, `type` and `id` before its
`messages`: a chat is announced when its messages begin, with what came before.

ijson's C backend (yajl2_c) turns the file, read in chunks, into events; one Python loop keeps a
message's few fields until the message ends. Memory holds one chunk and one message, whatever
the size of the file.
"""

from __future__ import annotations

import codecs
import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import ijson

from training.prepare.output import PrepareError

CHUNK = 1 << 18  # bytes per read of the export (ijson's buffer)

try:  # several times faster than the pure-Python backends
    backend = ijson.get_backend("yajl2_c")
except ImportError:  # pragma: no cover - ijson's wheels ship it for the usual platforms
    backend = ijson

SINGLE, ACCOUNT = "one chat", "whole account"  # Export.kind
PERSONAL_TYPES = frozenset({"personal_chat"})  # chat types converted from a whole-account export
GROUP_TYPES = frozenset({"private_group", "private_supergroup", "public_supergroup"})  # with --groups
# Top-level keys of Telegram Desktop's exports; a JSON object starting with another key is none.
_ACCOUNT_KEYS = ("about", "personal_information", "profile_pictures", "contacts", "frequent_contacts")
_MORE_KEYS = ("sessions", "web_sessions", "other_data", "chats", "left_chats")
_CHAT_KEYS = ("name", "type", "id", "messages")
EXPORT_KEYS = frozenset((*_ACCOUNT_KEYS, *_MORE_KEYS, *_CHAT_KEYS))


@dataclass(slots=True)
class Chat:
    """A chat of the export, announced when its messages begin."""

    name: str | None  # None for saved messages
    type: str  # personal_chat, private_group, private_supergroup, saved_messages, …
    id: int | None
    section: str  # "" (a one-chat export), "chats" or "left_chats"


@dataclass(slots=True)
class Message:
    """One entry of a chat's `messages`, reduced to what the conversion uses."""

    type: str  # "message", "service" or "unsupported"
    author: str | None  # from_id ("user123", "channel123"); None when absent
    name: str | None  # from: the author's name as exported (None for a deleted account)
    time: float | None  # date_unixtime, else date (as UTC), in seconds; None when absent
    text: str  # text_entities' texts joined, else text's ("" for media without a caption)
    forwarded: bool  # the entry has forwarded_from


class ChatEnd:
    """The current chat's messages ended."""


CHAT_END = ChatEnd()


# What a container of the export is, by where it sits (the reader's stack holds one per level).
OTHER, ROOT, PERSONAL, SECTION, CHATS, CHAT = range(6)
MESSAGES, MESSAGE, TEXT, TEXT_PART, ENTITIES, ENTITY = range(6, 12)
_CHILD = {  # (parent, key, event) -> the new container; key None: an array's item
    (ROOT, "personal_information", "start_map"): PERSONAL,
    (ROOT, "chats", "start_map"): SECTION,
    (ROOT, "left_chats", "start_map"): SECTION,
    (ROOT, "messages", "start_array"): MESSAGES,  # a one-chat export: the top level is the chat
    (SECTION, "list", "start_array"): CHATS,
    (CHATS, None, "start_map"): CHAT,
    (CHAT, "messages", "start_array"): MESSAGES,
    (MESSAGES, None, "start_map"): MESSAGE,
    (MESSAGE, "text", "start_array"): TEXT,
    (MESSAGE, "text_entities", "start_array"): ENTITIES,
    (TEXT, None, "start_map"): TEXT_PART,
    (ENTITIES, None, "start_map"): ENTITY,
}
_ARRAYS = frozenset({CHATS, MESSAGES, TEXT, ENTITIES})  # containers whose items have no key
_SCALARS = frozenset({"string", "number", "boolean", "null"})  # ijson's events of a value


class _Counting:
    """A file whose reads report their size (for a progress bar)."""

    def __init__(self, stream: IO[bytes], on_read: Callable[[int], object]):
        self.stream, self.on_read = stream, on_read

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.on_read(len(data))
        return data


class Export:
    """The chats and messages of one export, in file order: iterate for a Chat, its Messages,
    CHAT_END, the next Chat… Raises PrepareError for a file that is no complete JSON export.

    A single pass over ijson's basic events (start_map, map_key, string…, without the path
    prefixes that cost more to build): a stack says what each open container is, and only a
    message's own fields and its text parts are kept, one message at a time."""

    def __init__(self, path: Path, stream: IO[bytes], on_read: Callable[[int], object] | None = None):
        self.path = path
        if stream.read(len(codecs.BOM_UTF8)) != codecs.BOM_UTF8:  # a BOM an editor added is skipped
            stream.seek(0)
        self.stream: IO[bytes] | _Counting = stream if on_read is None else _Counting(stream, on_read)
        self.kind: str | None = None  # SINGLE or ACCOUNT, once known
        self.owner: str | None = None  # "user<personal_information.user_id>" of an account export
        self.top_keys: list[str] = []  # the top-level object's keys, in file order

    def __iter__(self) -> Iterator[Chat | Message | ChatEnd]:
        try:
            yield from self._read()
        except ijson.JSONError as e:
            raise self._json_error(e) from None
        if self.kind is None:
            raise self._not_export()

    def _read(self) -> Iterator[Chat | Message | ChatEnd]:
        stack: list[int] = []  # the open containers, outermost first
        mode = OTHER  # stack[-1]
        key: str | None = None  # the last map key (None inside an array)
        section, head = "", {"name": None, "type": "", "id": None}  # the current chat's
        m_type, author, name, when, date, text = "", None, None, None, None, None  # the message's
        parts: list[str] = []  # text's parts
        entities: list[str] | None = None  # text_entities' texts, if it has them
        forwarded = False
        for event, value in backend.basic_parse(self.stream, buf_size=CHUNK):
            if event == "map_key":
                key = value
                if mode == ROOT:
                    self.top_keys.append(value)
                    if len(self.top_keys) == 1 and value not in EXPORT_KEYS:
                        raise self._not_export()  # at once: a large foreign file is not read to its end
            elif mode == MESSAGE and event in _SCALARS:  # a message's field: the most frequent case
                if key == "type":
                    m_type = value if isinstance(value, str) else ""
                elif key == "from_id":
                    author = _author(value)
                elif key == "from":
                    name = value if isinstance(value, str) else None  # null: a deleted account
                elif key == "date_unixtime":
                    when = value
                elif key == "date":
                    date = value
                elif key == "text":
                    text = value if isinstance(value, str) else ""
                elif key == "forwarded_from":
                    forwarded = True
            elif event == "end_map" or event == "end_array":
                done = stack.pop()
                mode = stack[-1] if stack else OTHER
                key = None
                if done == MESSAGE:
                    if m_type == "message":
                        if entities is not None:
                            text = "".join(entities)
                        elif text is None:
                            text = "".join(parts)
                        seconds = _seconds(when) if when is not None else _iso_seconds(date)
                        yield Message("message", author, name, seconds, text, forwarded)
                    else:
                        yield Message(m_type, None, None, None, "", False)
                elif done == MESSAGES:
                    yield CHAT_END
            elif event == "start_map" or event == "start_array":
                if not stack:
                    if event != "start_map":
                        raise self._not_export("a list")
                    child = ROOT
                else:
                    child = _CHILD.get((mode, key if mode not in _ARRAYS else None, event), OTHER)
                if child == MESSAGE:
                    m_type, author, name, when, date, text = "", None, None, None, None, None
                    parts, entities, forwarded = [], None, False
                elif child == ENTITIES:
                    entities = []
                elif child == MESSAGES:
                    self.kind = SINGLE if mode == ROOT else ACCOUNT
                    yield Chat(_str(head["name"]), _str(head["type"]) or "", _int(head["id"]), section)
                elif child == CHAT:
                    head = {"name": None, "type": "", "id": None}
                elif child == SECTION:
                    section = str(key)
                stack.append(child)
                mode, key = child, None
            elif not stack:
                raise self._not_export("a single value")
            elif mode in (ENTITY, TEXT_PART):
                if key == "text" and isinstance(value, str):
                    (parts if mode == TEXT_PART or entities is None else entities).append(value)
            elif mode == TEXT:
                if isinstance(value, str):
                    parts.append(value)
            elif mode in (CHAT, ROOT):
                if key in head:
                    head[key] = value
            elif mode == PERSONAL and key == "user_id" and isinstance(value, int):
                self.owner = f"user{value}"

    def _not_export(self, what: str = "") -> PrepareError:
        found = (
            f"it holds {what}, not an object" if what else f"top-level keys: {', '.join(self.top_keys[:8])}"
        )
        return PrepareError(
            f"{self.path} is JSON but not a Telegram Desktop export ({found}); export again from "
            "Telegram Desktop with Format: Machine-readable JSON and the personal chats ticked, "
            "and pass its result.json"
        )

    def _json_error(self, error: Exception) -> PrepareError:
        text = str(error).strip()
        if text.startswith(("b'", 'b"')):  # yajl's message as the repr of bytes
            text = text[2:].replace("\\n", "\n")
        message = (text.splitlines() or [type(error).__name__])[0].strip().rstrip(".")
        with self.path.open("rb") as f:
            start = f.read(4096).lstrip()
        if not start:
            return PrepareError(f"{self.path} is empty; pass the result.json of a Telegram Desktop export")
        if start[:1] == b"<":
            return PrepareError(
                f"{self.path} is HTML, not JSON: export again with Format: Machine-readable JSON "
                "(Telegram Desktop: Settings → Advanced → Export Telegram data) and pass result.json"
            )
        if "premature EOF" in message:
            return PrepareError(
                f"{self.path} ends in the middle of the JSON (truncated after {self.path.stat().st_size} "
                "bytes): the export or its copy did not finish; export again, wait for Telegram "
                "Desktop to say it is done, and convert the new result.json"
            )
        if "UTF8" in message:
            return PrepareError(
                f"{self.path} is not UTF-8 text, as Telegram Desktop writes it; pass the export's "
                "result.json unmodified (an editor may have re-saved it in another encoding)"
            )
        return PrepareError(
            f"{self.path} is not valid JSON ({message}); pass the result.json "
            "of Telegram Desktop's machine-readable export, unmodified"
        )


def _author(value: object) -> str | None:
    """A from_id: "user123" as exported since 2020, a number before (a user's id), None if null."""
    if isinstance(value, str):
        return value
    return f"user{value}" if isinstance(value, int) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) else None


def _seconds(value: object) -> float | None:
    """Seconds of an export's `date_unixtime` ("1675188300"); None when it is no number."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _iso_seconds(value: object) -> float | None:
    """Seconds of an export's `date` ("2023-01-31T18:05:00", local time: read as UTC, which only
    shifts every message alike)."""
    try:
        return dt.datetime.fromisoformat(str(value)).replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None
