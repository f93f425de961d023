"""Before tritonserver starts, and after it failed to: its ports, its log, the machine's CUDA driver.

A port another process holds makes tritonserver exit (HTTP, gRPC) or run without /metrics, with
"Socket '<host>:<port>' already in use" in its log: check_ports() finds that before the start (no
model load, no waiting), port_taken() in the log after a failed one.

On a machine without a CUDA driver, tritonserver 2.51 (a GPU build) logs at every start
`E… server.cc:241] "CudaDriverHelper has not been initialized."`: its CUDA block manager cannot
start, which it logs as an error and goes on ("the server can still function properly"); no flag
turns it off. It is harmless on the CPU: CPU_NOTE says so in the log, before that line. The pinned
memory pool, which only speeds up copies to a GPU, is turned off there (CPU_ONLY_ARGS): that
silences its "Unable to allocate pinned system memory" warning.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import re
import socket
from pathlib import Path

CPU_ONLY_ARGS = ["--pinned-memory-pool-byte-size=0"]
CPU_NOTE = (
    "note: no CUDA driver on this machine: tritonserver's error line 'CudaDriverHelper has not been "
    "initialized' below is harmless, it serves on the CPU"
)
_TAKEN = re.compile(r"Socket '\[?([^']*?)\]?:(\d+)' already in use")


class TritonServerError(RuntimeError):
    """The server could not be found, started or made ready."""


class PortInUse(TritonServerError):
    """A port the server needs is held by another process."""

    def __init__(self, port: int, role: str, host: str):
        self.port, self.role, self.host = port, role, host
        super().__init__(f"port {port} ({role}) on {host} is already in use by another process")


def free_ports(n: int) -> list[int]:
    """`n` different TCP ports on 127.0.0.1 that are free right now.

    All are bound at once, so no two are the same (ports bound and freed one after another can
    repeat); another process may still take one before its user binds it."""
    with contextlib.ExitStack() as sockets:
        bound = [sockets.enter_context(socket.socket()) for _ in range(n)]
        for s in bound:
            s.bind(("127.0.0.1", 0))
        ports: list[int] = [s.getsockname()[1] for s in bound]
        return ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    return free_ports(1)[0]


def check_ports(host: str, ports: dict[str, int]) -> None:
    """PortInUse for the first of `ports` (role -> port) that another process holds on `host`; a
    TritonServerError for one that cannot be bound there at all. (SO_REUSEADDR, as servers bind: a port
    a stopped server left in TIME_WAIT counts as free.)"""
    for role, port in ports.items():
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(port, role, host) from None
                raise TritonServerError(f"cannot bind {host}:{port} ({role}): {exc.strerror}") from None


def port_taken(log_file: Path | None, offset: int, ports: dict[str, int]) -> PortInUse | None:
    """The port that tritonserver's log (from `offset`) says was in use, if it says so."""
    if log_file is None:
        return None
    try:
        with open(log_file, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return None
    found = _TAKEN.search(text)
    if found is None:
        return None
    host, port = found[1], int(found[2])
    role = next((r for r, p in ports.items() if p == port), "a port")
    return PortInUse(port, role, host)


def note_cpu(log_file: Path | None, log: logging.Logger) -> int:
    """Before a start: CPU_NOTE into the server's log (or `log` where its output is ours) on a
    machine without a CUDA driver; the log file's size before that (where this start's lines begin)."""
    offset = log_file.stat().st_size if log_file and log_file.exists() else 0
    if no_cuda_driver():
        if log_file:
            with open(log_file, "a", encoding="utf-8") as out:
                out.write(CPU_NOTE + "\n")
        else:
            log.info(CPU_NOTE)
    return offset


@functools.cache
def no_cuda_driver() -> bool:
    """This machine has no CUDA driver that tritonserver could load (libcuda.so.1)."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return True
    return False
