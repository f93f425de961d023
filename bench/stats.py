"""What the server says about a run: Triton's per-model statistics and the model's own metrics."""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from contract import triton_io as io

# Triton's cumulative per-request durations (nanoseconds) in /v2/models/<m>/stats; "success" is a
# request's whole time in Triton (from its arrival in the core to its answer), the phases and more.
PHASES = ("queue", "compute_input", "compute_infer", "compute_output")
REQUEST = "success"


def model_stats(url: str, model: str) -> tuple[int, int]:
    """Triton's inference and execution counts of `model` (requests, and execute() calls)."""
    stats = _stats(url, model)
    return stats["inference_count"], stats["execution_count"]


def _stats(url: str, model: str) -> dict:
    with urllib.request.urlopen(f"http://{url}/v2/models/{model}/stats", timeout=10) as r:
        stats: dict = json.load(r)["model_stats"][0]
    return stats


@dataclass(frozen=True)
class ServerTimes:
    """Cumulative server-side counts and times (seconds) of one model, read at one instant."""

    requests: int
    executions: int
    phases: dict[str, float]  # Triton's per-request phase totals
    engine_s: float  # model.py: time in the engine's step
    model_s: float  # model.py: the rest of execute() (inputs, outputs, gauges)
    model_executions: int

    def since(self, before: ServerTimes) -> dict[str, float]:
        """Per request (Triton's phases and its whole time, request_ms) and per execute (model.py's
        parts), in ms, over the interval; Triton's requests and executions in it."""
        requests = max(self.requests - before.requests, 1)
        executions = max(self.model_executions - before.model_executions, 1)
        out = {f"{k}_ms": (self.phases[k] - before.phases[k]) / requests * 1000 for k in PHASES}
        out["request_ms"] = (self.phases[REQUEST] - before.phases[REQUEST]) / requests * 1000
        out["engine_ms_per_execute"] = (self.engine_s - before.engine_s) / executions * 1000
        out["model_py_ms_per_execute"] = (self.model_s - before.model_s) / executions * 1000
        out["requests_per_execute"] = (self.requests - before.requests) / max(
            self.executions - before.executions, 1
        )
        out["requests"] = self.requests - before.requests
        out["executions"] = self.executions - before.executions
        return out


def server_times(url: str, metrics_url: str, model: str) -> ServerTimes:
    """Triton's statistics and model.py's timing gauges of `model`, now. The gauges are set at most
    every io.GAUGE_INTERVAL_S: after that long, one probe makes the model set them."""
    from serve.health import probe

    time.sleep(io.GAUGE_INTERVAL_S + 0.05)
    probe(url, model)
    stats = _stats(url, model)
    phases = {k: stats["inference_stats"][k]["ns"] / 1e9 for k in (*PHASES, REQUEST)}
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        families = text_string_to_metric_families(r.read().decode())
        gauges = {
            (s.name, s.labels.get("part", "")): s.value
            for f in families
            for s in f.samples
            if s.name.startswith("rudialogpt_") and s.labels.get("model") == model
        }
    return ServerTimes(
        stats["inference_count"],
        stats["execution_count"],
        phases,
        gauges[("rudialogpt_execute_seconds", "engine")],
        gauges[("rudialogpt_execute_seconds", "model")],
        int(gauges[("rudialogpt_executions", "")]),
    )
