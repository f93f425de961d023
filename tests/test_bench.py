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
    assert {r["backend"] for r in report["rows"]} == {
        "transformers",
        "ort_v1",
        "ort",
        "triton_fp32",
        "triton_int8",
    }
    assert len(report["rows"]) == 5 * 2 * 2
    for row in report["rows"]:
        assert row["ms_per_token_median"] > 0 and row["tokens_per_s"] > 0
    assert len(report["ratios"]) == 6 and all(math.isfinite(r["value"]) for r in report["ratios"])
    targets = report["scenario_targets"]  # bench/scenarios.py: (a)-(d) and the sampling cost
    assert len(targets) == 8 and all(math.isfinite(t["value"]) and t["value"] > 0 for t in targets)
    assert {r["mode"] for r in report["scenarios"]["churn"]} == {"before", "after"}
    table = (tmp_path / "bench-tiny.md").read_text()
    assert "(3) client → Triton fp32" in table and "| target |" in table and "| churn | after |" in table
    assert (tmp_path / "bench-tiny.png").read_bytes()[:4] == b"\x89PNG"
