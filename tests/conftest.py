"""Session fixtures: a tiny model trained on the bundled data, its export, the real Triton,
PostgreSQL; the Telegram tests' fake Bot API. Plain helpers are in helpers.py and telegram_harness.py."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from bot.settings import Settings
from client.chat import DialogueTokenizer
from serve.server import free_port
from tests.fake_telegram import FakeTelegram
from tests.helpers import IDLE_MODEL, LAUNCHERS, MODEL, SAMPLE_CSV, leftovers, start_triton


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if any server of this run left a process, shm region or temp folder behind."""
    deadline = time.monotonic() + 15  # a watchdog may still be stopping a SIGKILLed launcher's server
    while (left := leftovers(LAUNCHERS)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter:
            reporter.write_line("LEAK: left behind by this test run:\n  " + "\n  ".join(left), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny GPT-2 fine-tuned for a few steps on the bundled sample (offline, ~10 s)."""
    from training.config import TrainConfig
    from training.train import train

    out = tmp_path_factory.mktemp("tiny-checkpoint")
    return train(
        TrainConfig(
            data=SAMPLE_CSV, output=out, base_model="tiny", max_steps=40, logging_steps=20, save_steps=40
        )
    )


@pytest.fixture(scope="session")
def model_repository(tiny_checkpoint, tmp_path_factory) -> Path:
    """`python -m export` of the tiny checkpoint into a fresh Triton model repository."""
    from export import ServingConfig, export

    repo = tmp_path_factory.mktemp("model_repository")
    export(tiny_checkpoint, repo, serving=ServingConfig(idle_seconds=120))
    # The same model with a 2 s idle timeout, for the test that abandoned caches are freed.
    export(tiny_checkpoint, repo, name=IDLE_MODEL, serving=ServingConfig(idle_seconds=2))
    return repo


@pytest.fixture(scope="session")
def triton(model_repository, tmp_path_factory):
    """The real tritonserver (nvidia-pytriton's binary) serving the tiny model, on free ports."""
    server = start_triton(model_repository, tmp_path_factory.mktemp("triton-log") / "tritonserver.log")
    server.model_name = MODEL
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def real_tokenizer(model_repository) -> Path:
    """The tokenizer folder export wrote in the model's first version (read-only: copy it to change it)."""
    return model_repository / MODEL / "1" / "tokenizer"


@pytest.fixture(scope="session")
def tokenizer(real_tokenizer) -> DialogueTokenizer:
    """The bot's tokenizer, as export wrote it in the model's first version."""
    return DialogueTokenizer(real_tokenizer)


@pytest.fixture
def tg():
    """The fake Telegram Bot API (tests/fake_telegram.py) on a free port."""
    with FakeTelegram() as fake:
        yield fake


@pytest.fixture
def settings(tg, tmp_path) -> Settings:
    """The bot's settings for `tg`: history under tmp_path, no metrics server."""
    return Settings(token=tg.token, base_url=tg.url, data_dir=tmp_path / "data", metrics_port=0)


@pytest.fixture
def no_leaked_threads():
    """The test leaves no thread running (pytestmark = pytest.mark.usefixtures(...))."""
    before = set(threading.enumerate())
    yield
    assert set(threading.enumerate()) <= before


class PostgresServer:
    """A throwaway PostgreSQL cluster from Debian's `postgresql` package (`make system-deps`) on
    127.0.0.1:`port`, password auth over TCP. initdb refuses root: as root it runs as `postgres`."""

    SUPERUSER = "bot"

    def __init__(self, port: int):
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        pg_ctl = shutil.which("pg_ctl") or (str(bins[-1]) if bins else None)
        if pg_ctl is None:
            pytest.skip("no PostgreSQL server: install Debian's 'postgresql' package (make system-deps)")
        self.bin, self.port, self.password = Path(pg_ctl).resolve().parent, port, secrets.token_urlsafe(16)
        self.folder = Path(tempfile.mkdtemp(prefix="pytest-postgres-"))  # not under root's 0700 tmp_path
        self.data, self.log = self.folder / "data", self.folder / "server.log"
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.folder, self.user)
        (self.folder / "pw").write_text(self.password)
        self._pg(
            "initdb",
            "-D",
            self.data,
            "-U",
            self.SUPERUSER,
            "--pwfile",
            self.folder / "pw",
            "-E",
            "UTF8",
            "--locale",
            "C",
            "--auth-local",
            "trust",
            "--auth-host",
            "scram-sha-256",
            "--no-sync",
        )

    def _pg(self, program: str, *args: object) -> None:
        subprocess.run(
            [self.bin / program, *map(str, args)],
            user=self.user,
            check=True,
            cwd=self.folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )

    def url(self, database: str = "bot", password: str | None = None) -> str:
        return f"postgresql://{self.SUPERUSER}:{password or self.password}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the server (a no-op when it runs)."""
        status = subprocess.run(
            [self.bin / "pg_ctl", "-D", self.data, "status"], user=self.user, capture_output=True
        )
        if status.returncode == 0:
            return
        self._pg(
            "pg_ctl",
            "-D",
            self.data,
            "-l",
            self.log,
            "-w",
            "-t",
            "60",
            "start",
            "-o",
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.folder} "
            "-c fsync=off -c max_connections=300 -c shared_buffers=32MB",
        )

    def stop(self) -> None:
        """A fast shutdown: open connections are ended, as when the database goes away."""
        self._pg("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def execute(self, sql: str, database: str = "postgres") -> None:
        self._pg(
            "psql",
            "-h",
            self.folder,
            "-p",
            self.port,
            "-U",
            self.SUPERUSER,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            sql,
        )

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    """The real PostgreSQL server for the history tests, on a free port."""
    server = PostgresServer(free_port())
    server.start()
    yield server
    server.close()


@pytest.fixture
def database_url(postgres, request) -> str:
    """A fresh, empty database on the session's server for one test; dropped after it."""
    import re
    import uuid

    name = "t_" + re.sub(r"\W", "_", request.node.name.lower())[:40] + "_" + uuid.uuid4().hex[:8]
    postgres.execute(f'CREATE DATABASE "{name}"')
    yield postgres.url(name)
    postgres.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
