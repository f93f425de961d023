"""Notice a dead model and act: replace the local server, or exit the container so it restarts.

Two ways the model dies without Triton saying so: tritonserver exits, or its python-backend stub
dies (the OOM killer's likeliest choice: it holds the model and every KV cache). Triton 2.51
never restarts a dead stub and keeps its health endpoints at 200, so `watch()` looks at the
processes themselves (a stub that is a zombie child of tritonserver) and runs the real liveness
probe (serve/health.py) every few seconds.

- `python -m serve` calls `supervise()`: it replaces the whole server (process group, shared
  memory, backend copy) with exponential backoff and logs what happened and why.
- The Triton image's entrypoint is `python3 -m serve.supervisor -- tritonserver ...`: it runs
  tritonserver in its own process group and exits (code 70) when the model is dead, so Docker's
  restart policy (which ignores "unhealthy") or Kubernetes restarts the container.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from serve.health import ModelDead, add_target_arguments, probe

if TYPE_CHECKING:
    from serve.server import TritonServer

log = logging.getLogger(__name__)

EXIT_MODEL_DEAD = 70  # the entrypoint's exit status when it gave up on a dead model (EX_SOFTWARE)
STUB_COMM = "triton_python_b"  # /proc comm of triton_python_backend_stub (15 characters)


@dataclass
class Supervision:
    """How a running server is watched and replaced."""

    check_every: float = 2.0  # seconds between liveness probes (a real one-token inference)
    probe_timeout: float = 10.0  # seconds one probe may take (a busy server queues it)
    failures: int = 2  # probes failed in a row before the model counts as dead
    poll_every: float = 0.5  # seconds between looks at the processes (exit, dead stub)
    backoff_first: float = 1.0  # seconds before the first replacement
    backoff_max: float = 60.0  # the backoff doubles up to this
    stable_after: float = 120.0  # a server that lived this long resets the backoff


def _children(pid: int) -> list[Path]:
    """/proc entries of `pid`'s children: from each thread's `children` list where the kernel keeps
    one (cheap), else from a scan of every process."""
    lists = list(Path(f"/proc/{pid}/task").glob("*/children"))
    if not lists:
        return list(Path("/proc").glob("[0-9]*"))
    kids = set()
    for path in lists:
        try:
            kids.update(path.read_text().split())
        except OSError:  # the thread ended meanwhile
            continue
    return [Path("/proc") / kid for kid in kids]


def stub_processes(server_pid: int) -> dict[int, str]:
    """The python-backend stubs that `server_pid` started: pid -> state ("Z": dead, never reaped)."""
    stubs = {}
    for proc in _children(server_pid):
        try:
            comm, _, rest = (proc / "stat").read_text().rpartition(")")
            state, ppid = rest.split()[:2]
        except (ValueError, OSError):  # gone meanwhile
            continue
        if int(ppid) == server_pid and comm.endswith(f"({STUB_COMM}"):
            stubs[int(proc.name)] = state
    return stubs


def dead_stubs(server_pid: int) -> list[int]:
    """Python-backend stubs of `server_pid` that have died (Triton never reaps nor restarts them)."""
    return [pid for pid, state in stub_processes(server_pid).items() if state == "Z"]


def watch(
    process: subprocess.Popen[bytes], url: str, model: str, rules: Supervision, stop: threading.Event
) -> str | None:
    """Block while the model lives; why it has to be replaced, or None once `stop` is set."""
    failures, next_probe = 0, time.monotonic() + rules.check_every
    while not stop.wait(rules.poll_every):
        if process.poll() is not None:
            return f"tritonserver exited with code {process.returncode}"
        if stubs := dead_stubs(process.pid):
            return f"python backend stub (pid {', '.join(map(str, stubs))}) died; Triton never restarts it"
        if time.monotonic() >= next_probe:
            try:
                probe(url, model, rules.probe_timeout)
                failures = 0
            except ModelDead as exc:
                failures += 1
                log.warning("liveness probe %d/%d failed: %s", failures, rules.failures, exc)
                if failures >= rules.failures:
                    return f"{failures} liveness probes in a row failed: {exc}"
            next_probe = time.monotonic() + rules.check_every
    return None


def supervise(
    make_server: Callable[[], TritonServer],
    model: str,
    rules: Supervision,
    stop: threading.Event,
    on_ready: Callable[[TritonServer], None] = lambda s: None,
) -> int:
    """Run servers from `make_server()` until `stop` is set, replacing each one whose model dies.

    The first start's TritonServerError propagates (bad repository, port in use: no point retrying);
    later ones are logged and retried with the backoff. Returns how many replacements there were."""
    from serve.server import TritonServerError

    backoff, replacements = rules.backoff_first, 0
    while not stop.is_set():
        server, started = make_server(), time.monotonic()
        reason: str | None
        try:
            server.start()
        except TritonServerError as exc:
            if not replacements:
                raise
            reason = f"restart failed: {exc}"
        else:
            on_ready(server)
            assert server.process is not None, "start() returned, so the process runs"
            reason = watch(server.process, server.url, model, rules, stop)
        if reason is None:
            server.stop()
            break
        if time.monotonic() - started >= rules.stable_after:
            backoff = rules.backoff_first
        replacements += 1
        log.error(
            "replacing Triton on %s: %s (replacement %d, in %.1f s)",
            server.url,
            reason,
            replacements,
            backoff,
        )
        server.kill()  # the whole process group, shared memory, backend copy
        stop.wait(backoff)
        backoff = min(backoff * 2, rules.backoff_max)
    return replacements


# ---- the container entrypoint ------------------------------------------------------------------


def wait_alive(process: subprocess.Popen[bytes], url: str, model: str, timeout: float) -> str | None:
    """Wait until the model answers a probe; the reason if tritonserver exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"tritonserver exited with code {process.returncode} while loading"
        try:
            probe(url, model, timeout=5.0)
            return None
        except ModelDead:
            time.sleep(1.0)
    return f"the model did not answer within {timeout:.0f} s"


def run_container(command: list[str], url: str, model: str, rules: Supervision, load_timeout: float) -> int:
    """Run `command` (tritonserver) in its own process group; exit status for the container."""
    process = subprocess.Popen(command, start_new_session=True)
    stop = threading.Event()

    def forward(signum: int, _frame: object) -> None:  # docker stop / pod deletion: a graceful stop of Triton
        stop.set()
        os.killpg(process.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    reason = wait_alive(process, url, model, load_timeout)
    if reason is None:
        log.info("model %r answers on %s: watching it", model, url)
        reason = watch(process, url, model, rules, stop)
    if stop.is_set():
        return process.wait()
    log.error("exiting so the container is restarted: %s", reason)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # tritonserver and every stub
    process.wait()
    return EXIT_MODEL_DEAD


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m serve.supervisor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_target_arguments(p)
    p.add_argument("--load-timeout", type=float, default=600.0, help="seconds the model may take to load")
    p.add_argument(
        "--check-every", type=float, default=Supervision.check_every, help="seconds between probes"
    )
    p.add_argument(
        "--probe-timeout", type=float, default=Supervision.probe_timeout, help="seconds one probe may take"
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- tritonserver ARGS...")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the server's command after --, e.g. -- tritonserver --model-repository=/models")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_container(
        command,
        args.url,
        args.model,
        Supervision(check_every=args.check_every, probe_timeout=args.probe_timeout),
        args.load_timeout,
    )


if __name__ == "__main__":
    sys.exit(main())
