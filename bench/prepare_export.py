"""A synthetic whole-account Telegram Desktop export (`result.json`) of any size, written streaming.

Shaped like Telegram Desktop's machine-readable export: `about`, `personal_information`, then
`chats.list` (personal chats, a few groups, a channel, saved messages) and `left_chats.list`, each
message with `date`, `date_unixtime`, `from`, `from_id`, `text` and `text_entities`, one-space
indentation per level. Mixed in: service messages, stickers, voice messages, photos with and
without a caption, forwards, formatted text (a list of parts), long messages and pauses of hours.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import IO

OWNER_ID = 1000  # personal_information.user_id of the synthetic account
OWNER_NAME = "Анна Смирнова"
VOCABULARY = (
    "привет как дела что нового сегодня завтра вечером погода хорошо отлично давай встретимся "
    "кино кофе работа проект отпуск поезд билеты мама папа кот собака книга музыка концерт "
    "спасибо конечно наверное может быть посмотрим ладно договорились где когда почему"
)
WORDS = tuple(VOCABULARY.split())
EMOJI = ("😊", "👍", "😂", "🙂", "❤️", "🔥")


def text_of(rng: random.Random) -> str:
    """A short chat line, sometimes long (a pasted text of several hundred words)."""
    n = rng.choice((1, 2, 3, 4, 5, 6, 8, 12)) if rng.random() > 0.005 else rng.randint(200, 600)
    words = " ".join(rng.choice(WORDS) for _ in range(n))
    return words.capitalize() + rng.choice(("", "", "?", "!", " " + rng.choice(EMOJI)))


def message(rng: random.Random, mid: int, when: int, author: tuple[str, str]) -> dict:
    """One export entry: mostly text, some service, sticker, voice, photo, forward, formatted."""
    base: dict = {"id": mid, "type": "message", "date": _iso(when), "date_unixtime": str(when)}
    roll = rng.random()
    if roll < 0.04:
        return {
            **{k: base[k] for k in ("id", "date", "date_unixtime")},
            "type": "service",
            "actor": author[0],
            "actor_id": author[1],
            "action": "phone_call",
            "duration_seconds": rng.randint(5, 600),
            "text": "",
            "text_entities": [],
        }
    base.update({"from": author[0], "from_id": author[1]})
    if roll < 0.05:
        return {**base, "media_type": "sticker", "sticker_emoji": "😊", "text": "", "text_entities": []}
    if roll < 0.06:
        return {**base, "media_type": "voice_message", "duration_seconds": 7, "text": "", "text_entities": []}
    if roll < 0.075:
        caption = text_of(rng) if rng.random() < 0.5 else ""
        parts = [{"type": "plain", "text": caption}] if caption else []
        return {
            **base,
            "photo": "(File not included.)",
            "width": 1280,
            "height": 960,
            "text": caption,
            "text_entities": parts,
        }
    if roll < 0.09:
        base["forwarded_from"] = "Новости"
    text = text_of(rng)
    if rng.random() < 0.1:
        link = "https://example.org/" + rng.choice(WORDS)
        parts = [{"type": "plain", "text": text + " "}, {"type": "link", "text": link}]
        return {**base, "text": [text + " ", {"type": "link", "text": link}], "text_entities": parts}
    return {**base, "text": text, "text_entities": [{"type": "plain", "text": text}]}


def _iso(when: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def chat_messages(
    rng: random.Random, count: int, authors: list[tuple[str, str]], start: int
) -> Iterator[dict]:
    """`count` entries in bursts of one author, seconds to minutes apart, sometimes hours."""
    when, author = start, authors[0]
    for mid in range(1, count + 1):
        if rng.random() < 0.45:
            author = rng.choice([a for a in authors if a != author] or authors)
        when += rng.choice((5, 20, 60, 300)) if rng.random() > 0.03 else rng.randint(2, 48) * 3600
        yield message(rng, mid, when, author)


def plan(total: int, rng: random.Random) -> list[tuple[str, str, int]]:
    """(type, name, message count) per chat: mostly personal chats, a few groups and channels."""
    kinds = ["personal_chat"] * 180 + ["private_supergroup"] * 12 + ["private_group"] * 4
    kinds += ["public_channel", "saved_messages", "bot_chat"]
    weights = [rng.paretovariate(1.2) for _ in kinds]
    scale = total / sum(weights)
    counts = [max(1, int(w * scale)) for w in weights]
    counts[0] += total - sum(counts)
    return [(kind, f"Чат {i}", n) for i, (kind, n) in enumerate(zip(kinds, counts, strict=True))]


def write_account_export(path: Path, total: int, seed: int = 0) -> int:
    """A whole-account export with `total` messages; returns its size in bytes."""
    rng = random.Random(seed)
    owner = (OWNER_NAME, f"user{OWNER_ID}")
    with path.open("w", encoding="utf-8") as f:
        f.write('{\n "about": "Here is the data you requested.",\n')
        info = {"user_id": OWNER_ID, "first_name": "Анна", "last_name": "Смирнова", "phone_number": "+7 900"}
        f.write(f' "personal_information": {json.dumps(info, ensure_ascii=False)},\n')
        f.write(' "contacts": {"about": "", "list": []},\n "chats": {\n  "about": "",\n  "list": [')
        chats = plan(total, rng)
        for i, (kind, name, count) in enumerate(chats):
            peers = [(f"Друг {i}", f"user{2000 + i}")]
            if "group" in kind:
                peers += [(f"Участник {i}-{k}", f"user{5000 + 10 * i + k}") for k in range(4)]
            authors = {"saved_messages": [owner], "public_channel": [(name, f"channel{9000 + i}")]}.get(
                kind, [owner, *peers]
            )
            _write_chat(f, rng, kind, name, 100 + i, count, authors, first=i == 0)
        f.write('\n  ]\n },\n "left_chats": {\n  "about": "",\n  "list": []\n }\n}\n')
    return path.stat().st_size


def _write_chat(
    f: IO[str], rng: random.Random, kind: str, name: str, chat_id: int, count: int, authors, first: bool
) -> None:
    head = {"name": name, "type": kind, "id": chat_id}
    if kind == "saved_messages":
        del head["name"]
    f.write(("" if first else ",") + "\n   {")
    for key, value in head.items():
        f.write(f'\n    "{key}": {json.dumps(value, ensure_ascii=False)},')
    f.write('\n    "messages": [')
    start = 1_600_000_000 + rng.randint(0, 10**7)
    for j, entry in enumerate(chat_messages(rng, count, authors, start)):
        text = json.dumps(entry, ensure_ascii=False, indent=1).replace("\n", "\n     ")
        f.write(("\n     " if j == 0 else ",\n     ") + text)  # indented as Telegram Desktop does
    f.write("\n    ]\n   }")
