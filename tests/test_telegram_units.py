"""Unit tests of the Telegram bot's helpers: settings, text splitting, the addressed-to-me filter."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.settings import TELEGRAM_API, Settings, triton_timeout
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


def test_settings_defaults_and_token_not_in_repr():
    s = Settings.from_env(
        {
            "TELEGRAM_BOT_TOKEN": "123:secret",
            "ALLOWED_CHAT_IDS": " 5, -100200,",
            "TELEGRAM_BASE_URL": "http://127.0.0.1:8081/",
        }
    )
    assert (s.base_url, s.data_dir, s.metrics_port, s.webhook_port) == (
        "http://127.0.0.1:8081",
        Path("data"),
        9100,
        8443,
    )
    assert s.allowed_chat_ids == {5, -100200}
    assert "secret" not in repr(s)


@pytest.mark.parametrize(
    "env, webhook, names",
    [
        ({"TELEGRAM_BOT_TOKEN": ""}, False, "TELEGRAM_BOT_TOKEN"),
        ({"TELEGRAM_BOT_TOKEN": "  "}, False, "TELEGRAM_BOT_TOKEN"),
        ({"ALLOWED_CHAT_IDS": "1,two"}, False, "ALLOWED_CHAT_IDS"),
        ({"BOT_METRICS_PORT": "nine"}, False, "BOT_METRICS_PORT"),
        ({"BOT_DRAFT_INTERVAL": "fast"}, False, "BOT_DRAFT_INTERVAL"),
        ({"BOT_DRAFT_INTERVAL": "-1"}, False, "BOT_DRAFT_INTERVAL"),
        ({"BOT_DRAFT_INTERVAL": "nan"}, False, "BOT_DRAFT_INTERVAL"),
        ({"TELEGRAM_BASE_URL": "127.0.0.1:8081"}, False, "TELEGRAM_BASE_URL must start with http"),
        ({}, True, "BOT_WEBHOOK_URL"),
        ({"BOT_WEBHOOK_URL": "https://bot.example.com/hook"}, True, "BOT_WEBHOOK_SECRET"),
        (
            {"BOT_WEBHOOK_URL": "https://bot.example.com/hook", "BOT_WEBHOOK_SECRET": "no spaces"},
            True,
            "BOT_WEBHOOK_SECRET",
        ),
    ],
)
def test_settings_errors_name_the_variable(env, webhook, names):
    env = {"TELEGRAM_BOT_TOKEN": "123:abc", **env}
    with pytest.raises(ValueError, match=names):
        Settings.from_env(env, webhook=webhook)


@pytest.mark.parametrize("blank", ["", "  ", "/"])
def test_blank_base_url_means_telegrams_own(blank):
    s = Settings.from_env({"TELEGRAM_BOT_TOKEN": "123:abc", "TELEGRAM_BASE_URL": blank})
    assert s.base_url == TELEGRAM_API == "https://api.telegram.org"


@pytest.mark.parametrize("value, expected", [("", 1.0), ("0", 0.0), ("0.25", 0.25), (" 2 ", 2.0)])
def test_draft_interval(value, expected):
    assert (
        Settings.from_env({"TELEGRAM_BOT_TOKEN": "123:abc", "BOT_DRAFT_INTERVAL": value}).draft_every
        == expected
    )


@pytest.mark.parametrize("value", ["ten", "0", "-3", "inf", "nan"])
def test_bad_triton_timeout_names_the_variable(value):
    with pytest.raises(ValueError, match=f"TRITON_TIMEOUT must be a number of seconds > 0, got '{value}'"):
        triton_timeout({"TRITON_TIMEOUT": value})
    assert triton_timeout({}) == triton_timeout({"TRITON_TIMEOUT": " "}) == 10.0
    assert triton_timeout({"TRITON_TIMEOUT": "2.5"}) == 2.5


def test_without_mention():
    assert (
        without_mention("@Dialogue_Test_Bot привет @dialogue_test_bot2", "dialogue_test_bot")
        == "  привет @dialogue_test_bot2"
    )
