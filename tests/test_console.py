"""`python -m bot --console` as a user runs it, against the real Triton."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def console(triton, model_repository, stdin: str, *flags: str, url: str | None = None):
    env = dict(os.environ, TRITON_URL=url or triton.url, TRITON_MODEL="rudialogpt")
    return subprocess.run(
        [sys.executable, "-m", "bot", "--console", "--tokenizer",
         str(model_repository / "rudialogpt" / "tokenizer"), *flags],
        input=stdin, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_one_reply_per_line_and_reset(triton, model_repository):
    proc = console(triton, model_repository, "Привет!\n\nКак дела?\n/reset\nЧто нового?\n", "--seed", "1",
                   "--max-new-tokens", "8")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4  # the blank line gets no reply
    assert lines[2] == "Начнём сначала."
    assert all(line.strip() for line in lines)
    assert "reply:" in proc.stderr  # logs go to stderr


def test_greedy_console_is_deterministic(triton, model_repository):
    runs = [console(triton, model_repository, "Привет!\nКак дела?\n", "--greedy").stdout for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0].splitlines()) == 2


def test_triton_down_gives_the_unavailable_line(triton, model_repository):
    proc = console(triton, model_repository, "Привет!\n", "--timeout", "1", url="127.0.0.1:9")
    assert proc.returncode == 0
    assert proc.stdout.strip() == "Модель временно недоступна, попробуйте чуть позже."


def test_missing_tokenizer_names_the_fix(triton, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bot", "--console", "--tokenizer", str(tmp_path)],
                          input="", capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "python -m export" in proc.stderr
