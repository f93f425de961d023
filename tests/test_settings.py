"""The bot's settings (bot/settings.py): defaults, flags over variables, errors naming the culprit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.__main__ import load_settings, parse_args
from bot.settings import DEFAULT_TOKENIZER, TELEGRAM_API, Settings
from tests.helpers import ROOT

TOKEN = {"TELEGRAM_BOT_TOKEN": "123:abc"}


def test_defaults_match_the_readme_and_secrets_stay_out_of_repr():
    s = Settings.from_env(
        {
            "TELEGRAM_BOT_TOKEN": "123:secret",
            "ALLOWED_CHAT_IDS": " 5, -100200,",
            "TELEGRAM_BASE_URL": "http://127.0.0.1:8081/",
            "BOT_DATABASE_URL": " postgresql://bot:pw@db:5432/bot ",
            "BOT_CHAT_LOCK_SECONDS": "12.5",
        }
    )
    assert (s.base_url, s.data_dir, s.metrics_port, s.webhook_port, s.draft_every) == (
        "http://127.0.0.1:8081",
        Path("data"),
        9100,
        8443,
        1.0,
    )
    assert s.allowed_chat_ids == {5, -100200}
    db = s.database
    assert (db.url, db.connect_seconds, db.retry_seconds, db.lock_seconds) == (
        "postgresql://bot:pw@db:5432/bot",
        60,
        10,
        12.5,
    )
    t = s.triton
    assert (t.url, t.model, t.timeout) == ("127.0.0.1:8000", "rudialogpt", 10.0)
    assert s.tokenizer_dir == DEFAULT_TOKENIZER
    assert "secret" not in repr(s) and "pw" not in repr(s)


def test_every_variable_is_read():
    env = {
        **TOKEN,
        "BOT_DATA_DIR": "/var/bot",
        "BOT_METRICS_PORT": "0",
        "BOT_WEBHOOK_URL": "https://bot.example.com/hook",
        "BOT_WEBHOOK_SECRET": "s3cret_-",
        "BOT_WEBHOOK_PORT": "443",
        "BOT_DRAFT_INTERVAL": "0",
        "BOT_DATABASE_CONNECT_SECONDS": "5",
        "BOT_DATABASE_RETRY_SECONDS": "2",
        "TRITON_URL": "triton:8000",
        "TRITON_MODEL": "other",
        "TRITON_TIMEOUT": "2.5",
        "BOT_TOKENIZER_DIR": "/models/tok",
    }
    s = Settings.from_env(env, mode="webhook")
    assert (s.data_dir, s.metrics_port, s.webhook_port, s.draft_every) == (Path("/var/bot"), 0, 443, 0.0)
    assert (s.webhook_url, s.webhook_secret) == ("https://bot.example.com/hook", "s3cret_-")
    assert (s.database.connect_seconds, s.database.retry_seconds) == (5, 2)
    assert s.triton.__dict__ == {"url": "triton:8000", "model": "other", "timeout": 2.5}
    assert s.tokenizer_dir == Path("/models/tok")


@pytest.mark.parametrize("value", ["1", "0", "off"])
def test_the_retired_step_gate_is_refused_with_the_reason(value):
    """Every generation of a process steps in one request per round now: there is nothing to switch."""
    with pytest.raises(ValueError, match=r"TRITON_STEP_GATE is no longer a setting: .* remove it"):
        Settings.from_env({"TRITON_STEP_GATE": value}, mode="console")
    assert Settings.from_env({"TRITON_STEP_GATE": " "}, mode="console")  # blank: unset


def test_flags_override_the_environment():
    env = {"TRITON_TIMEOUT": "ten", "BOT_TOKENIZER_DIR": "/env/tok"}
    args = parse_args(["--console", "--timeout", "2.5", "--tokenizer", "/flag/tok"])
    s = load_settings(args, env)
    assert (s.triton.timeout, s.tokenizer_dir) == (2.5, Path("/flag/tok"))
    s = load_settings(parse_args(["--console"]), {"TRITON_TIMEOUT": "3", "BOT_TOKENIZER_DIR": "/env/tok"})
    assert (s.triton.timeout, s.tokenizer_dir) == (3.0, Path("/env/tok"))
    with pytest.raises(ValueError, match=r"^--timeout must be a number of seconds > 0, got 'soon'$"):
        load_settings(parse_args(["--console", "--timeout", "soon"]), {"TRITON_TIMEOUT": "3"})


def test_the_console_needs_no_telegram_token_and_telegram_does():
    assert Settings.from_env({}, mode="console").token == ""
    for mode in ("polling", "webhook"):
        with pytest.raises(ValueError, match="TELEGRAM_BOT_TOKEN is not set: create a bot with @BotFather"):
            load_settings(parse_args(["--webhook"] if mode == "webhook" else []), {})


@pytest.mark.parametrize(
    "env, mode, message",
    [
        ({"TELEGRAM_BOT_TOKEN": ""}, "polling", "TELEGRAM_BOT_TOKEN is not set"),
        ({"TELEGRAM_BOT_TOKEN": "  "}, "polling", "TELEGRAM_BOT_TOKEN is not set"),
        # numbers
        ({"TRITON_TIMEOUT": "ten"}, "console", "TRITON_TIMEOUT must be a number of seconds > 0, got 'ten'"),
        ({"TRITON_TIMEOUT": "0"}, "console", "TRITON_TIMEOUT must be a number of seconds > 0, got '0'"),
        ({"TRITON_TIMEOUT": "inf"}, "console", "TRITON_TIMEOUT must be a number of seconds > 0, got 'inf'"),
        ({"BOT_DRAFT_INTERVAL": "fast"}, "polling", "BOT_DRAFT_INTERVAL must be a number of seconds >= 0"),
        ({"BOT_DRAFT_INTERVAL": "-1"}, "polling", "BOT_DRAFT_INTERVAL must be a number of seconds >= 0"),
        ({"BOT_DRAFT_INTERVAL": "nan"}, "polling", "BOT_DRAFT_INTERVAL must be a number of seconds >= 0"),
        (
            {"BOT_CHAT_LOCK_SECONDS": "soon"},
            "polling",
            "BOT_CHAT_LOCK_SECONDS must be a number of seconds > 0",
        ),
        ({"BOT_DATABASE_RETRY_SECONDS": "-1"}, "polling", "BOT_DATABASE_RETRY_SECONDS must be a number"),
        ({"BOT_DATABASE_CONNECT_SECONDS": "0"}, "polling", "BOT_DATABASE_CONNECT_SECONDS must be a number"),
        (
            {"BOT_METRICS_PORT": "nine"},
            "polling",
            "BOT_METRICS_PORT must be a port number, 0-65535, got 'nine'",
        ),
        ({"BOT_METRICS_PORT": "70000"}, "polling", "BOT_METRICS_PORT must be a port number, 0-65535"),
        ({"BOT_WEBHOOK_PORT": "0"}, "polling", "BOT_WEBHOOK_PORT must be a port number, 1-65535, got '0'"),
        ({"ALLOWED_CHAT_IDS": "1,two"}, "polling", "ALLOWED_CHAT_IDS must be comma-separated chat ids"),
        # booleans
        ({"BOT_SHARE_DEFAULT": "maybe"}, "console", "BOT_SHARE_DEFAULT must be 1 or 0 .*, got 'maybe'"),
        # URLs
        (
            {"TRITON_URL": "http://triton:8000"},
            "console",
            "TRITON_URL must be Triton's HTTP host:port without",
        ),
        ({"TRITON_URL": "triton"}, "console", "TRITON_URL must be Triton's HTTP host:port without a scheme"),
        ({"TELEGRAM_BASE_URL": "127.0.0.1:8081"}, "polling", "TELEGRAM_BASE_URL must start with http"),
        ({"BOT_DATABASE_URL": "mysql://bot@db/bot"}, "polling", "BOT_DATABASE_URL must be a postgresql://"),
        ({"BOT_DATABASE_URL": "db:5432"}, "polling", "BOT_DATABASE_URL must be a postgresql://"),
        ({}, "webhook", "--webhook needs BOT_WEBHOOK_URL"),
        ({"BOT_WEBHOOK_URL": "http://bot.example.com/hook"}, "webhook", "--webhook needs BOT_WEBHOOK_URL"),
        (
            {"BOT_WEBHOOK_URL": "https://bot.example.com/hook"},
            "webhook",
            "--webhook needs BOT_WEBHOOK_SECRET",
        ),
        (
            {"BOT_WEBHOOK_URL": "https://bot.example.com/hook", "BOT_WEBHOOK_SECRET": "no spaces"},
            "webhook",
            "--webhook needs BOT_WEBHOOK_SECRET",
        ),
    ],
)
def test_errors_name_the_variable_and_the_fix(env, mode, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env({**TOKEN, **env}, mode=mode)


def test_the_database_password_is_not_in_the_error():
    with pytest.raises(ValueError) as error:
        Settings.from_env({"BOT_DATABASE_URL": "mysql://bot:hunter2@db/bot"}, mode="console")
    assert "hunter2" not in str(error.value)


def test_python_m_bot_reads_a_dot_env_file_under_the_environment(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text(
        "TELEGRAM_BOT_TOKEN=123:from-file\nTRITON_MODEL=from-file\nTRITON_TIMEOUT=5\n"
        "BOT_METRICS_PORT=1\nGRAFANA_ADMIN_PASSWORD=compose's\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRITON_MODEL", "from-env")
    monkeypatch.setenv("TRITON_TIMEOUT", " ")  # set, blank: the default, not the file's
    for name in ("TELEGRAM_BOT_TOKEN", "BOT_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings(parse_args([]))
    assert (s.token, s.triton.model, s.triton.timeout, s.metrics_port) == (
        "123:from-file",
        "from-env",
        10.0,
        1,
    )
    assert Settings.from_env({}, mode="console").triton.model == "rudialogpt"  # a mapping alone


@pytest.mark.parametrize("blank", ["", "  ", "/"])
def test_blank_base_url_means_telegrams_own(blank):
    s = Settings.from_env({**TOKEN, "TELEGRAM_BASE_URL": blank})
    assert s.base_url == TELEGRAM_API == "https://api.telegram.org"


@pytest.mark.parametrize("value, expected", [("", 1.0), ("0", 0.0), ("0.25", 0.25), (" 2 ", 2.0)])
def test_draft_interval(value, expected):
    assert Settings.from_env({**TOKEN, "BOT_DRAFT_INTERVAL": value}).draft_every == expected


@pytest.mark.parametrize("value", ["", " "])
def test_blank_triton_timeout_is_the_default(value):
    assert Settings.from_env({"TRITON_TIMEOUT": value}, mode="console").triton.timeout == 10.0


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--timeout", "soon"], {"TRITON_TIMEOUT": "3"}, "error: --timeout must be a number of seconds > 0"),
        ([], {"BOT_SHARE_DEFAULT": "maybe"}, "error: BOT_SHARE_DEFAULT must be 1 or 0"),
        ([], {"TRITON_URL": "http://127.0.0.1:8000"}, "error: TRITON_URL must be Triton's HTTP host:port"),
    ],
)
def test_python_m_bot_stops_at_start_with_the_error(args, env, message):
    """Checked before anything starts: no Triton, no tokenizer needed to get the error."""
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "--console", "--tokenizer", "/nonexistent", *args],
        input="Привет!\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr


@pytest.mark.parametrize(
    "value, shared", [("1", True), ("yes", True), ("0", False), (" ", False), (None, False)]
)
def test_share_default_is_no_unless_the_operator_says(value, shared):
    env = {} if value is None else {"BOT_SHARE_DEFAULT": value}
    assert Settings.from_env(env, mode="console").share_default is shared
    with pytest.raises(ValueError, match=r"^BOT_SHARE_DEFAULT must be 1 or 0 .*, got 'maybe'$"):
        Settings.from_env({"BOT_SHARE_DEFAULT": "maybe"}, mode="console")


@pytest.mark.parametrize(
    "env, buttons, groups",
    [
        ({}, True, False),  # replies in private chats carry 👍/👎; groups' do not
        ({"BOT_FEEDBACK_GROUPS": "1"}, True, True),
        ({"BOT_FEEDBACK_BUTTONS": "off", "BOT_FEEDBACK_GROUPS": " "}, False, False),
    ],
)
def test_feedback_buttons_are_on_in_private_chats_unless_the_operator_says(env, buttons, groups):
    s = Settings.from_env(env, mode="console")
    assert (s.feedback_buttons, s.feedback_groups) == (buttons, groups)
    with pytest.raises(ValueError, match=r"^BOT_FEEDBACK_BUTTONS must be 1 or 0 .*, got 'some'$"):
        Settings.from_env({"BOT_FEEDBACK_BUTTONS": "some"}, mode="console")
