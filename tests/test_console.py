"""The console chat against the real Triton: `python -m bot --console` piped, and on a terminal (a pty)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bot.console import run_console
from bot.texts import NOTHING_TO_RATE, RATED
from client.chat import ChatBot
from client.rounds import TritonClient
from client.sampling import SamplingConfig
from tests.helpers import ROOT, interactive, start_triton


def console_argv(model_repository: Path, *flags: str) -> list[str]:
    """`python -m bot --console` with the exported tokenizer (the model's folder: its versions')."""
    tokenizer = model_repository / "rudialogpt"
    return [sys.executable, "-m", "bot", "--console", "--tokenizer", str(tokenizer), *flags]


def console(url: str, model_repository, stdin: str, *flags: str):
    env = dict(os.environ, TRITON_URL=url, TRITON_MODEL="rudialogpt")
    return subprocess.run(
        console_argv(model_repository, *flags),
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def test_one_reply_per_line_reset_and_ratings(triton, model_repository):
    proc = console(
        triton.url,
        model_repository,
        "/good\nПривет!\n\nКак дела?\n/bad\n/reset\nЧто нового?\n",
        "--seed",
        "1",
        "--max-new-tokens",
        "8",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 6  # the blank line gets no reply
    assert lines[0] == NOTHING_TO_RATE  # no reply yet
    assert lines[3] == RATED.format(emoji="👎") and lines[4] == "Начнём сначала."
    assert all(line.strip() for line in lines)
    assert "reply:" in proc.stderr  # logs go to stderr
    # the console stores nothing: a rating is one log line naming the reply's model version
    assert proc.stderr.count("rated 👎: the reply of model version 1: ") == 1


def test_greedy_console_is_deterministic(triton, model_repository):
    runs = [
        console(triton.url, model_repository, "Привет!\nКак дела?\n", "--greedy").stdout for _ in range(2)
    ]
    assert runs[0] == runs[1] and len(runs[0].splitlines()) == 2


def test_triton_down_gives_the_unavailable_line(model_repository):
    proc = console("127.0.0.1:9", model_repository, "Привет!\n", "--timeout", "1")
    assert proc.returncode == 0
    assert proc.stdout.strip() == "Модель временно недоступна, попробуйте чуть позже."


def test_missing_tokenizer_names_the_fix(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "--console", "--tokenizer", str(tmp_path)],
        input="",
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "python -m export" in proc.stderr


def test_piped_output_is_plain_lines(triton, model_repository):
    proc = console(triton.url, model_repository, "Привет!\nКак дела?\n", "--seed", "2")
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 2
    assert "\r" not in proc.stdout and "\033" not in proc.stdout  # nothing meant for a terminal


class Watched(ChatBot):
    """The real ChatBot; after each growth of the visible reply, what the terminal has received."""

    def __init__(self, *args, screen, **kwargs):
        super().__init__(*args, **kwargs)
        self.screen, self.seen = screen, []

    async def reply(self, turns, on_text=None):
        async def watched(text):
            on_text(text)  # the console writes the line so far
            self.seen.append((text, self.screen()))

        return await super().reply(turns, on_text=watched if on_text else None)


def test_on_a_terminal_the_reply_grows_as_it_is_generated(triton, tokenizer):
    master, slave = os.openpty()
    os.set_blocking(master, False)
    received = bytearray()

    def screen() -> str:
        while True:
            try:
                received.extend(os.read(master, 65536))
            except BlockingIOError:
                return received.decode(errors="replace").replace("\r\n", "\n")

    bot = Watched(
        TritonClient(triton.url, "rudialogpt"),
        tokenizer,
        SamplingConfig(max_new_tokens=24),
        seed=0,
        screen=screen,
        stops=False,  # long replies
    )

    async def chat(terminal) -> None:
        try:
            await run_console(bot, io.StringIO("Привет!\n\nКак дела?\n"), terminal)
        finally:
            await bot.client.close()

    with open(slave, "w", encoding="utf-8") as terminal:
        assert terminal.isatty()
        asyncio.run(chat(terminal))
        lines = screen().splitlines()
    os.close(master)
    assert len(lines) == 2 and all(lines)
    assert len(bot.seen) >= 4
    for text, shown in bot.seen:  # each growth was on the terminal at once, before the line ended
        assert shown.endswith(text) and shown.rsplit("\n", 1)[-1] == text
    assert {shown.count("\n") for _, shown in bot.seen} == {0, 1}  # both replies streamed


def test_ctrl_c_ends_the_chat_at_once(triton, model_repository):
    env = dict(os.environ, TRITON_URL=triton.url, TRITON_MODEL="rudialogpt")
    proc = interactive(console_argv(model_repository, "--max-new-tokens", "8"), env)
    try:
        proc.stdin.write("Привет!\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip()  # a reply: now it waits for the next line
        proc.send_signal(signal.SIGINT)  # stdin stays open: no line, no EOF
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.parametrize("value", ["ten", "0", "-1"])
def test_bad_triton_timeout_is_a_clear_error(model_repository, value):
    env = dict(os.environ, TRITON_URL="127.0.0.1:9", TRITON_TIMEOUT=value)  # refused before any request
    proc = subprocess.run(
        console_argv(model_repository),
        input="Привет!\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"TRITON_TIMEOUT must be a number of seconds > 0, got '{value}'" in proc.stderr


def another_tokenizer(folder: Path, dest: Path) -> Path:
    """A copy of the tokenizer `folder` that is another file (its digest differs), as a tokenizer
    of another training run is."""
    shutil.copytree(folder, dest)
    config = dest / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": 12345}))
    return dest


def test_a_tokenizer_that_is_not_the_served_models_is_refused_at_start(triton, model_repository, tmp_path):
    """The bot's --tokenizer is not the one the served version was exported with: one error line
    naming the setting and the folder that matches, exit 2, no reply sent."""
    mine = another_tokenizer(model_repository / "rudialogpt" / "1" / "tokenizer", tmp_path / "tok")
    env = dict(os.environ, TRITON_URL=triton.url, TRITON_MODEL="rudialogpt")
    argv = [sys.executable, "-m", "bot", "--console", "--tokenizer", str(mine)]
    proc = subprocess.run(
        argv, input="Привет!\n", capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert "Triton serves model version 1" in line and "--tokenizer (BOT_TOKENIZER_DIR)" in line
    assert str(model_repository / "rudialogpt") in line and str(mine) in line


def test_a_served_model_of_another_repository_is_refused_at_start(triton, model_repository, tmp_path):
    """Triton serves another repository's model (its tokenizer differs) while the bot reads the
    default one: refused, naming the served repository's model folder."""
    other = tmp_path / "other_repository"
    shutil.copytree(model_repository, other, ignore=shutil.ignore_patterns("rudialogpt_*"))
    version = other / "rudialogpt" / "1"
    shutil.rmtree(version / "tokenizer")
    another_tokenizer(model_repository / "rudialogpt" / "1" / "tokenizer", version / "tokenizer")
    server = start_triton(other, tmp_path / "t.log")
    try:
        proc = console(server.url, model_repository, "Привет!\n")
    finally:
        server.stop()
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    fix = "Point --tokenizer (BOT_TOKENIZER_DIR) at the model's folder of the repository Triton serves"
    assert f"{fix} ({other / 'rudialogpt'}" in proc.stderr


def test_max_new_tokens_below_1_names_the_flag(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "--console", "--tokenizer", str(tmp_path), "--max-new-tokens", "-3"],
        input="Привет!\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        2,
        "",
        "error: --max-new-tokens must be >= 1, got -3\n",
    )


def test_max_new_tokens_beyond_the_models_positions_is_refused_at_start(triton, model_repository, tokenizer):
    from contract.dialogue import build_prompt

    proc = console(triton.url, model_repository, "Привет!\n", "--max-new-tokens", "100000")
    most = 512 - tokenizer.count(build_prompt(["."]))
    assert proc.returncode == 2 and proc.stdout == ""  # no reply was tried
    assert proc.stderr.endswith(
        "error: --max-new-tokens 100000 leaves no room for a message: the served model holds 512 "
        f"positions; use at most {most}\n"
    )
    ok = console(triton.url, model_repository, "Привет!\n", "--max-new-tokens", str(most), "--seed", "1")
    assert ok.returncode == 0 and len(ok.stdout.splitlines()) == 1, ok.stderr
