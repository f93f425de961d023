"""`python -m bot` against the fake Bot API and the real Triton: webhook and long polling, the
whole entry point with its signals; a missing or rejected token."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import urllib.error
import urllib.request

import pytest

from serve.server import free_ports
from tests.helpers import ROOT, metric
from tests.telegram_harness import (
    CHAT,
    OTHER,
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
    if token:
        assert [c.token for c in tg.calls] == [token]  # getMe, refused
        assert "<TOKEN>" in proc.stderr and token.lower() not in (proc.stdout + proc.stderr).lower()


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
