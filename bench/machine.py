"""What a benchmark ran on: the date, the CPU (lscpu's model name), its cores, the versions."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine(*packages: str) -> dict[str, str]:
    """Today's date, the CPU, its cores (those this process may use), Python's version and each of
    `packages`' installed version ("-" where it is not installed)."""
    info = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_model(),
        "cores": str(len(os.sched_getaffinity(0))),
        "python": platform.python_version(),
    }
    for name in ("numpy", *packages):
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = "-"
    return info


def line(info: dict[str, str]) -> str:
    """The machine as one Markdown line."""
    versions = ", ".join(f"{k} {v}" for k, v in info.items() if k not in ("date", "cpu", "cores"))
    return f"{info['date']}; {info['cpu']}, {info['cores']} cores; {versions}"
