"""The machinery of test_readme.py: README.md's ```sh commands, a scratch copy of the repository in
the state `make demo` leaves, and a runner (the rules are in test_readme.py's docstring)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from contract import triton_io as io
from serve import preflight
from tests.helpers import MODEL, ROOT, interruptible, register_launcher

TIMEOUT = 300.0  # seconds one command may take (a server: to get ready)
SKIPPED = ("make demo", "make venv", "make test")
UNSET = ("TELEGRAM_", "TRITON_", "BOT_", "DEMO_", "BASE_MODEL", "PYTHONPATH")
_FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass(frozen=True)
class Command:
    text: str  # as bash gets it (a continued line joined, backslash-newline kept)
    line: int  # README's line number of its first line
    background: bool  # ends in `&`: a server


def sh_commands(markdown: str) -> list[Command]:
    """The commands of the ```sh blocks, in order."""
    commands: list[Command] = []
    fence: str | None = None
    pending: list[str] = []
    start = 0
    for number, line in enumerate(markdown.splitlines(), 1):
        if fence is None:
            match = _FENCE.match(line)
            fence = match[1] if match else None
            continue
        if line.strip() == "```":
            fence = None
            continue
        if fence != "sh" or (not pending and (not line.strip() or line.lstrip().startswith("#"))):
            continue
        start = start if pending else number
        pending.append(line)
        if line.endswith("\\"):
            continue
        text, pending = "\n".join(pending).strip(), []
        if text.split("#", 1)[0].strip() in SKIPPED:
            continue
        background = text.rstrip().endswith("&") and not text.rstrip().endswith("&&")
        commands.append(
            Command(text.rstrip().removesuffix("&").rstrip() if background else text, start, background)
        )
    return commands


def readme_commands(path: Path) -> list[Command]:
    """`path`'s commands; a skip where it has no ```sh block yet."""
    commands = sh_commands(path.read_text(encoding="utf-8"))
    if not commands:
        pytest.skip(f"{path.name} has no ```sh block yet: nothing to run (see this test's docstring)")
    return commands


def after_demo(folder: Path, checkpoint: Path, repository: Path) -> Path:
    """A scratch copy of the repository as `make demo` leaves it: this checkout's files (tracked and
    new, not ignored), its virtual environments, `checkpoint` as output/, `repository`'s model."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file() and not name.startswith(("output/", "model_repository/rudialogpt")):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name, follow_symlinks=False)  # mtimes kept: make's stamp holds
    for venv in (".venv", ".venv-triton"):
        if (ROOT / venv).exists():
            (folder / venv).symlink_to((ROOT / venv).resolve())
    shutil.copytree(checkpoint, folder / "output", symlinks=True, dirs_exist_ok=True)
    shutil.copytree(repository / MODEL, folder / "model_repository" / MODEL, symlinks=True)
    return folder


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(UNSET)}


def _tail(text: str, n: int = 4000) -> str:
    return text if len(text) <= n else "…" + text[-n:]


def failure(readme: str, command: Command, what: str, output: str) -> str:
    return f"{readme} line {command.line}: `{command.text}` {what}; its output:\n{_tail(output)}"


class ReadmeRun:
    """Runs README commands one after another in `root`; stop() ends the servers they started."""

    def __init__(self, readme: str, root: Path, timeout: float = TIMEOUT):
        self.readme, self.root, self.timeout, self.env = readme, root, timeout, environment()
        self.servers: list[tuple[subprocess.Popen[bytes], Path]] = []

    def run(self, command: Command) -> None:
        if command.background:
            return self.start(command)
        proc = subprocess.Popen(
            ["bash", "-c", command.text],
            cwd=self.root,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a timeout ends all it started
        )
        try:
            out, _ = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            out, _ = proc.communicate()
            pytest.fail(
                failure(
                    self.readme,
                    command,
                    f"did not end within {self.timeout:.0f} s (a server? end it with &)",
                    out.decode(),
                ),
                pytrace=False,
            )
        if proc.returncode:
            pytest.fail(
                failure(self.readme, command, f"exited {proc.returncode}", out.decode(errors="replace")),
                pytrace=False,
            )

    def start(self, command: Command) -> None:
        port_flag = re.search(r"--http-port[= ](\d+)", command.text)
        port = int(port_flag[1]) if port_flag else io.DEFAULT_HTTP_PORT
        try:
            preflight.check_ports("127.0.0.1", {"HTTP": port})
        except preflight.PortInUse as exc:
            pytest.skip(f"{self.readme} line {command.line} starts Triton on a port taken here: {exc}")
        log = self.root / f".readme-server-{len(self.servers)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", command.text],
                cwd=self.root,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=interruptible,  # Ctrl-C stops it, also under a test run that ignores SIGINT
            )
        register_launcher(proc.pid)
        self.servers.append((proc, log))
        deadline = time.monotonic() + self.timeout
        while not triton_ready(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                what = f"exited {proc.returncode}" if proc.returncode is not None else "was not ready in time"
                pytest.fail(
                    failure(self.readme, command, f"(a server) {what}", log.read_text(errors="replace")),
                    pytrace=False,
                )
            time.sleep(0.5)

    def stop(self) -> None:
        """Ctrl-C to each server, as a reader would; killed when that does not end it."""
        for proc, _log in reversed(self.servers):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(40)
                except subprocess.TimeoutExpired:
                    _kill(proc)
        self.servers.clear()


def triton_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_readme(path: Path, root: Path, timeout: float = TIMEOUT) -> None:
    """Every ```sh command of `path`, in order, in `root`; a failure names the first that failed."""
    commands = readme_commands(path)
    runner = ReadmeRun(path.name, root, timeout)
    try:
        for command in commands:
            runner.run(command)
    finally:
        runner.stop()
