"""`python -m demo` on what the session already built: it chats, and Ctrl-C stops its Triton at once."""

from __future__ import annotations

import os
import signal
import socket
import sys

import pytest

from serve.server import free_port
from tests.helpers import interactive


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.timeout(180)
def test_ctrl_c_in_the_chat_stops_triton(tiny_checkpoint, model_repository):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("TELEGRAM_BOT_TOKEN", "TRITON_URL")}
    # It starts a Triton of its own (the test must see it stop), reusing the checkpoint and the export.
    proc = interactive(
        [
            sys.executable,
            "-m",
            "demo",
            "--output",
            str(tiny_checkpoint),
            "--repository",
            str(model_repository),
            "--http-port",
            str(port),
        ],
        env,
    )
    try:
        proc.stdin.write("Привет!\n")
        proc.stdin.flush()
        reply = proc.stdout.readline()  # Triton is up and answered: now the chat waits for a line
        assert reply.strip() and listening(port)
        proc.send_signal(signal.SIGINT)  # stdin stays open: no line, no EOF
        assert proc.wait(timeout=40) == 0
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert "reusing the checkpoint" in err and "stopped Triton" in err
    assert not listening(port)
