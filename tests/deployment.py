"""The deployment files (docker-compose.yml, docker/, monitoring/, k8s/, .env.example) as the
deployment tests read them: paths, parsed files, metric names, PromQL, command-line tools."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tests.helpers import ROOT

COMPOSE = ROOT / "docker-compose.yml"
WEBHOOK_OVERRIDE = ROOT / "docker" / "compose.webhook.yml"
POSTGRES_OVERRIDE = ROOT / "docker" / "compose.postgres.yml"
COMPOSE_FILES = [COMPOSE, WEBHOOK_OVERRIDE, POSTGRES_OVERRIDE]
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
CUDA_CHECK = ROOT / "docker" / "cuda_libraries.py"  # the Triton image's build-time check (a script)
ENV_EXAMPLE = ROOT / ".env.example"
PROMETHEUS_CONFIG = ROOT / "monitoring" / "prometheus.yml"
GRAFANA = ROOT / "monitoring" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "rudialogpt.json"
K8S = ROOT / "k8s"
ADAPTER_VALUES = K8S / "prometheus-adapter-values.yaml"  # helm values, not a manifest
K8S_MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p != ADAPTER_VALUES)
K8S_VERSION = "1.31.0"  # the oldest Kubernetes the manifests must apply to

# Metric names the dashboard and the autoscaler may use. Triton 2.51's, as its metrics docs list
# them and its /metrics shows them (GPU ones only with a GPU); the model's custom gauge; the bot's.
TRITON_METRICS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_pending_request_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_gpu_utilization",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_power_usage",
    "nv_gpu_power_limit",
    "nv_energy_consumption",
    "nv_cpu_utilization",
    "nv_cpu_memory_used_bytes",
    "nv_cpu_memory_total_bytes",
}
MODEL_METRICS = {"rudialogpt_cached_sequences", "rudialogpt_kv_slots_free"}
BOT_METRICS = {
    "bot_replies_total",
    "bot_generated_tokens_total",
    "bot_errors_total",
    "bot_triton_up",
    "bot_drafts_total",
    "bot_model_version",
    "bot_model_switches_total",
    "bot_optional_call_failures_total",
    "bot_skipped_messages_total",
    "bot_feedback_total",
}
BOT_HISTOGRAMS = {"bot_reply_latency_seconds", "bot_first_text_seconds"}
KNOWN_METRICS = (
    TRITON_METRICS
    | MODEL_METRICS
    | BOT_METRICS
    | {h + suffix for h in BOT_HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)
# What the dashboard must show (panels asked for: requests and failures, queue and compute time,
# GPU utilization and memory, cached sequences, reply latency, errors by kind; the model version
# that answers, the bots' switches to new versions, the liked share of replies per version).
DASHBOARD_MUST_USE = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_gpu_utilization",
    "nv_gpu_memory_used_bytes",
    "rudialogpt_cached_sequences",
    "bot_reply_latency_seconds_bucket",
    "bot_errors_total",
    "bot_first_text_seconds_bucket",
    "bot_model_version",
    "bot_model_switches_total",
    "bot_feedback_total",
}
# Every variable the bot reads, plus what compose itself needs.
ENV_VARIABLES = {
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_BASE_URL",
    "TRITON_URL",
    "TRITON_MODEL",
    "TRITON_TIMEOUT",
    "ALLOWED_CHAT_IDS",
    "BOT_DATA_DIR",
    "BOT_TOKENIZER_DIR",
    "BOT_METRICS_PORT",
    "BOT_WEBHOOK_URL",
    "BOT_WEBHOOK_SECRET",
    "BOT_WEBHOOK_PORT",
    "BOT_DRAFT_INTERVAL",
    "BOT_FEEDBACK_BUTTONS",
    "BOT_FEEDBACK_GROUPS",
    "BOT_SHARE_DEFAULT",
    "GRAFANA_ADMIN_PASSWORD",
    "BOT_DATABASE_URL",
    "BOT_DATABASE_CONNECT_SECONDS",
    "BOT_DATABASE_RETRY_SECONDS",
    "BOT_CHAT_LOCK_SECONDS",
    "POSTGRES_PASSWORD",
}
FLOATING_TAGS = {"latest", "stable", "lts", "edge", "nightly", "main", "master"}


def load_script(path: Path) -> ModuleType:
    """A standalone script (not in a package) imported as a module, to test its functions."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def compose(path: Path = COMPOSE) -> dict:
    return load_yaml(path)


def k8s_resources() -> list[tuple[str, dict]]:
    """(id, resource) for every document in k8s/*.yaml."""
    found = []
    for path in K8S_MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                found.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return found


def k8s_resource(kind: str, name: str) -> dict:
    for _, doc in k8s_resources():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind}/{name} in k8s/")


def tool(name: str, install: str) -> str:
    """Path of a command-line tool: on PATH or beside this Python (a venv's bin/), else skip."""
    beside = Path(sys.executable).parent / name
    path = shutil.which(name) or (str(beside) if beside.exists() else None)
    if not path:
        pytest.skip(f"{name} is not installed ({install})")
    return path


def promtool() -> str:
    return tool("promtool", "Debian: apt-get install prometheus")


# --- PromQL ----------------------------------------------------------------------------------


_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, labels."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = _LABEL_LISTS.sub("", expr)  # by (le), on (pod), ...
    names = re.findall(r"(?<![\w:.$])([A-Za-z_:][\w:]*)\b(?!\s*\()", expr)
    return {n for n in names if n.lower() not in _KEYWORDS}


def promtool_check_queries(tmp_path: Path, queries: dict[str, str]) -> None:
    """Parse each query with Prometheus' own parser: as recording rules, `promtool check rules`."""
    rules = {
        "groups": [
            {
                "name": "queries",
                "rules": [{"record": f"query:{key}", "expr": expr} for key, expr in queries.items()],
            }
        ]
    }
    path = tmp_path / "queries.rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    run = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title / refId, PromQL) for every query in the dashboard, annotations and variables
    included."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = [
        (f"{p['title']} / {t['refId']}", t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])
    ]
    annotations = dashboard["annotations"]["list"]
    queries += [(f"annotation {a['name']}", a["expr"]) for a in annotations if "expr" in a]
    for var in dashboard["templating"]["list"]:
        found = re.fullmatch(r"label_values\((.+),\s*\w+\)", var["definition"])
        if found:  # label_values(metric, label): the metric must exist too
            queries.append((f"${var['name']}", found.group(1)))
    return queries


def adapter_rules() -> list[dict]:
    return load_yaml(ADAPTER_VALUES)["rules"]["custom"]
