"""Synthetic Telegram Desktop exports (result.json) for the prepare tests, shaped as Telegram
Desktop 4.x/5.x writes them: `date` and `date_unixtime`, `from` and `from_id`, `text` (a string,
or a list of strings and {type, text} parts) and `text_entities`, one-space indentation."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

START = 1_700_000_000  # 2023-11-14 22:13:20 UTC: minute 0 of every synthetic chat


def _dates(minute: float) -> dict:
    when = int(START + minute * 60)
    local = dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return {"date": local, "date_unixtime": str(when)}


def msg(mid: int, minute: float, who: tuple[str, str], text: str | list = "", **extra) -> dict:
    """A message by `who` = (from, from_id) at `minute`; a list `text` is a formatted one."""
    if isinstance(text, list):
        entities = [p if isinstance(p, dict) else {"type": "plain", "text": p} for p in text]
    else:
        entities = [{"type": "plain", "text": text}] if text else []
    return {
        "id": mid,
        "type": "message",
        **_dates(minute),
        "from": who[0],
        "from_id": who[1],
        **extra,
        "text": text,
        "text_entities": entities,
    }


def service(mid: int, minute: float, who: tuple[str, str], action: str = "phone_call", **extra) -> dict:
    """A service entry (a call, a pin, a join…): never a turn."""
    return {
        "id": mid,
        "type": "service",
        **_dates(minute),
        "actor": who[0],
        "actor_id": who[1],
        "action": action,
        **extra,
        "text": "",
        "text_entities": [],
    }


def sticker(mid: int, minute: float, who: tuple[str, str]) -> dict:
    return msg(mid, minute, who, file="(File not included.)", media_type="sticker", sticker_emoji="😊")


def chat(name: str | None, kind: str, cid: int, messages: list[dict]) -> dict:
    """A chat as a one-chat export's top level, or as an entry of an account's chats.list."""
    head = {"name": name} if name is not None else {}  # saved messages have no name
    return {**head, "type": kind, "id": cid, "messages": messages}


def account(owner: tuple[str, str], chats: list[dict], left: list[dict] | None = None) -> dict:
    """A whole-account export of `owner` with `chats` (and `left` in left_chats)."""
    first, _, last = owner[0].partition(" ")
    return {
        "about": "Here is the data you requested. Check the instructions in the export's README.",
        "personal_information": {
            "user_id": int(owner[1].removeprefix("user")),
            "first_name": first,
            "last_name": last,
            "phone_number": "+7 900 000 00 00",
            "bio": "",
        },
        "profile_pictures": [],
        "contacts": {"about": "", "list": [{"first_name": "Мама", "last_name": "", "date": "2020-01-01"}]},
        "frequent_contacts": {"about": "", "list": []},
        "chats": {"about": "This page lists all chats from this export.", "list": chats},
        "left_chats": {"about": "This page lists all supergroups and channels you left.", "list": left or []},
    }


def write(path: Path, export: dict) -> Path:
    """The export as Telegram Desktop writes its result.json."""
    path.write_text(json.dumps(export, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


ANNA, MAMA, DIMA, OLYA = (
    ("Анна Смирнова", "user111"),
    ("Мама", "user222"),
    ("Дима Петров", "user333"),
    (
        "Оля",
        "user444",
    ),
)


def realistic_account() -> dict:
    """Anna's account: chats with her mother and a friend (texts, stickers, a voice message,
    photos with and without a caption, a forward, formatted text with a link, calls, a pin, a
    deleted account, a pause of a day), a group, saved messages, a channel, a bot, a left group."""
    mama = [
        service(1, 0, MAMA, "phone_call", duration_seconds=65),
        msg(2, 1, MAMA, "Аня, ты дома?"),
        msg(3, 1.2, MAMA, "Позвони, как сможешь"),
        msg(4, 3, ANNA, "Привет, мам! Да, только пришла"),
        sticker(5, 3.1, ANNA),
        msg(6, 4, MAMA, "Купи хлеба по дороге завтра"),
        msg(7, 5, ANNA, "Хорошо, куплю 👍"),
        msg(8, 6, MAMA, "", media_type="voice_message", file="(File not included.)", duration_seconds=7),
        msg(9, 7, ANNA, "Не могу сейчас слушать, напиши, пожалуйста"),
        msg(10, 8, MAMA, "Бабушка просила позвонить ей в субботу"),
        msg(11, 9, ANNA, "Позвоню обязательно"),
        msg(12, 1500, MAMA, "Как прошёл день?"),  # the next day: a new dialogue
        msg(
            13, 1501, ANNA, "Отлично! Вот фото с работы", photo="(File not included.)", width=1280, height=960
        ),
        msg(14, 1502, MAMA, "Красота какая"),
        msg(15, 1503, MAMA, "", photo="(File not included.)", width=960, height=1280),
        msg(16, 1504, ANNA, "Это наш новый офис"),
    ]
    dima = [
        msg(1, 0, DIMA, "Привет! Видела новость?"),
        msg(2, 0.5, DIMA, "Концерт перенесли на пятницу", forwarded_from="Афиша города"),
        msg(
            3,
            2,
            ANNA,
            ["Да! Вот ", {"type": "link", "text": "https://example.org/afisha"}, " — билеты ещё есть"],
        ),
        msg(4, 3, DIMA, ["Берём ", {"type": "bold", "text": "два"}, ", я угощаю"]),
        msg(5, 4, ANNA, "Договорились, встречаемся у входа в семь"),
        service(6, 5, ANNA, "pin_message", message_id=5),
        msg(7, 6, ("Deleted Account", "user999"), "кто-то ещё"),
        msg(8, 7, ANNA, "Это кто?"),
        {"id": 9, "type": "unsupported"},
        msg(10, 8, DIMA, "Понятия не имею 😂"),
        msg(11, 9, ANNA, "Ладно, до пятницы!"),
    ]
    hike = [
        service(1, 0, DIMA, "create_group", title="Поход 🏕", members=["Анна Смирнова", "Оля"]),
        msg(2, 1, DIMA, "Кто что берёт в поход?"),
        msg(3, 2, OLYA, "Я палатку"),
        msg(4, 3, ANNA, "Я котелок и еду на всех"),
        msg(5, 4, DIMA, "Отлично, тогда я карту и аптечку"),
        msg(6, 5, ANNA, "Выезжаем в субботу в восемь?"),
    ]
    saved = [msg(1, 0, ANNA, "список покупок: хлеб, молоко"), msg(2, 1, ANNA, "пароль от wifi в офисе")]
    channel = [msg(1, 0, ("Афиша города", "channel777"), "Концерт переносится на пятницу")]
    bot = [msg(1, 0, ANNA, "/start"), msg(2, 0.1, ("Погода", "user888"), "Введите город")]
    left = [
        chat(
            "Барахолка",
            "public_supergroup",
            5001,
            [msg(1, 0, OLYA, "Продам велосипед"), msg(2, 1, ANNA, "Какой размер рамы?")],
        )
    ]
    return account(
        ANNA,
        [
            chat("Мама", "personal_chat", 222, mama),
            chat("Дима Петров", "personal_chat", 333, dima),
            chat("Поход 🏕", "private_supergroup", 4001, hike),
            chat(None, "saved_messages", 111, saved),
            chat("Афиша города", "public_channel", 777, channel),
            chat("Погода", "bot_chat", 888, bot),
        ],
        left,
    )
