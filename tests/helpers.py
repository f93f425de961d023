"""Helpers the test modules share (fixtures are in conftest.py): Triton servers on free ports,
/metrics scraping, a slow Triton client, the leak check's launcher bookkeeping."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from client.rounds import TritonClient
from serve.server import PortInUse, TritonServer, TritonServerError, free_ports

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CSV = ROOT / "training" / "data.csv"
MODEL = "rudialogpt"  # the model the session's repository serves
IDLE_MODEL = "rudialogpt_idle"  # the same model with a 2 s idle timeout (conftest's model_repository)
# Launchers of this run: pytest itself and every `python -m serve` a test starts (register_launcher).
# A launcher's pid is in the names of what it creates: /tmp/tritonserver-<pid>-*, /dev/shm/triton_<pid>_*.
LAUNCHERS = {os.getpid()}
PORT_TAKEN = "already in use"  # what tritonserver logs when one of its ports is taken


# -- Triton servers ------------------------------------------------------------------------------


def triton_server(repository: Path, log_file: Path | None = None, **options) -> TritonServer:
    """A TritonServer (not started) for `repository` on three different free ports."""
    http, grpc, metrics = free_ports(3)
    return TritonServer(repository, http, grpc, metrics, log_file=log_file, **options)


def _port_taken(log_file: Path, offset: int) -> bool:
    with open(log_file, "rb") as log:
        log.seek(offset)
        return PORT_TAKEN.encode() in log.read()


def start_in_a_thread(server: TritonServer) -> None:
    """server.start() from a thread that ends at once (as asyncio.to_thread does)."""
    errors: list[BaseException] = []

    def start() -> None:
        try:
            server.start()
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    starter = threading.Thread(target=start)
    starter.start()
    starter.join()
    if errors:
        raise errors[0]


def start_triton(
    repository: Path,
    log_file: Path,
    start: Callable[[TritonServer], object] = TritonServer.start,
    tries: int = 3,
    **options,
) -> TritonServer:
    """A started TritonServer on free ports. Another process can take a free port before
    tritonserver binds it: start() then finds it taken (PortInUse), or tritonserver exits (HTTP,
    gRPC: PortInUse too) or runs without /metrics, and logs "already in use"; then it is started
    again on new ports, `tries` times in all."""
    for attempt in range(1, tries + 1):
        server = triton_server(repository, log_file, **options)
        offset = log_file.stat().st_size if log_file.exists() else 0
        try:
            start(server)
        except TritonServerError as exc:
            if attempt == tries or not (isinstance(exc, PortInUse) or _port_taken(log_file, offset)):
                raise
            continue
        if not _port_taken(log_file, offset):
            return server
        server.stop()
    raise TritonServerError(f"tritonserver found a port taken {tries} times (see {log_file})")


class Slow(TritonClient):
    """A client whose rounds of token steps take at least 50 ms: a long generation to cancel midway."""

    async def send(self, arrays, *args, **kwargs):
        from contract import triton_io as io

        if arrays[io.POSITIONS].max(initial=0) > 0:
            await asyncio.sleep(0.05)
        return await super().send(arrays, *args, **kwargs)


# -- round requests by hand (tritonclient's sync HTTP client) -------------------------------------


def round_request(client, rows, model: str = MODEL, dtypes: dict | None = None) -> dict[str, np.ndarray]:
    """One round request: `rows` of (sequence id, position, token ids, flags). Every output of the
    answer, without its batch dimension. `dtypes` overrides an input's numpy dtype (bad requests)."""
    import tritonclient.http as http

    from client.transport import round_arrays
    from contract import triton_io as io

    arrays = round_arrays([(r[0], r[1], r[2], r[3] if len(r) > 3 else 0) for r in rows])
    inputs = []
    for name, data in arrays.items():
        data = data.astype((dtypes or {}).get(name, data.dtype))  # a wrong dtype: a malformed request
        tensor = http.InferInput(name, list(data.shape), http.np_to_triton_dtype(data.dtype))
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    result = client.infer(model, inputs, outputs=[http.InferRequestedOutput(n) for n in io.RESPONSE_OUTPUTS])
    return {name: result.as_numpy(name)[0] for name in io.RESPONSE_OUTPUTS}


def full_row(client, seq: int, position: int, ids, end: bool = False, model: str = MODEL) -> np.ndarray:
    """The whole row of logits after one step of one sequence (a round of one row); its error raised."""
    from contract import triton_io as io

    flags = io.ROW_FULL | (io.ROW_END if end else 0)
    out = round_request(client, [(seq, position, list(ids), flags)], model)
    if out[io.STATUS][0] != io.ROW_OK:
        raise RowError(int(out[io.STATUS][0]), out[io.ERRORS][0].decode())
    return out[io.LOGITS][0]


class RowError(RuntimeError):
    """A row the model refused: its status code and message."""

    def __init__(self, code: int, message: str):
        super().__init__(f"row status {code}: {message}")
        self.code = code


# -- /metrics ------------------------------------------------------------------------------------


def scrape(url: str) -> list[Metric]:
    """The metric families a Prometheus /metrics endpoint shows now."""
    with urllib.request.urlopen(url, timeout=5) as response:
        return list(text_string_to_metric_families(response.read().decode()))


def metric(url: str, name: str, **labels: str) -> float:
    """The value of the one sample `name` at `url` whose labels include `labels`. (The parser
    names a counter's sample `<name>_total` also where the server, like Triton, does not.)"""
    found = [
        s.value
        for family in scrape(url)
        for s in family.samples
        if name in (s.name, s.name.removesuffix("_total") if family.type == "counter" else None)
        and labels.items() <= s.labels.items()
    ]
    assert len(found) == 1, f"{len(found)} samples {name}{labels or ''} at {url}"
    return found[0]


def server_rss_mib(pid: int) -> float:
    """Resident memory of tritonserver and its python-backend stubs, MiB."""
    from bench.server_watch import children_of, rss_mib

    return rss_mib(pid, children_of(pid))


def cached_sequences(triton: TritonServer, model: str = MODEL) -> float:
    """The model's gauge of the sequences whose KV cache it holds."""
    return metric(triton.metrics_url, "rudialogpt_cached_sequences", model=model)


# -- processes -----------------------------------------------------------------------------------


def interruptible() -> None:
    """Popen preexec_fn: the child gets SIGINT's default action, as under a terminal's Ctrl-C.

    A test run started in the background by a non-interactive shell (CI, `nohup … &`) ignores
    SIGINT, every child inherits that, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interactive(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """`argv` run from the repository root with text pipes, to be sent Ctrl-C (SIGINT) like a user."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
        preexec_fn=interruptible,
    )


def register_launcher(pid: int) -> None:
    """Count a launcher process started by a test in the end-of-run leak check."""
    LAUNCHERS.add(pid)


def leftovers(pids: set[int]) -> list[str]:
    """Processes, /dev/shm regions and temp folders of these launchers' servers still there."""
    marks = [f"tritonserver-{p}-" for p in pids] + [f"triton_{p}_" for p in pids]
    found = [
        str(path)
        for p in pids
        for path in [
            *Path(tempfile.gettempdir()).glob(f"tritonserver-{p}-*"),
            *Path("/dev/shm").glob(f"triton_{p}_*"),
        ]
    ]
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        launcher = int(proc.name) in pids and int(proc.name) != os.getpid()
        if state != "Z" and (launcher or any(m in cmdline for m in marks)):
            found.append(f"process {proc.name}: {cmdline[:150]}")
    return found


def start_launcher(repository: Path, log_dir: Path) -> tuple[subprocess.Popen, str]:
    """`python -m serve` (the supervised launcher) on free ports, probing every second; its url."""
    http, grpc, metrics = map(str, free_ports(3))
    with open(log_dir / "serve.log", "wb") as out:
        launcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serve",
                "--repository",
                str(repository),
                "--http-port",
                http,
                "--grpc-port",
                grpc,
                "--metrics-port",
                metrics,
                "--check-every",
                "1",
                "--log-file",
                str(log_dir / "triton.log"),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=out,
        )
    register_launcher(launcher.pid)
    return launcher, f"127.0.0.1:{http}"


def tritonservers_of(parent: int) -> list[int]:
    """Pids of the tritonserver processes that `parent` started."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            comm, _, rest = stat.read_text().rpartition(")")
            if comm.endswith("(tritonserver") and int(rest.split()[1]) == parent:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found
