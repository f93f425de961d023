"""`python -m bench.prepare [--messages 1000000]`: time `python -m training.prepare telegram` on a
synthetic whole-account export, with the child's peak RSS and CPU time.

The export (bench/prepare_export.py) is written once to results/prepare/ and reused. The
conversion runs as a child process, so its peak RSS (ru_maxrss from wait4) is its own. The
machine's load average is printed with the figures: other processes on the cores stretch the
wall time, not the CPU time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.prepare_export import write_account_export

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS, TARGET_RSS_MB = 60, 300  # the budget for a million messages on 2 cores


def export_path(folder: Path, messages: int, seed: int) -> Path:
    """The synthetic export with `messages` messages, written when missing."""
    path = folder / f"export-{messages}-{seed}.json"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        started = time.perf_counter()
        size = write_account_export(partial, messages, seed)
        partial.replace(path)
        print(f"wrote {path} ({size / 2**20:.0f} MiB) in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def run(export: Path, output: Path) -> dict:
    """One conversion in a child process: wall and CPU seconds, peak RSS, its report."""
    command = [sys.executable, "-m", "training.prepare", "telegram", str(export), "--output", str(output)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    load = os.getloadavg()[0]
    started = time.perf_counter()
    child = subprocess.Popen(
        [*command, "--no-progress"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    report = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"the conversion failed with status {child.returncode}")
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
        "load_before": load,
        "report": report,
    }


def backend() -> str:
    from training.prepare.telegram_export import backend as chosen

    return str(chosen.backend_name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser("python -m bench.prepare", description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=1_000_000, help="messages in the synthetic export")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic export")
    p.add_argument("--folder", type=Path, default=ROOT / "results" / "prepare", help="where the export goes")
    p.add_argument("--runs", type=int, default=1, help="conversions to time (the best is reported too)")
    args = p.parse_args(argv)
    export = export_path(args.folder, args.messages, args.seed)
    size = export.stat().st_size / 2**20
    results = [run(export, args.folder / "data.csv") for _ in range(args.runs)]
    tail = results[-1]["report"].strip().splitlines()[-4:]
    print("\n".join(tail))
    cores = os.cpu_count()
    print(f"export: {args.messages} messages, {size:.0f} MiB; ijson backend: {backend()}; cores: {cores}")
    for i, r in enumerate(results, 1):
        print(
            f"run {i}: {r['seconds']:.1f} s wall, {r['cpu_seconds']:.1f} s CPU, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB, {args.messages / r['seconds']:,.0f} messages/s "
            f"(load average before: {r['load_before']:.1f})"
        )
    best = min(results, key=lambda r: r["seconds"])
    if args.messages == 1_000_000:
        ok = best["seconds"] <= TARGET_SECONDS and best["peak_rss_mb"] <= TARGET_RSS_MB
        print(f"target ≤ {TARGET_SECONDS} s and ≤ {TARGET_RSS_MB} MB: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
