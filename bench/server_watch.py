"""Watching a running tritonserver from outside: its resident memory (server and stubs), its
repository index and the versions with gauges on /metrics, sampled in a thread (bench/rollout.py,
tests/test_rollout.py)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from contract import triton_io as io


def rss_mib(pid: int, children: list[int]) -> float:
    """Resident memory of `pid` and `children` (tritonserver and its stubs), MiB."""
    pages = 0
    for p in [pid, *children]:
        with contextlib.suppress(OSError, ValueError, IndexError):  # a stub that just exited
            pages += int(Path(f"/proc/{p}/statm").read_text().split()[1])
    return pages * 4 / 1024


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def index(url: str, model: str) -> dict[str, str]:
    """Triton's repository index: each version of `model` and its state."""
    req = urllib.request.Request(f"http://{url}/v2/repository/index", b"{}")
    with urllib.request.urlopen(req, timeout=5) as answer:
        return {e["version"]: e.get("state", "") for e in json.loads(answer.read()) if e.get("name") == model}


def gauge_versions(metrics_url: str) -> set[str]:
    """Versions with a `rudialogpt_kv_slots_free` gauge on Triton's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=5) as answer:
        families = text_string_to_metric_families(answer.read().decode())
    return {s.labels["version"] for f in families for s in f.samples if s.name == "rudialogpt_kv_slots_free"}


HELD = ("LOADING", "READY", "UNLOADING")  # a version in these states holds its memory


class Watch:
    """Samples Triton's RSS every 50 ms, its versions (index, gauges) every 250 ms, in a thread."""

    def __init__(self, pid: int, url: str, metrics_url: str, model: str = io.DEFAULT_MODEL_NAME):
        self.pid, self.url, self.metrics_url, self.model = pid, url, metrics_url, model
        self.rss: list[tuple[float, float]] = []  # (monotonic, MiB)
        self.states: list[tuple[float, dict[str, str], set[str]]] = []  # (monotonic, index, gauges)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        n, children = 0, children_of(self.pid)
        while not self.stop.wait(0.05):
            if n % 5 == 0:
                children = children_of(self.pid)  # a new version's stub appears as it loads
                with contextlib.suppress(OSError):
                    versions = index(self.url, self.model), gauge_versions(self.metrics_url)
                    self.states.append((time.monotonic(), *versions))
            self.rss.append((time.monotonic(), rss_mib(self.pid, children)))
            n += 1

    def between(self, t0: float, t1: float) -> list[float]:
        return [m for t, m in self.rss if t0 <= t <= t1] or [self.rss[-1][1]]

    def held(self) -> int:
        """Versions holding memory now, by the last index sample."""
        return sum(s in HELD for s in self.states[-1][1].values()) if self.states else 0

    def first(self, check: Callable[[dict[str, str], set[str]], bool]) -> float | None:
        return next((t for t, idx, gauges in self.states if check(idx, gauges)), None)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
