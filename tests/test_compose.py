"""docker-compose.yml and its overrides (docker/compose.*.yml), .env.example: the compose spec, and
what the files must agree on with each other and with the code (mounts, ports, variables)."""

from __future__ import annotations

import argparse
import ast
import json
import posixpath
import re
import subprocess
import sys

import pytest

from tests.deployment import (
    COMPOSE,
    COMPOSE_FILES,
    DOCKERFILES,
    ENV_EXAMPLE,
    ENV_VARIABLES,
    POSTGRES_OVERRIDE,
    ROOT,
    WEBHOOK_OVERRIDE,
    compose,
)


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


def volumes(service: dict) -> dict[str, tuple[str, str]]:
    """A service's short-syntax volumes: container path -> (host path or volume name, mode)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        found[target] = (source, mode[0] if mode else "rw")
    return found


def flags(command: list[str]) -> dict[str, str]:
    """`--name=value` arguments of a command line."""
    return dict(arg.split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)


def host_mount(service: dict, path: str) -> tuple[str, str]:
    """(host path relative to the compose file, mode) of `path` in a service's container."""
    path = posixpath.join(service.get("working_dir", "/"), path)
    for target, (source, mode) in volumes(service).items():
        if source.startswith(".") and (path == target or path.startswith(target.rstrip("/") + "/")):
            return posixpath.normpath(posixpath.join(source, posixpath.relpath(path, target))), mode
    raise AssertionError(f"{path} is on no host folder mount of {service}")


def on_host(service: dict, path: str) -> str:
    """The host path (relative to the compose file) that `path` in a service's container is."""
    return host_mount(service, path)[0]


def test_triton_serves_read_only_what_export_writes_and_the_bot_reads_its_tokenizer():
    services = compose()["services"]
    triton, export, bot = services["triton"], services["export"], services["bot"]
    repository = flags(triton["command"])["--model-repository"]
    written = on_host(export, export["command"][export["command"].index("--repository") + 1])
    assert host_mount(triton, repository) == (written, "ro")
    # The bot reads <model folder>/<N>/tokenizer/ of the version that answered: the model folder,
    # inside the repository export writes, read-only.
    model_folder = bot["environment"]["BOT_TOKENIZER_DIR"]
    model_folder = model_folder.replace("${TRITON_MODEL:-rudialogpt}", "rudialogpt")
    assert host_mount(bot, model_folder) == (f"{written}/rudialogpt", "ro")


def test_triton_polls_the_repository_for_new_versions_and_has_no_load_api():
    # poll: a new version folder export publishes is loaded while the old one serves, no restart.
    # Not explicit, whose load API takes model files (python-backend code) in a request body; in
    # poll mode that API is refused, so only who writes the read-only-mounted repository decides.
    command = flags(compose()["services"]["triton"]["command"])
    assert command["--model-control-mode"] == "poll"
    assert 0 < int(command["--repository-poll-secs"]) <= 10  # Triton's default 15 s: a slower switch


def test_the_triton_image_polls_like_compose():
    dockerfile = (ROOT / "docker" / "triton.Dockerfile").read_text(encoding="utf-8")
    [cmd] = re.findall(r"^CMD (\[.*\])$", dockerfile, re.M)
    image, composed = flags(json.loads(cmd)), flags(compose()["services"]["triton"]["command"])
    for flag in ("--model-repository", "--model-control-mode", "--repository-poll-secs"):
        assert image.get(flag) == composed[flag], flag


def test_the_bot_and_the_healthcheck_reach_tritons_http_port():
    from serve.health import add_target_arguments

    services = compose()["services"]
    triton = services["triton"]
    port = flags(triton["command"]).get("--http-port", "8000")  # tritonserver's default
    assert port in triton["expose"] and services["bot"]["environment"]["TRITON_URL"] == f"triton:{port}"
    check = triton["healthcheck"]["test"]  # [CMD, python3, -m, serve.health, ...]: a real inference
    parser = argparse.ArgumentParser()
    add_target_arguments(parser)
    options, _ = parser.parse_known_args(check[check.index("-m") + 2 :])
    assert check[check.index("-m") + 1] == "serve.health" and options.url.endswith(f":{port}")


def test_the_cuda_provider_has_a_gpu_and_shared_memory():
    triton = compose()["services"]["triton"]
    model = ast.parse((ROOT / "engine" / "model.py").read_text(encoding="utf-8"))
    strings = {node.value for node in ast.walk(model) if isinstance(node, ast.Constant)}
    assert set(triton["environment"]) <= strings, "Triton gets a variable model.py does not read"
    assert triton["environment"]["RUDIALOGPT_EXECUTION_PROVIDER"] == "cuda"
    [gpu] = triton["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    # The python backend passes tensors through /dev/shm; Docker's default 64 MB is too small.
    assert triton["shm_size"].endswith("gb")


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_a_service_waited_for_until_healthy_has_a_healthcheck(path):
    services = {**compose()["services"], **compose(path)["services"]}
    waits = [
        (name, dependency)
        for name, service in compose(path)["services"].items()
        if isinstance(service.get("depends_on"), dict)  # a list only waits for the start
        for dependency, how in service["depends_on"].items()
        if how["condition"] == "service_healthy"
    ]
    assert waits or path == WEBHOOK_OVERRIDE
    for name, dependency in waits:
        assert "healthcheck" in services[dependency], (
            f"{name} waits for {dependency}, which has no healthcheck"
        )


def test_one_shot_services_are_never_restarted_and_the_others_always():
    for name, service in compose()["services"].items():
        if service.get("profiles"):  # not started by `docker compose up`: `docker compose run`
            assert "restart" not in service, f"{name} is one-shot: a restart policy would loop it"
            module = service["entrypoint"][service["entrypoint"].index("-m") + 1]
            assert (ROOT / module / "__main__.py").is_file(), f"{name} runs no module of this repository"
        else:
            assert service.get("restart") in {"always", "unless-stopped"}, f"{name} would stay down"


def test_the_bot_history_is_on_a_named_volume():
    bot = compose()["services"]["bot"]
    source, _mode = volumes(bot)[bot["environment"]["BOT_DATA_DIR"]]
    assert source in compose()["volumes"], "BOT_DATA_DIR must be a named volume (it outlives the container)"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_every_build_names_a_dockerfile_of_this_repository(path):
    for name, service in compose(path)["services"].items():
        if "build" in service:
            assert ROOT / service["build"]["dockerfile"] in DOCKERFILES, f"{name}: no such Dockerfile"


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


# --- PostgreSQL history (docker/compose.postgres.yml) ------------------------------------------


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
