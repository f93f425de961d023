"""Errors of `python -m serve` and `python -m demo` that name the fix: a port in use (found before
the start, or in tritonserver's log after one), a repository that is a file; the CPU's log note."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from serve import preflight
from serve.server import PortInUse, TritonServer, free_ports
from tests.helpers import ROOT, triton_server


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def held_ports():
    """Three free ports; the listening socket that holds the first."""
    ports = free_ports(3)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[0]))
        holder.listen()
        yield ports


@pytest.mark.parametrize("role, flag", [(0, "--http-port"), (2, "--metrics-port")])
def test_serve_names_the_port_in_use_and_its_flag(tmp_path, role, flag):
    ports = free_ports(3)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[role]))
        holder.listen()
        http, grpc, metrics = map(str, ports)
        proc = run(
            "serve",
            "--repository",
            str(tmp_path),
            "--http-port",
            http,
            "--grpc-port",
            grpc,
            "--metrics-port",
            metrics,
        )
    name = ["HTTP", "gRPC", "metrics"][role]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.endswith(
        f"error: port {ports[role]} ({name}) on 127.0.0.1 is already in use by another process: stop it "
        f"(another `python -m serve`, `make demo`?) or pass {flag}\n"
    )


def test_demo_with_its_port_in_use_stops_before_training(tmp_path, held_ports):
    port = held_ports[0]
    proc = run(
        "demo",
        "--output",
        str(tmp_path / "out"),
        "--repository",
        str(tmp_path / "repo"),
        "--http-port",
        str(port),
    )
    assert proc.returncode == 2 and "[1/4]" not in proc.stderr  # no training, no export
    assert proc.stderr == (
        f"error: port {port} (HTTP) on 127.0.0.1 is already in use by another process: stop what holds "
        f"it (another demo, `python -m serve`?), or move the demo's ports: DEMO_HTTP_PORT={port + 10} make "
        f"demo (or python -m demo --http-port {port + 10}; Triton takes that port and the next two)\n"
    )


def test_a_port_taken_after_the_check_is_read_from_tritonservers_log(model_repository, tmp_path, monkeypatch):
    server = triton_server(model_repository, tmp_path / "tritonserver.log")
    monkeypatch.setattr(TritonServer, "check_ports", lambda self: None)  # as if taken just after it
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", server.http_port))
        holder.listen()
        with pytest.raises(PortInUse) as taken:
            server.start()
    assert (taken.value.port, taken.value.role) == (server.http_port, "HTTP")
    assert "already in use" in (tmp_path / "tritonserver.log").read_text()


def test_serve_on_a_file_says_it_is_a_file(tmp_path):
    (tmp_path / "model_repository").write_text("")
    proc = run("serve", "--repository", str(tmp_path / "model_repository"))
    assert proc.returncode == 2
    assert proc.stderr.endswith(
        f"error: model repository {tmp_path / 'model_repository'} is a file, not a folder: pass the folder "
        "`python -m export` wrote (--repository)\n"
    )


def test_the_cpu_log_says_the_cuda_driver_error_is_harmless(triton):
    if not preflight.no_cuda_driver():
        pytest.skip("this machine has a CUDA driver: tritonserver logs no CudaDriverHelper error")
    text = triton.log_file.read_text()
    note, error = text.find(preflight.CPU_NOTE), text.find("CudaDriverHelper has not been initialized")
    assert 0 <= note < error  # the note comes first, where the reader meets the error
    assert "Unable to allocate pinned system memory" not in text  # the pool is off on the CPU
