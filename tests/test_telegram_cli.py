"""`python -m bot` against the fake Bot API and the real Triton: webhook and long polling, the
whole entry point with its signals; a missing or rejected token; a Bot API server that fails the
optional calls and redelivers (the issue's: the bot stays up and answers each message once)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import urllib.error
import urllib.request

import pytest

from serve.server import free_ports
from tests.fake_telegram import NOT_FOUND, SERVER_ERROR
from tests.helpers import ROOT, metric
from tests.telegram_harness import (
    CHAT,
    OTHER,
    WEBHOOK_SECRET,
    WEBHOOK_URL,
    bot_env,
    generated,
    listening,
    python_m_bot,
)

# Bounds setup too: the first test here may train, export and start the session's Triton (~1 min).
pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("no_leaked_threads")]


def test_python_m_bot_webhook_mode(tg, triton, model_repository, tmp_path):
    (port, metrics_port), secret = free_ports(2), "s3cret-Value_1"
    env = bot_env(
        tg,
        tmp_path,
        TRITON_URL=triton.url,
        TRITON_MODEL="rudialogpt",
        BOT_METRICS_PORT=str(metrics_port),
        BOT_WEBHOOK_URL="https://bot.example.com/telegram-hook",
        BOT_WEBHOOK_SECRET=secret,
        BOT_WEBHOOK_PORT=str(port),
    )
    proc = subprocess.Popen(
        python_m_bot(model_repository, "--webhook"),
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def post(update: dict, secret_token: str) -> int:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/telegram-hook",
            json.dumps(update).encode(),
            {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": secret_token},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        # PTB sets the webhook, then starts listening.
        asyncio.run(tg.wait_for(lambda: listening(port) or proc.poll() is not None, timeout=60))
        [hook] = tg.of("setWebhook")
        assert hook["url"] == "https://bot.example.com/telegram-hook" and hook["secret_token"] == secret
        assert post(tg.message(OTHER, "чужой"), "wrong-secret") == 403
        assert post(tg.message(CHAT, "Привет!"), secret) == 200
        asyncio.run(tg.wait_for(lambda: tg.texts(CHAT)))
        # Counted just after the reply is sent: scrape until it shows up.
        replies = lambda: metric(f"http://127.0.0.1:{metrics_port}/metrics", "bot_replies_total")  # noqa: E731
        asyncio.run(tg.wait_for(lambda: replies() == 1, timeout=10))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert generated(tg.texts(CHAT)[0]) and tg.texts(OTHER) == []
    assert tg.token.lower() not in (out + err).lower()


def test_python_m_bot_long_polling_streams_drafts(tg, triton, model_repository, tmp_path):
    env = bot_env(tg, tmp_path, TRITON_URL=triton.url, TRITON_MODEL="rudialogpt", BOT_DRAFT_INTERVAL="0.05")
    proc = subprocess.Popen(
        python_m_bot(model_repository, "--max-new-tokens", "40", "--seed", "3"),
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:  # run_polling itself: its start-up, the handlers, its shutdown on SIGTERM
        tg.message(CHAT, "Привет! Расскажи, как прошёл твой день?")
        asyncio.run(tg.wait_for(lambda: tg.texts(CHAT) or proc.poll() is not None, timeout=60))
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    [reply], drafts = tg.texts(CHAT), tg.of("sendMessageDraft", CHAT)
    assert generated(reply) and drafts and reply.startswith(drafts[-1]["text"])
    assert "drafts every 0.05 s" in err and "first text after" in err


@pytest.mark.parametrize(
    "token, message",
    [("", "TELEGRAM_BOT_TOKEN is not set"), ("999:REJECTED-token", "TELEGRAM_BOT_TOKEN was rejected")],
)
def test_python_m_bot_missing_or_rejected_token_exits_2(tg, model_repository, tmp_path, token, message):
    env = bot_env(tg, tmp_path, TRITON_URL="127.0.0.1:9")
    env["TELEGRAM_BOT_TOKEN"] = token
    proc = subprocess.run(
        python_m_bot(model_repository), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and message in proc.stderr
    [error] = [line for line in proc.stderr.splitlines() if "TELEGRAM_BOT_TOKEN" in line]
    assert error.startswith("error: ") and message in error
    assert "Traceback" not in proc.stderr  # one clear line, nothing else of the failure
    if token:
        assert [c.token for c in tg.calls] == [token]  # getMe, refused
        assert token.lower() not in (proc.stdout + proc.stderr).lower()


def test_python_m_bot_refuses_max_new_tokens_the_model_has_no_room_for(
    tg, triton, model_repository, tmp_path
):
    env = bot_env(tg, tmp_path, TRITON_URL=triton.url, TRITON_MODEL="rudialogpt")
    proc = subprocess.run(
        python_m_bot(model_repository, "--max-new-tokens", "100000"),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        "error: --max-new-tokens 100000 leaves no room for a message: the served model holds 512"
        in proc.stderr
    )
    assert tg.calls == []  # refused before the bot went online


@pytest.mark.parametrize("mode", ["polling", "webhook"])
def test_python_m_bot_stays_up_when_optional_calls_fail_and_updates_come_again(
    tg, triton, model_repository, tmp_path, mode
):
    """The issue's server: setMyCommands answers 500 (it used to end the process), typing and drafts
    are refused, every update comes twice; the bot answers each message once and logs each failing
    method once."""
    tg.failing.update(setMyCommands=SERVER_ERROR, sendChatAction=NOT_FOUND, sendMessageDraft=SERVER_ERROR)
    tg.updates.redeliver = 1
    port = free_ports(1)[0]
    webhook = dict(BOT_WEBHOOK_URL=WEBHOOK_URL, BOT_WEBHOOK_SECRET=WEBHOOK_SECRET, BOT_WEBHOOK_PORT=str(port))
    env = bot_env(
        tg,
        tmp_path,
        TRITON_URL=triton.url,
        TRITON_MODEL="rudialogpt",
        **(webhook if mode == "webhook" else {}),
    )
    tg.updates.webhook_target = f"http://127.0.0.1:{port}/telegram-hook"
    proc = subprocess.Popen(
        python_m_bot(model_repository, *(["--webhook"] if mode == "webhook" else [])),
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        for n, text in enumerate(("Привет!", "Как дела?"), 1):
            tg.message(CHAT, text)
            asyncio.run(tg.wait_for(lambda: len(tg.texts(CHAT)) >= n or proc.poll() is not None, timeout=60))  # noqa: B023
        asyncio.run(asyncio.sleep(1.0))  # the updates came again meanwhile
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    texts = tg.texts(CHAT)
    assert len(texts) == 2 and all(generated(t) for t in texts)
    for method in tg.failing:
        assert err.count(f"optional Bot API call {method} failed") == 1, err
    assert err.count("delivered again, skipped") >= 2 and "Traceback" not in err
