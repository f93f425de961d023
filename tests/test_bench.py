"""`python -m bench --shape tiny`: the benchmark runs end to end and reports every number."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from tests.helpers import ROOT


def test_bench_tiny_smoke(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--shape",
            "tiny",
            "--out",
            str(tmp_path),
            "--concurrency",
            "1,2",
            "--prompt-lengths",
            "16,64",
            "--new-tokens",
            "6",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "bench-tiny.json").read_text())
    assert {r["backend"] for r in report["rows"]} == {"transformers", "ort", "triton_fp32", "triton_int8"}
    assert len(report["rows"]) == 4 * 2 * 2
    for row in report["rows"]:
        assert row["ms_per_token_median"] > 0 and row["tokens_per_s"] > 0
    assert len(report["ratios"]) == 9 and all(math.isfinite(r["value"]) for r in report["ratios"])
    for row in report["rows"]:  # served rows: the client's counts and the server's own times
        if row["backend"].startswith("triton"):
            assert row["rows_per_request"] >= 1 and 0 < row["bytes_per_row"] < 4 * 2000
            assert (
                row["compute_infer_ms"] > 0 and 0 < row["model_py_ms_per_execute"] < row["compute_infer_ms"]
            )
    targets = report["scenario_targets"]  # bench/scenario_report.py: the scenarios and the sampling costs
    assert len(targets) == 9 and all(math.isfinite(t["value"]) and t["value"] > 0 for t in targets)
    assert {r["mode"] for r in report["scenarios"]["churn"]} == {"before", "after"}
    table = (tmp_path / "bench-tiny.md").read_text()
    assert "| client → Triton fp32 |" in table and "| target |" in table and "| churn | after |" in table
    assert (tmp_path / "bench-tiny.png").read_bytes()[:4] == b"\x89PNG"


def test_gpu_check_runs_its_phases_on_the_cpu(tmp_path):
    """`python -m bench.gpu_check --provider cpu`: the GPU check's own code paths (export, parity,
    the engine with and without decode graphs, the churn comparison, the real Triton, transformers)
    on this CPU, so that a GPU host runs code that has run."""
    import os

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.gpu_check",
            "--provider",
            "cpu",
            "--shape",
            "tiny",
            "--concurrency",
            "1,3",
            "--prompt-lengths",
            "16",
            "--new-tokens",
            "6",
            "--out",
            str(tmp_path),
            "--model-python",
            str(ROOT / ".venv-triton"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert all(phase["ok"] for phase in report["phases"].values()) and len(report["phases"]) == 14
    backends = {r["backend"] for r in report["rows"]}
    assert backends == {
        "ort_cuda",
        "ort_cuda_graphs",
        "triton_cuda",
        "transformers_eager",
        "transformers_sdpa",
        "transformers_static",  # the compiled rows' code path, not compiled on the CPU
    }
    assert report["churn"]["rows_differing"] == 0 and report["churn"]["graph_steps"] > 50
    assert [g["bucket"] for g in report["graphs"]] == [1, 2, 3] and report["parity"]["top1"] == 1.0
    assert [r["concurrency"] for r in report["rounds"]] == [1, 3] and all(
        r["engine_ms_per_execute"] > 0 for r in report["rounds"]
    )
    assert len(report["prompt_chunks"]) == 8
    processes = {r["processes"]: r for r in report["processes"]}  # 1 and (at most 4) 3 bot processes
    assert set(processes) == {1, 3} and all(r["tokens_per_s"] > 0 for r in processes.values())
    assert processes[3]["rounds"] == 3 * 6 and processes[3]["requests_per_execute"] >= 1
    assert "| target |" in (tmp_path / "gpu-check.md").read_text()


def test_gpu_check_names_what_the_host_lacks(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--model-python", str(tmp_path / "none")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "the model's venv" in proc.stderr and "not found" in proc.stderr


def test_rollout_tiny_under_3_chats(tmp_path):
    """bench/rollout.py with the tiny shape: a new version under 3 chats, no failed reply, none
    from the old version once the new one answered, and a peak memory above the idle one."""
    from bench.rollout import run

    r = run("tiny", tmp_path, chats=3, poll_seconds=1)
    assert r["failed"] == 0 and r["v1_replies_started_after_first_v2"] == 0
    assert r["replies_by_version"]["1"] >= 6 and r["replies_by_version"]["2"] >= 6
    assert r["export_end_to_first_v2_reply_s"] > 0 and r["two_versions_held_s"] > 0
    assert r["rss_peak_mib"] >= r["rss_idle_mib"] > 0
