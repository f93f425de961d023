"""bot/text.py: Telegram's length measure, splitting long replies, removing the bot's @mention (the
addressed-to-me filter is tested end to end in test_telegram.py)."""

from __future__ import annotations

import pytest

from bot.text import split_message, without_mention


@pytest.mark.parametrize(
    "text, limit, expected",
    [
        ("", 4096, []),
        ("короткий ответ", 4096, ["короткий ответ"]),
        ("a" * 4096, 4096, ["a" * 4096]),
        ("a" * 4097, 4096, ["a" * 4096, "a"]),
        ("ab cd ef", 5, ["ab cd", "ef"]),
        ("😀😀😀", 4, ["😀😀", "😀"]),  # an emoji is 2 UTF-16 units, Telegram's measure
    ],
)
def test_split_message(text, limit, expected):
    assert split_message(text, limit) == expected


@pytest.mark.parametrize("text", [" ".join(["слово"] * 2000), "😀" * 5000, "x" * 10_000 + " хвост"])
def test_long_replies_are_split_into_telegram_sized_parts(text):
    parts = split_message(text)
    assert len(parts) > 1
    assert all(0 < len(p.encode("utf-16-le")) // 2 <= 4096 and p == p.strip() for p in parts)
    assert "".join(parts).replace(" ", "") == text.replace(" ", "")


def test_without_mention():
    assert (
        without_mention("@Dialogue_Test_Bot привет @dialogue_test_bot2", "dialogue_test_bot")
        == "  привет @dialogue_test_bot2"
    )
