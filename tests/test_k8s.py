"""k8s/: every manifest against Kubernetes' schema, the Envoy router that keeps a sequence on one
Triton pod, the autoscaler's metric, the PostgreSQL history of the bot's replicas."""

from __future__ import annotations

import json
import posixpath

import pytest
import yaml

from contract import triton_io as io
from tests.deployment import (
    K8S,
    K8S_VERSION,
    TRITON_METRICS,
    adapter_rules,
    k8s_resource,
    k8s_resources,
    load_yaml,
    promql_metrics,
    promtool_check_queries,
)


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


def test_router_keeps_a_bot_process_on_one_triton_pod():
    config = envoy_config()["static_resources"]
    (cluster,) = config["clusters"]
    assert cluster["lb_policy"] in {"RING_HASH", "MAGLEV"} and cluster["type"] == "STRICT_DNS"
    route = config["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"][
        "virtual_hosts"
    ][0]["routes"][0]["route"]
    assert route["hash_policy"][0]["header"]["header_name"] == io.ROUTING_HEADER.lower()
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


def container_and_volumes(deployment: str) -> tuple[dict, dict[str, dict]]:
    spec = k8s_resource("Deployment", deployment)["spec"]["template"]["spec"]
    [container] = spec["containers"]
    return container, {v["name"]: v for v in spec["volumes"]}


def on_volume(deployment: str, path: str) -> tuple[str, str, bool]:
    """(claim name, path inside the claim, read-only) of `path` in a deployment's container."""
    container, volumes = container_and_volumes(deployment)
    for mount in container["volumeMounts"]:
        target = mount["mountPath"].rstrip("/")
        if path == target or path.startswith(target + "/"):
            claim = volumes[mount["name"]]["persistentVolumeClaim"]
            below = posixpath.relpath(path, target)
            inside = posixpath.normpath(posixpath.join(mount.get("subPath", ""), below))
            read_only = mount.get("readOnly", False) and claim.get("readOnly", False)
            return claim["claimName"], "" if inside == "." else inside, read_only
    raise AssertionError(f"{path} is on no volume of {deployment}")


def triton_flags() -> dict[str, str]:
    container, _ = container_and_volumes("triton")
    return dict(a.split("=", 1) for a in container["args"] if a.startswith("--") and "=" in a)


def test_triton_polls_the_shared_volume_for_new_versions():
    # poll: a new version folder in the volume is loaded while the old one serves. Not explicit,
    # whose load API takes model files (python-backend code) in a request body.
    flags = triton_flags()
    assert flags["--model-control-mode"] == "poll"
    assert 0 < int(flags["--repository-poll-secs"]) <= 10
    claim, inside, read_only = on_volume("triton", flags["--model-repository"])
    # Triton polls the volume's repository/ only: new versions arrive in its staging/ and are
    # renamed in (something new appearing in the model's folder reloads the serving version).
    assert (claim, inside, read_only) == ("model-repository", "repository", True)
    assert "ReadWriteMany" in k8s_resource("PersistentVolumeClaim", claim)["spec"]["accessModes"]


def test_router_checks_the_models_readiness_not_the_servers():
    # /v2/health/ready is 400 in poll mode while a version loads (or after one failed to load),
    # though the model serves; the model's own ready endpoint stays 200 while any version serves.
    (cluster,) = envoy_config()["static_resources"]["clusters"]
    (check,) = cluster["health_checks"]
    model = k8s_resource("ConfigMap", "bot")["data"]["TRITON_MODEL"]
    assert check["http_health_check"]["path"] == f"/v2/models/{model}/ready"


def test_bot_reads_the_tokenizers_of_the_model_folder_triton_serves():
    # The bot loads <model folder>/<N>/tokenizer/ of the version N that answered: it mounts the
    # model folder of the volume Triton serves, read-only, where BOT_TOKENIZER_DIR says.
    config = k8s_resource("ConfigMap", "bot")["data"]
    model_folder = config["BOT_TOKENIZER_DIR"]
    repository = triton_flags()["--model-repository"]
    assert on_volume("bot", model_folder) == on_volume("triton", f"{repository}/{config['TRITON_MODEL']}")
    assert on_volume("bot", model_folder) == (
        "model-repository",
        f"repository/{config['TRITON_MODEL']}",
        True,
    )


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


# --- PostgreSQL history (k8s/postgres.yaml) ----------------------------------------------------


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
