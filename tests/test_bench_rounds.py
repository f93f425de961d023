"""`python -m bench.client_round` and `python -m bench.rounds` on tiny settings: their counts and the
report's structure (not their times)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT

BEFORE = "df53aa5"  # the commit before the rounds rewrite


def _has_commit(ref: str) -> bool:
    return subprocess.run(["git", "cat-file", "-e", f"{ref}^{{commit}}"], cwd=ROOT).returncode == 0


def test_client_round_counts_rows_and_rounds(tmp_path):
    before = ["--before", BEFORE] if _has_commit(BEFORE) else []
    args = ["--rows", "1,3", "--repeats", "2", "--tokens", "4", "--prompt", "8", "--out", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.client_round", *args, *before],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "client-round.json").read_text())
    sides = {"after", "before"} if before else {"after"}
    keys = {(r["side"], r["mode"], r["rows"]) for r in report["rows"]}
    assert keys == {(s, m, n) for s in sides for m in ("rounds", "codec") for n in (1, 3)}
    assert len(report["samples"]) == 2 * len(keys)
    for r in report["rows"]:
        assert r["repeats"] == 2 and r["rounds"] == 4  # the prompt's round and 3 more: one a token
        assert 0 < r["round_ms_min"] <= r["round_ms_median"] and r["target_ms"] > 0.2
        if r["side"] == "after":  # the client's parts of a round
            assert r["build_ms_median"] > 0 and r["answer_ms_median"] > 0
    for s in report["samples"]:
        assert s["rows_sent"] >= s["rows"] * 4  # a row a round each, and the END rows
    table = (tmp_path / "client-round.md").read_text()
    assert "| after | rounds | 3 |" in table and report["machine"]["cores"]


def test_rounds_tiny_conversations_processes_and_transformers(tmp_path):
    tokens = 4
    args = (
        "--shape tiny --conversations 1,3 --processes 1,2 --prompt 8 --kv-slots 4 --slot-length 64 "
        f"--new-tokens {tokens} --repeats 1 --sampling greedy --transformers eager,static --out {tmp_path}"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "bench.rounds", *args.split()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "rounds-tiny.json").read_text())
    runs = {(r["conversations"], r["processes"]): r for r in report["rows"]}
    assert set(runs) == {(1, 1), (3, 1), (3, 2)}
    for (n, processes), r in runs.items():
        assert r["tokens_per_s"] > 0 and r["round_ms"] > 0 and r["full_rows"] == 0
        assert r["rounds"] == processes * tokens  # greedy: a round a token in each process
        assert r["engine_ms"] > 0 and r["model_py_ms"] > 0 and r["compute_infer_ms"] > 0
        assert r["requests_per_execute"] >= 1 and r["rows_per_execute"] >= 1
        each = [s for s in report["samples"] if (s["conversations"], s["processes"]) == (n, processes)]
        assert [sorted(e["conversations"] for e in s["each"]) for s in each] == [
            [n] if processes == 1 else [1, 2]
        ]
        assert all(e["tokens"] == e["conversations"] * tokens for s in each for e in s["each"])
    assert {(r["runner"], r["conversations"]) for r in report["transformers"]} == {
        (name, n) for name in ("eager", "static") for n in (1, 3)
    }
    assert all(r["tokens_per_s"] > 0 for r in report["transformers"])
    table = (tmp_path / "rounds-tiny.md").read_text()
    assert "| conversations | tokens/s | ms/round | client |" in table and "| processes |" in table
    assert "transformers static cache, not compiled" in table


def test_transformers_static_runner_times_every_token():
    """bench/runners.py's static-cache runner, not compiled (compiling takes minutes on a small CPU;
    `python -m bench.rounds --transformers compiled` and the GPU check compile)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from bench.runners import prompts, run_transformers_static

    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=100, n_positions=64, pad_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    t = run_transformers_static(model, prompts(2, 5, 100, seed=0), 3, compiled=False)
    assert len(t.ttft_s) == 2 and len(t.token_s) == 2 * 2 and t.tokens == 6 and t.wall_s > 0
