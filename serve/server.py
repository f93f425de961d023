"""Start and stop the real `tritonserver` (2.51) that the PyPI wheel nvidia-pytriton ships.

Only the wheel's binary and backends are used, not pytriton's Python API (it pins numpy<2).
The python backend needs: its stub for the model environment's Python minor version inside
`<backend-dir>/python/`, that environment's `bin` first on PATH (the stub finds packages through
the `python3` on PATH and ignores PYTHONPATH), and libpython on LD_LIBRARY_PATH. The model
environment is `.venv-triton` (requirements/triton.txt): the 2.51 stub needs numpy<2, while the
rest of the project runs on numpy 2. Each server gets
its own ports and shared-memory prefix so several can run side by side.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from contract import triton_io as io
from serve import preflight
from serve.preflight import PortInUse as PortInUse
from serve.preflight import TritonServerError as TritonServerError
from serve.preflight import free_port as free_port
from serve.preflight import free_ports as free_ports
from serve.watchdog import SHM, clean_stale

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
ENV_MODEL_PYTHON = "TRITON_MODEL_PYTHON"  # a venv for model.py; default: <repo>/.venv-triton
WATCHDOG = Path(__file__).with_name("watchdog.py")


def _wheel_root() -> Path:
    """The wheel's tritonserver folder, found without importing pytriton (it pins numpy<2)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerError(
            "nvidia-pytriton is not installed: run `make venv` (or `pip install --no-deps "
            "nvidia-pytriton==0.7.0`)"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (root / "bin" / "tritonserver").exists():
        raise TritonServerError(f"no tritonserver binary under {root}: reinstall nvidia-pytriton")
    return root


@contextlib.contextmanager
def _no_file() -> Iterator[None]:
    yield None


@dataclass
class TritonServer:
    """One tritonserver process serving `repository`; use as a context manager or start()/stop()."""

    repository: Path  # the Triton model repository to serve
    http_port: int = io.DEFAULT_HTTP_PORT  # KServe v2 HTTP API
    grpc_port: int = 8001  # gRPC API
    metrics_port: int = 8002  # Prometheus metrics (/metrics)
    host: str = "127.0.0.1"  # address the ports bind to
    log_file: Path | None = None  # server output goes here; None: inherit our stdout/stderr
    extra_args: list[str] = field(default_factory=list)  # more tritonserver flags
    ready_timeout: float = 120.0  # seconds to wait for /v2/health/ready
    model_python: Path | None = None  # venv that runs model.py; None: $TRITON_MODEL_PYTHON or .venv-triton
    poll_seconds: int = 5  # how often Triton looks for new versions (export/versions.py); 0: never
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _watchdog: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _workdir: Path | None = field(default=None, init=False)
    _venv: Path | None = field(default=None, init=False)
    _python_version: str = field(default="", init=False)
    _log_offset: int = field(default=0, init=False)  # the log file's size when this start began

    @property
    def url(self) -> str:
        """host:port of the HTTP API, as tritonclient wants it."""
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def ports(self) -> dict[str, int]:
        return {"HTTP": self.http_port, "gRPC": self.grpc_port, "metrics": self.metrics_port}

    def check_ports(self) -> None:
        """PortInUse if another process holds one of the ports (before anything is started)."""
        preflight.check_ports(self.host, self.ports)

    @property
    def shm_prefix(self) -> str:
        """The python backend's /dev/shm region names start with this (pid: see clean_stale)."""
        return f"triton_{os.getpid()}_{self.http_port}_"

    def model_env(self) -> Path:
        """The venv whose python3 runs model.py, checked for numpy<2 and onnxruntime."""
        venv = Path(self.model_python or os.environ.get(ENV_MODEL_PYTHON) or ROOT / ".venv-triton")
        python = venv / "bin" / "python3"
        if not python.exists():
            raise TritonServerError(
                f"no model environment at {venv}: run `make venv` (it builds "
                f".venv-triton from requirements/triton.txt) or set {ENV_MODEL_PYTHON}"
            )
        probe = subprocess.run(
            [
                python,
                "-c",
                "import sys, numpy, onnxruntime; print("
                "f'{sys.version_info[0]}.{sys.version_info[1]} {numpy.__version__}')",
            ],
            capture_output=True,
            text=True,
        )
        if probe.returncode:
            raise TritonServerError(
                f"{python} lacks numpy or onnxruntime: `{python} -m pip install -r requirements/triton.txt`"
            )
        version, numpy_version = probe.stdout.split()
        if not numpy_version.startswith("1."):
            raise TritonServerError(
                f"{venv} has numpy {numpy_version}; Triton 2.51's python backend "
                "needs numpy<2: `pip install -r requirements/triton.txt` there"
            )
        self._python_version = version
        return venv

    def _backend_dir(self, root: Path) -> Path:
        """A backend directory with the python backend and the stub for the model's Python."""
        version = self._python_version
        stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.exists():
            raise TritonServerError(f"nvidia-pytriton ships no python backend stub for Python {version}")
        assert self._workdir is not None, "start() makes the work directory first"
        backends = self._workdir / "backends"
        shutil.copytree(root / "backends", backends, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, backends / "python" / stub.name)
        return backends

    def command(self, root: Path, backends: Path) -> list[str]:
        return [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={Path(self.repository).resolve()}",
            f"--backend-directory={backends}",
            f"--cache-directory={root / 'caches'}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            # poll: a new version folder is loaded while the old one serves. Like `none`, it
            # keeps the load/unload API closed to whoever reaches the ports ("not allowed if
            # polling is enabled"); only who can write the repository changes what runs.
            *(
                ["--model-control-mode=poll", f"--repository-poll-secs={self.poll_seconds}"]
                if self.poll_seconds
                else ["--model-control-mode=none"]
            ),
            "--exit-timeout-secs=10",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *(preflight.CPU_ONLY_ARGS if preflight.no_cuda_driver() else []),
            *self.extra_args,
        ]

    def environment(self, root: Path) -> dict[str, str]:
        env = dict(os.environ)
        assert self._venv is not None, "start() finds the model's venv first"
        env["PATH"] = f"{self._venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        # The copied stub loses its relative rpath to the wheel's bundled libraries.
        libdirs = [
            sysconfig.get_config_var("LIBDIR"),
            str(root.parent.parent / "nvidia_pytriton.libs"),
            env.get("LD_LIBRARY_PATH"),
        ]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in libdirs if d)
        return env

    def prepare(self) -> tuple[list[str], dict[str, str]]:
        """Check the setup and make the backend copy; tritonserver's command line and environment."""
        repo = Path(self.repository)
        if not repo.is_dir():
            raise TritonServerError(
                f"model repository {repo} is a file, not a folder: pass the folder `python -m export` "
                "wrote (--repository)"
                if repo.exists()
                else f"model repository {repo} not found: run `python -m export` first (--repository)"
            )
        self.check_ports()
        root = _wheel_root()
        self._venv = self.model_env()
        clean_stale()
        self._workdir = Path(tempfile.mkdtemp(prefix=f"tritonserver-{os.getpid()}-"))
        atexit.register(self.stop)  # never leave a server behind when the caller exits
        try:
            return self.command(root, self._backend_dir(root)), self.environment(root)
        except BaseException:
            self.stop()
            raise

    def start(self) -> TritonServer:
        """Start the server and wait until it and every model are ready."""
        cmd, env = self.prepare()
        try:
            log.info("starting tritonserver on %s (metrics :%d)", self.url, self.metrics_port)
            self._log_offset = preflight.note_cpu(self.log_file, log)
            with open(self.log_file, "ab") if self.log_file else _no_file() as out:
                # Its own process group (tritonserver and its stubs): stop() and the watchdog
                # signal the whole group.
                self.process = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, start_new_session=True)
            self._watchdog = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    "-S",
                    str(WATCHDOG),
                    str(os.getpid()),
                    str(self.process.pid),
                    str(self._workdir),
                    self.shm_prefix,
                ],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self) -> None:
        if self.process is None:
            raise TritonServerError("wait_ready() before start()")
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                taken = preflight.port_taken(self.log_file, self._log_offset, self.ports)
                if taken:
                    raise taken
                hint = f" (see {self.log_file})" if self.log_file else ""
                raise TritonServerError(f"tritonserver exited with code {self.process.returncode}{hint}")
            if self.is_ready():
                return
            time.sleep(0.2)
        raise TritonServerError(f"tritonserver not ready after {self.ready_timeout:.0f} s")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, wait for a graceful exit (in-flight requests finish), then SIGKILL; then
        remove every trace: stubs left in the group, shared memory, the backend copy."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not stop in %.0f s: killing it", timeout)
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a dead model, fault tests), then clean up."""
        self._cleanup()

    def _cleanup(self) -> None:
        if self._workdir is None:  # not started, or cleaned up already
            return
        if self.process:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)  # the server, or stubs that outlived it
            self.process.wait()
        if self._watchdog:
            self._watchdog.terminate()
            self._watchdog.wait()
            self._watchdog = None
        for region in SHM.glob(f"{self.shm_prefix}*"):
            region.unlink(missing_ok=True)
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        atexit.unregister(self.stop)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
