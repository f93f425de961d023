"""A dead model is noticed and replaced, and nothing is left behind: real tritonservers, real kills.

Each test that kills a server starts its own (never the session's `triton`), and kills it for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from client.rounds import TritonClient
from client.transport import ModelDown, round_arrays
from serve.health import ModelDead, is_alive, probe
from serve.server import TritonServer, TritonServerError, free_port
from serve.supervisor import EXIT_MODEL_DEAD, stub_processes
from serve.watchdog import clean_stale
from tests.helpers import (
    IDLE_MODEL,
    ROOT,
    leftovers,
    start_in_a_thread,
    start_launcher,
    start_triton,
    triton_server,
    tritonservers_of,
)

TIMINGS = Path(tempfile.gettempdir()) / f"self-healing-timings-{os.getpid()}.json"


def wait_for(predicate, timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def alive(pid: int) -> bool:
    """Running (a zombie has exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def ready_says(url: str, path: str = "/v2/health/ready") -> int:
    with urllib.request.urlopen(f"http://{url}{path}", timeout=5) as reply:
        return reply.status


def record(name: str, seconds: list[float]) -> None:
    """Keep measured recovery times (docs/guarantees.md's table quotes them) and print them."""
    data = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    data[name] = [round(s, 2) for s in seconds]
    TIMINGS.write_text(json.dumps(data, indent=1))
    print(f"\n{name}: {data[name]}")


# ---- the model's stub exits by itself when tritonserver dies, and a dead stub is visible ---------


@pytest.mark.timeout(240)
def test_ten_sigkills_of_tritonserver_leave_no_stub(model_repository, tmp_path):
    survivors, exits, rng = [], [], random.Random(15)
    for run in range(10):
        # Started from a thread that ends at once (as asyncio.to_thread does): the server must
        # outlive that thread (PR_SET_PDEATHSIG fired when the forking *thread* exited).
        server = start_triton(model_repository, tmp_path / f"triton{run}.log", start=start_in_a_thread)
        try:
            time.sleep(1.0 if run == 0 else 0.0)
            assert server.process.poll() is None, "the server died with the thread that started it"
            probe(server.url)
            probe(server.url, IDLE_MODEL)
            stubs = list(stub_processes(server.process.pid))
            assert len(stubs) == 2  # one per model
            if run == 0:
                check_a_dead_stub_is_seen(server)
            time.sleep(rng.uniform(0, 1.2))  # any phase of the model's 1 s sweeper
            os.kill(server.process.pid, signal.SIGKILL)  # tritonserver alone, not its group
            server.process.wait()  # reaped: a zombie parent would look alive to the stub
            killed = time.monotonic()
            if wait_for(lambda: not any(map(alive, stubs)), timeout=5.0):  # noqa: B023
                exits.append(time.monotonic() - killed)
            survivors += [(run, pid, round(time.monotonic() - killed, 1)) for pid in stubs if alive(pid)]
        finally:
            workdir = server._workdir
            server.kill()  # the group (a stub that survived), shared memory, backend copy
        assert not [p for p in leftovers({os.getpid()}) if str(workdir) in p or server.shm_prefix in p]
    record("stubs gone after tritonserver SIGKILL (s)", exits)
    assert survivors == [], f"stubs alive 5 s after their tritonserver was SIGKILLed: {survivors}"


def model_stub(server_pid: int, model: str = "rudialogpt") -> int:
    """The pid of the stub that runs `model`'s model.py."""
    [stub] = [
        p
        for p in stub_processes(server_pid)
        if f"/{model}/1/model.py" in Path(f"/proc/{p}/cmdline").read_bytes().decode()
    ]
    return stub


def check_a_dead_stub_is_seen(server: TritonServer) -> None:
    """Triton calls everything ready; the probe, the bot's health check and its client do not."""
    stub = model_stub(server.process.pid)
    os.kill(stub, signal.SIGKILL)
    assert wait_for(lambda: stub_processes(server.process.pid)[stub] == "Z", timeout=5)
    assert ready_says(server.url) == 200 and ready_says(server.url, "/v2/models/rudialogpt/ready") == 200
    with pytest.raises(ModelDead, match="Stub process 'rudialogpt_0_0' is not healthy"):
        probe(server.url)
    assert is_alive(server.url, IDLE_MODEL)  # the other model's stub still answers

    async def client_view():
        client = TritonClient(server.url, timeout=5.0)
        try:
            began = time.monotonic()
            with pytest.raises(ModelDown):
                await client.send(round_arrays([(12345, 0, [1, 2, 3], 0)]))
            return await client.is_ready(), time.monotonic() - began
        finally:
            await client.close()

    ready, start_s = asyncio.run(client_view())
    assert not ready
    assert start_s < 5.0  # one try, no retries against a dead stub: within TRITON_TIMEOUT


# ---- `python -m serve` replaces a dead model; SIGKILL of the launcher leaves nothing ------------


@pytest.mark.timeout(240)
def test_launcher_replaces_a_dead_model_and_leaves_nothing(model_repository, tmp_path):
    launcher, url = start_launcher(model_repository, tmp_path)
    log = tmp_path / "serve.log"
    recovery = {"stub": [], "tritonserver": []}
    try:
        assert wait_for(lambda: is_alive(url), timeout=90, every=0.5), log.read_text()
        for fault in ["stub", "tritonserver", "stub", "tritonserver"]:
            [server] = tritonservers_of(launcher.pid)
            stubs = list(stub_processes(server))
            killed = time.monotonic()
            os.kill(stubs[0] if fault == "stub" else server, signal.SIGKILL)
            assert wait_for(
                lambda: tritonservers_of(launcher.pid) not in ([server], []) and is_alive(url),  # noqa: B023
                timeout=30,
                every=0.1,
            ), log.read_text()
            recovery[fault].append(time.monotonic() - killed)
            time.sleep(max(0.0, killed + 5 - time.monotonic()))
            assert not [p for p in [server, *stubs] if alive(p)]  # the old server's whole group
            assert len(list(Path(tempfile.gettempdir()).glob(f"tritonserver-{launcher.pid}-*"))) == 1
        assert launcher.poll() is None
        text = log.read_text()
        assert text.count("replacing Triton") == 4
        assert "stub (pid" in text and "tritonserver exited with code -9" in text
    finally:
        launcher.kill()  # SIGKILL: the watchdog must stop the server and clean up
        launcher.wait()
    killed = time.monotonic()
    assert wait_for(lambda: not leftovers({launcher.pid}), timeout=20, every=0.2), leftovers({launcher.pid})
    record(
        "launcher: stub, tritonserver kill -> model answers again (s)",
        recovery["stub"] + recovery["tritonserver"],
    )
    record("launcher SIGKILLed -> its server and files gone (s)", [time.monotonic() - killed])


# ---- the container entrypoint exits when the model hangs or dies --------------------------------


@pytest.mark.timeout(120)
def test_container_entrypoint_exits_when_the_stub_hangs(model_repository, tmp_path):
    server = triton_server(model_repository)
    command, env = server.prepare()
    supervisor = tritonserver = None
    try:
        with open(tmp_path / "supervisor.log", "wb") as out:
            supervisor = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "serve.supervisor",
                    "--url",
                    server.url,
                    "--check-every",
                    "0.5",
                    "--probe-timeout",
                    "2",
                    "--",
                    *command,
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=out,
            )
        log = tmp_path / "supervisor.log"
        assert wait_for(lambda: b"watching it" in log.read_bytes(), timeout=60, every=0.5), log.read_text()
        [tritonserver] = tritonservers_of(supervisor.pid)
        group = list(stub_processes(tritonserver))
        stopped = time.monotonic()
        os.kill(model_stub(tritonserver), signal.SIGSTOP)  # hung, not dead: only a real inference tells
        assert supervisor.wait(timeout=30) == EXIT_MODEL_DEAD
        exit_s = time.monotonic() - stopped
        text = log.read_bytes().decode()
        assert "liveness probes in a row failed" in text and "exiting so the container is restarted" in text
        assert wait_for(lambda: not any(alive(p) for p in [tritonserver, *group]), timeout=5)
    finally:
        if supervisor and supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        if tritonserver:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(tritonserver, signal.SIGKILL)
        server.kill()  # the backend copy and shared memory (what the container's restart discards)
    record("container entrypoint: stub hung -> exit (s)", [exit_s])


# ---- no Triton needed -------------------------------------------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_clean_stale_removes_only_what_dead_launchers_left(tmp_path):
    dead, live = dead_pid(), os.getpid()
    planted = {f"tritonserver-{dead}-x1": True, f"tritonserver-{live}-x1": False}
    regions = {f"triton_{dead}_1234_m": True, f"triton_{live}_1234_m": False}
    for name in planted:
        (Path(tempfile.gettempdir()) / name).mkdir()
    for name in regions:
        (Path("/dev/shm") / name).write_bytes(b"x")
    try:
        removed = {p.name for p in clean_stale()}
        assert removed >= {n for n, gone in {**planted, **regions}.items() if gone}
        assert not removed & {n for n, gone in {**planted, **regions}.items() if not gone}
        assert (Path(tempfile.gettempdir()) / f"tritonserver-{live}-x1").exists()
    finally:
        (Path(tempfile.gettempdir()) / f"tritonserver-{live}-x1").rmdir()
        (Path("/dev/shm") / f"triton_{live}_1234_m").unlink()


def test_leak_check_sees_what_this_run_left():
    planted = Path(tempfile.gettempdir()) / f"tritonserver-{os.getpid()}-leakcheck"
    planted.mkdir()
    try:
        assert str(planted) in leftovers({os.getpid()})
    finally:
        planted.rmdir()
    assert str(planted) not in leftovers({os.getpid()})


def test_failed_start_leaves_no_temp_folder_nor_open_log(tmp_path, monkeypatch):
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    root = tmp_path / "wheel"
    for path in [
        root / "bin" / "tritonserver",
        root / "python_backend_stubs" / version / "triton_python_backend_stub",
        root / "backends" / "python" / "libtriton_python.so",
    ]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")  # not executable: Popen raises PermissionError
    monkeypatch.setattr("serve.server._wheel_root", lambda: root)
    monkeypatch.setattr(
        TritonServer, "model_env", lambda self: setattr(self, "_python_version", version) or tmp_path
    )
    before = set(Path(tempfile.gettempdir()).glob(f"tritonserver-{os.getpid()}-*"))
    server = TritonServer(tmp_path, free_port(), log_file=tmp_path / "triton.log")
    with pytest.raises((PermissionError, TritonServerError)):
        server.start()
    assert set(Path(tempfile.gettempdir()).glob(f"tritonserver-{os.getpid()}-*")) == before
    open_files = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
    assert str(tmp_path / "triton.log") not in open_files


def test_watchdog_cleans_up_when_its_launcher_dies(tmp_path):
    launcher = subprocess.Popen(["sleep", "600"])
    group = subprocess.Popen(["sleep", "600"], start_new_session=True)  # stands in for tritonserver
    workdir, region = tmp_path / "tritonserver-x", Path("/dev/shm") / f"triton_watchdogtest_{os.getpid()}_r"
    workdir.mkdir()
    region.write_bytes(b"x")
    watchdog = subprocess.Popen(
        [
            sys.executable,
            "-I",
            "-S",
            str(ROOT / "serve" / "watchdog.py"),
            str(launcher.pid),
            str(group.pid),
            str(workdir),
            region.name[:-1],
        ]
    )
    try:
        time.sleep(0.5)
        assert watchdog.poll() is None and group.poll() is None  # the launcher lives: nothing happens
        launcher.kill()  # left unreaped on purpose: a zombie launcher counts as dead
        assert watchdog.wait(timeout=15) == 0
        assert group.wait(timeout=5) == -signal.SIGTERM  # asked to stop first
        assert not workdir.exists() and not region.exists()
    finally:
        for p in (launcher, group, watchdog):
            p.kill()
            p.wait()
        region.unlink(missing_ok=True)
