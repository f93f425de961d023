"""Can onnxruntime's CUDA provider load its libraries here? Asked of the dynamic loader, no GPU needed.

`onnxruntime.get_available_providers()` lists the providers compiled in, not the ones that can
load: onnxruntime-gpu 1.31 (built for CUDA 13) lists CUDAExecutionProvider in an image that only
has CUDA 12. This check runs at image build, right after onnxruntime-gpu is installed:

- every library `libonnxruntime_providers_cuda.so` needs (its NEEDED entries and theirs) resolves
  (`ldd`), except `libcuda.so.1`: the driver's own library, which no image carries; the NVIDIA
  Container Toolkit mounts the host's when the container starts on a GPU;
- the libraries the provider opens itself at run time (dlopen, so not among its NEEDED entries)
  are on the loader's search path (LD_LIBRARY_PATH, ld.so.cache, /lib, /usr/lib), and what they
  need resolves: cuDNN 9 (the provider creates a cuDNN handle for each GPU context; its
  sub-libraries beside it), cuFFT (FFT operators) and NVRTC (kernels the provider compiles at run
  time). These three are what onnxruntime-gpu itself declares for its CUDA provider (the wheel's
  `cuda` and `cudnn` extras, `onnxruntime.preload_dlls`); which kernels a graph reaches is only
  decided at run time, so the build requires them all.

    python3 docker/cuda_libraries.py [--library PATH] [--dlopen NAME ...]

prints where each library was found and exits 0, or prints one line per missing library, naming
the fix, and exits 1; 2 when it cannot check (no onnxruntime-gpu, or one built for another CUDA
major, no `ldd`). Standard library only.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import mmap
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

CUDA_MAJOR = 13  # onnxruntime-gpu 1.31.1 is built with CUDA 13.0: libcudart.so.13, libcublas.so.13
FIRST_TRITON_RELEASE = (25, 8)  # the first nvcr.io/nvidia/tritonserver image built on CUDA 13.0
PROVIDER = "libonnxruntime_providers_cuda.so"
DRIVER = "libcuda.so.1"
DRIVER_NOTE = "skipped: the driver's library, mounted from the host by the NVIDIA Container Toolkit"
# The loader's own folders after ld.so.cache: Debian/Ubuntu's multiarch ones, then the classic ones.
MULTIARCH = f"{platform.machine()}-linux-gnu"
DEFAULT_DIRS = tuple(
    Path(d)
    for d in (f"/lib/{MULTIARCH}", f"/usr/lib/{MULTIARCH}", "/lib", "/usr/lib", "/lib64", "/usr/lib64")
)
LDCONFIG_ARCH = {"x86_64": "x86-64", "aarch64": "AArch64"}  # `ldconfig -p`'s name of this machine


@dataclass(frozen=True)
class Component:
    """What ships a CUDA library: its name, and the pip requirement that installs it for CUDA 13."""

    what: str
    package: str


# The libraries of onnxruntime-gpu 1.31's CUDA provider, by soname (its wheel's extras and
# onnxruntime.preload_dlls name the same packages).
COMPONENTS = {
    f"libcudart.so.{CUDA_MAJOR}": Component("the CUDA runtime", "nvidia-cuda-runtime~=13.0"),
    f"libcublas.so.{CUDA_MAJOR}": Component("cuBLAS", "nvidia-cublas~=13.0"),
    f"libcublasLt.so.{CUDA_MAJOR}": Component("cuBLASLt", "nvidia-cublas~=13.0"),
    "libcurand.so.10": Component("cuRAND", "nvidia-curand~=10.0"),
    "libcufft.so.12": Component("cuFFT", "nvidia-cufft~=12.0"),
    f"libnvrtc.so.{CUDA_MAJOR}": Component("NVRTC", "nvidia-cuda-nvrtc~=13.0"),
    "libcudnn.so.9": Component("cuDNN 9", "nvidia-cudnn-cu13~=9.0"),
}
DLOPENED = ("libcudnn.so.9", "libcufft.so.12", f"libnvrtc.so.{CUDA_MAJOR}")
# What those open in turn, from their own folder: cuDNN 9's libcudnn.so.9 is a shim for its
# sub-libraries (graph, ops, engines); NVRTC opens its builtins.
SUB_LIBRARIES = {"libcudnn.so.9": "libcudnn_*.so.9", f"libnvrtc.so.{CUDA_MAJOR}": "libnvrtc-builtins.so.*"}


class CheckError(RuntimeError):
    """The check itself cannot run (no onnxruntime-gpu, no `ldd`); the message says what to do."""


def provider_library() -> Path:
    """onnxruntime's CUDA provider, found without importing onnxruntime (no CUDA is loaded)."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or spec.origin is None:
        raise CheckError(f"onnxruntime is not installed for {sys.executable}: pip install onnxruntime-gpu")
    capi = Path(spec.origin).parent / "capi"
    if not (capi / PROVIDER).is_file():
        raise CheckError(
            f"{capi.parent} has no CUDA provider ({PROVIDER}): install onnxruntime-gpu, "
            "and not the CPU package onnxruntime beside it (both are the module `onnxruntime`)"
        )
    # The CUDA it was built with, as its package says (capi/build_and_package_info.py).
    info = capi / "build_and_package_info.py"
    built = re.search(r"cuda_version = '(\d+)", info.read_text()) if info.is_file() else None
    if built and int(built.group(1)) != CUDA_MAJOR:
        raise CheckError(
            f"this onnxruntime-gpu is built for CUDA {built.group(1)} ({info}); docker/cuda_libraries.py "
            f"and docker/triton.Dockerfile's base image are for CUDA {CUDA_MAJOR}: change them together"
        )
    return capi / PROVIDER


def ldd(library: Path) -> tuple[dict[str, str | None], list[str]]:
    """What the loader makes of `library`'s dependencies, all of them (NEEDED entries and theirs):
    {soname: path, or None when not found}, and other errors (a symbol version not found)."""
    command = shutil.which("ldd")
    if command is None:
        raise CheckError("`ldd` is not installed: it comes with glibc (Debian/Ubuntu: libc-bin)")
    run = subprocess.run([command, str(library)], capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise CheckError(f"ldd {library}: {(run.stderr or run.stdout).strip()}")
    resolved: dict[str, str | None] = {}
    errors = []
    for line in (run.stdout + run.stderr).splitlines():
        if found := re.match(r"\s*(\S+) => (.+?)(?: \(0x[0-9a-f]+\))?$", line):
            name, where = found.groups()
            resolved[name] = None if where == "not found" else where
        elif "not found" in line:  # e.g. "...: version `GLIBCXX_3.4.32' not found (required by ...)"
            errors.append(line.strip())
    return resolved, errors


def library_path() -> list[Path]:
    """LD_LIBRARY_PATH's folders, in order."""
    return [Path(d) for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]


@functools.cache
def loader_cache() -> dict[str, str]:
    """ld.so.cache as `ldconfig -p` prints it: {soname: path} for this machine's architecture."""
    command = shutil.which("ldconfig") or next(
        (p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.access(p, os.X_OK)), None
    )
    if command is None:
        return {}
    out = subprocess.run([command, "-p"], capture_output=True, text=True, check=False).stdout
    arch = LDCONFIG_ARCH.get(platform.machine(), "")
    cache: dict[str, str] = {}
    for line in out.splitlines():
        if entry := re.match(r"\s+(\S+) \(([^)]*)\) => (\S+)$", line):
            name, flags, path = entry.groups()
            if arch in flags:
                cache.setdefault(name, path)
    return cache


def find(name: str) -> Path | None:
    """Where dlopen(name) finds `name` for a caller without RUNPATH (the provider has none):
    LD_LIBRARY_PATH, then ld.so.cache, then the default folders. Nothing is loaded."""
    folder = next((d for d in library_path() if (d / name).is_file()), None)
    if folder is not None:
        return folder / name
    if name in loader_cache():
        return Path(loader_cache()[name])
    return next((d / name for d in DEFAULT_DIRS if (d / name).is_file()), None)


def other_versions(name: str) -> list[str]:
    """The same library with another major version here (libcublas.so.12 for libcublas.so.13)."""
    stem = name.split(".so", 1)[0] + ".so."
    folders = library_path() + [Path(p).parent for p in loader_cache().values()] + list(DEFAULT_DIRS)
    names = {n for n in loader_cache() if n.startswith(stem)}
    names |= {p.name for d in dict.fromkeys(folders) if d.is_dir() for p in d.glob(stem + "*")}
    return sorted(n for n in names if n != name and re.fullmatch(re.escape(stem) + r"\d+", n))


def opened_cuda_libraries(path: Path) -> set[str]:
    """The CUDA sonames a library opens by name at run time (dlopen), read from its bytes:
    cuDNN 9 opens the cuBLASLt and NVRTC of the CUDA it was built for."""
    names = set()
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        for prefix in (b"libcublasLt.so.", b"libnvrtc.so."):
            at = data.find(prefix)
            while at >= 0:
                if version := re.match(rb"(\d+)\x00", data[at + len(prefix) : at + len(prefix) + 8]):
                    names.add((prefix + version.group(1)).decode())
                at = data.find(prefix, at + 1)
    return names


def fix(component: Component) -> str:
    """How to get a CUDA 13 library: the base image, or its pip package."""
    first = f"{FIRST_TRITON_RELEASE[0]}.{FIRST_TRITON_RELEASE[1]:02d}"
    return (
        f"build on a Triton image made with CUDA {CUDA_MAJOR} (nvcr.io/nvidia/tritonserver:{first}-py3 "
        f"or later), or pip install '{component.package}' and put its lib folder on LD_LIBRARY_PATH"
    )


def missing_message(name: str, needed_by: str) -> str:
    """One line: what is missing, who needs it, and how to get it."""
    others = other_versions(name)
    there = f"; only {', '.join(others)} here, another major version" if others else ""
    component = COMPONENTS.get(name)
    if component is None:
        return (
            f"{name} not found (needed by {needed_by}{there}): install the package that ships it, "
            "or put its folder on LD_LIBRARY_PATH"
        )
    return (
        f"{name} not found (needed by {needed_by}{there}): this image lacks {component.what} for "
        f"CUDA {CUDA_MAJOR}; {fix(component)}"
    )


@dataclass
class Report:
    """What was found (one line each) and what is missing (one message each, naming the fix)."""

    found: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def ok(self, line: str) -> None:
        if line not in self.found:
            self.found.append(line)

    def problem(self, message: str) -> None:
        if message not in self.missing:
            self.missing.append(message)

    def resolve(self, target: Path) -> None:
        """Everything `target` needs (ldd), the driver's library excepted."""
        resolved, errors = ldd(target)
        for name, path in resolved.items():
            if name == DRIVER and path is None:
                self.ok(f"{DRIVER}: {DRIVER_NOTE}")
            elif path is None:
                self.problem(missing_message(name, target.name))
            elif name in COMPONENTS:
                self.ok(f"{name} => {path}")
        for error in errors:
            self.problem(f"{error}: this image's system libraries are older than {target.name} needs")

    def opened(self, name: str, by: str) -> None:
        """A library `by` opens at run time: found, what it needs, and what it opens in turn."""
        path = find(name)
        if path is None:
            self.problem(missing_message(name, f"{by}, which opens it at run time"))
            return
        self.ok(f"{name} => {path} (opened at run time)")
        pattern = SUB_LIBRARIES.get(name)
        subs = sorted(path.parent.glob(pattern)) if pattern else []
        if pattern and not subs:
            self.problem(f"{pattern} not found beside {path}: {name} opens them; reinstall it")
        for target in [path, *subs]:
            self.resolve(target)
            self.same_cuda(target, COMPONENTS.get(name))

    def same_cuda(self, target: Path, component: Component | None) -> None:
        """The CUDA libraries `target` opens by name are the provider's CUDA major, and are here."""
        for opened in sorted(opened_cuda_libraries(target)):
            major = int(opened.rsplit(".", 1)[1])
            if major != CUDA_MAJOR and component is not None:
                self.problem(
                    f"{target.name} opens {opened}: this {component.what} is built for CUDA {major}, "
                    f"the provider for CUDA {CUDA_MAJOR}; {fix(component)}"
                )
            elif major == CUDA_MAJOR and find(opened) is None:
                self.problem(missing_message(opened, f"{target.name}, which opens it at run time"))


def check(library: Path, dlopened: tuple[str, ...] = DLOPENED) -> Report:
    """Does every library `library` needs, or opens at run time, resolve here?"""
    report = Report()
    report.resolve(library)
    for name in dlopened:
        report.opened(name, library.name)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--library", type=Path, help=f"the library to check (default: onnxruntime's {PROVIDER})"
    )
    parser.add_argument(
        "--dlopen",
        nargs="*",
        default=list(DLOPENED),
        metavar="NAME",
        help="libraries it opens at run time, by soname (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        library = args.library or provider_library()
        report = check(library, tuple(args.dlopen))
    except CheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"checking {library} (no GPU needed)")
    for line in report.found:
        print(f"  {line}")
    sys.stdout.flush()  # in the build log before the errors
    for message in report.missing:
        print(f"error: {message}", file=sys.stderr)
    if report.missing:
        print(f"{library.name} cannot load here: {len(report.missing)} problems (above)", file=sys.stderr)
        return 1
    print(f"ok: every library {library.name} loads resolves")
    return 0


if __name__ == "__main__":
    sys.exit(main())
