"""monitoring/: the Prometheus scrape config, Grafana's provisioning and dashboard, the PromQL they
hold; end to end, the real Prometheus scrapes the real Triton (fixture `triton`)."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml

from serve.server import free_port
from tests.deployment import (
    DASHBOARD,
    DASHBOARD_MUST_USE,
    GRAFANA,
    KNOWN_METRICS,
    MODEL_METRICS,
    PROMETHEUS_CONFIG,
    TRITON_METRICS,
    adapter_rules,
    compose,
    dashboard_queries,
    load_yaml,
    promql_metrics,
    promtool,
    promtool_check_queries,
    tool,
)
from tests.helpers import metric, scrape


def test_promql_metrics_parser():
    expr = (
        "histogram_quantile(0.95, sum by (le) (rate(bot_reply_latency_seconds_bucket"
        '{job="bot"}[$__rate_interval]))) / on (pod) group_left clamp_min(nv_inference_count, 1e-3)'
    )
    assert promql_metrics(expr) == {"bot_reply_latency_seconds_bucket", "nv_inference_count"}


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
    board = dashboard()
    used = {t["datasource"]["uid"] for p in board["panels"] for t in p.get("targets", [])}
    used |= {a["datasource"]["uid"] for a in board["annotations"]["list"]}
    assert used == {datasource["uid"]}


@pytest.mark.parametrize("where,expr", dashboard_queries(), ids=[q[0] for q in dashboard_queries()])
def test_dashboard_query_names_only_known_metrics(where, expr):
    used = promql_metrics(expr)
    assert used, f"{where}: no metric in {expr!r}"
    assert used <= KNOWN_METRICS, f"{where}: unknown {used - KNOWN_METRICS}"


def test_dashboard_shows_what_was_asked():
    used = set().union(*(promql_metrics(expr) for _, expr in dashboard_queries()))
    assert used >= DASHBOARD_MUST_USE, DASHBOARD_MUST_USE - used


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def test_dashboard_panels_do_not_overlap():
    boxes = [(p["title"], p["gridPos"]) for p in dashboard()["panels"]]
    for title, box in boxes:
        assert box["x"] >= 0 and box["x"] + box["w"] <= 24, f"{title} is wider than the dashboard"
    for i, (title, a) in enumerate(boxes):
        for other, b in boxes[i + 1 :]:
            apart = (
                a["x"] + a["w"] <= b["x"]
                or b["x"] + b["w"] <= a["x"]
                or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"]
            )
            assert apart, f"{title!r} and {other!r} overlap"


def test_dashboard_shows_which_model_version_serves():
    # A rollout (a new version folder, Triton in poll mode) shows as the version the bots are
    # answered by, beside Triton's own requests per version (its metrics' `version` label).
    panels = {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in dashboard()["panels"]}
    by_version = re.compile(r"\bby \((?:[^)]*,\s*)?version\b[^)]*\)")
    assert any(
        any("bot_model_version" in promql_metrics(e) for e in exprs)
        and any(by_version.search(e) and promql_metrics(e) & TRITON_METRICS for e in exprs)
        for exprs in panels.values()
    ), "no panel shows bot_model_version beside a Triton metric by version"
    # ... and marks the moment on every panel: an annotation on the bots' version.
    annotations = [a for a in dashboard()["annotations"]["list"] if a.get("enable") and "expr" in a]
    assert any(
        promql_metrics(a["expr"]) & {"bot_model_version", "bot_model_switches_total"} for a in annotations
    ), "no annotation marks a model switch"


def test_dashboard_shows_the_liked_share_per_model_version():
    # 👍 among the votes, by the version that wrote the reply, on a time series (where the version
    # annotation marks each switch).
    by_version = re.compile(r"\bby \((?:[^)]*,\s*)?version\b[^)]*\)")
    shares = [
        t["expr"]
        for p in dashboard()["panels"]
        if p["type"] == "timeseries"
        for t in p.get("targets", [])
        if promql_metrics(t["expr"]) == {"bot_feedback_total"}
    ]
    assert any('vote="up"' in e and " / " in e and len(by_version.findall(e)) == 2 for e in shares), (
        f"no liked share per version in {shares}"
    )


def test_dashboard_queries_parse_as_promql(tmp_path):
    values = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
    values.update({v["name"]: v["current"]["value"] for v in dashboard()["templating"]["list"]})

    def substitute(expr: str) -> str:
        return re.sub(r"\$(\w+)", lambda m: values[m.group(1)], expr)  # KeyError: undefined variable

    promtool_check_queries(tmp_path, {f"q{i}": substitute(e) for i, (_, e) in enumerate(dashboard_queries())})


# --- End to end: the real Prometheus scrapes the real Triton ------------------------------------


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
    """One generation as the bot runs it: the prompt at 0, single tokens, END on the last; each a
    round request of one row."""
    import tritonclient.http as http

    from contract import triton_io as io
    from tests.helpers import round_request

    client = http.InferenceServerClient(triton.url)
    try:
        position = 0
        for i, ids in enumerate(steps):
            flags = io.ROW_END if i == len(steps) - 1 else 0
            out = round_request(client, [(sequence_id, position, ids, flags)], triton.model_name)
            assert out[io.STATUS][0] == io.ROW_OK
            position += len(ids)
    finally:
        client.close()


# The bound covers the session fixture's first start (tiny training, export, server) as well.
@pytest.mark.timeout(300)
def test_prometheus_scrapes_triton_inference_counts(prometheus, triton):
    """Prometheus shows the server's success count grow by exactly this test's requests."""
    query = urllib.parse.urlencode({"query": f'nv_inference_request_success{{model="{triton.model_name}"}}'})

    def scraped() -> float:
        body = http_get_json(f"{prometheus}/api/v1/query?{query}")
        assert body["status"] == "success", body
        return sum(float(r["value"][1]) for r in body["data"]["result"])

    before = metric(triton.metrics_url, "nv_inference_request_success", model=triton.model_name)
    steps = [[5, 17, 42, 99], [7], [8], [9]]
    send_generation(triton, sequence_id=424242, steps=steps)
    deadline = time.monotonic() + 30
    while (total := scraped()) != before + len(steps):
        assert time.monotonic() < deadline, f"Prometheus saw {total}, not {before} + {len(steps)}"
        time.sleep(0.5)
    targets = http_get_json(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
    assert [t["health"] for t in targets if t["labels"]["job"] == "triton"] == ["up"]


@pytest.mark.timeout(300)
def test_dashboard_metrics_exist_on_the_live_server(triton):
    # Every Triton or model metric the dashboard and the autoscaler use, except the GPU ones
    # (this server runs without a GPU), must be on the real server's /metrics.
    live = {family.name for family in scrape(triton.metrics_url)}
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
