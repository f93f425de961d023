"""`python -m bench.client_round`: the client's own time per round, without a server or HTTP.

A TritonClient whose `send` answers at once with canned arrays (bench/canned.py) runs `--rows`
generations of `--tokens` tokens from `--prompt`-token prompts with the card's sampling: what is
timed is the client's work per round (the rounds loop, the request gathered from the rounds'
state, the tokens chosen and appended). A second mode (`codec`) answers one level lower, at
HTTP: the request's serialization and the answer's parsing are timed too. Every measurement is a
fresh client in a worker process, a warm-up batch (the tables grown), then the timed batch.

With `--before df53aa5` (a commit of this repository, unpacked with `git archive` into a
temporary folder, or a checkout of it: `git worktree add /tmp/old df53aa5`), the client of the
commit before the rounds rewrite (bot/triton_client.py + bot/step_gate.py + bot/generate.py +
bot/sampling.py) is driven the same way in a worker of its own (bench/client_round_old.py): both
sides alternate, in one run, on one machine. Results: min and median over `--repeats`, in
<out>/client-round.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.canned import Canned, prompts, steps_in, summary
from bench.machine import line, machine
from client.rounds import TritonClient, generate
from client.sampling import SamplingConfig
from client.transport import Answer, ModelInfo
from contract import triton_io as io

ROOT = Path(__file__).resolve().parent.parent
PER_ROW_US, PER_ROUND_MS = 3.0, 0.2  # the target: at most 3 µs per row + 0.2 ms per round


class Instant(TritonClient):
    """The rounds' client against an instant server: `send` (or, with `codec`, the HTTP call
    under it) answers at once from `canned`; the time in its parts is summed per run."""

    def __init__(self, slots: int, canned: Canned, codec: bool):
        super().__init__("127.0.0.1:9", timeout=60)
        self.fixed = ModelInfo(4096, slots)  # (send forgets _info when the answering version changes)
        self.canned, self.codec = canned, codec
        self._flags = np.zeros(0, np.int32)
        self.reset()

    def reset(self) -> None:
        self.rounds_sent = self.rows_sent = 0
        self.stamps: list[float] = []  # when each round was sent
        self.spent = {"send": 0.0, "round": 0.0, "answer": 0.0}

    async def model_info(self) -> ModelInfo:
        self._info = self.fixed
        return self.fixed

    async def send(self, arrays: dict[str, np.ndarray], *args: Any, **kwargs: Any) -> Answer:
        t = time.perf_counter()
        self._flags = arrays[io.FLAGS][0]
        if steps_in(self._flags):
            self.stamps.append(t)
        if self.codec:
            answer = await super().send(arrays, *args, **kwargs)
        else:
            a = self.canned.arrays(self._flags)
            answer = Answer("1", a[io.STATUS], [], a[io.CANDIDATE_IDS], a[io.CANDIDATE_LOGITS], a[io.LOGITS])
        self.spent["send"] += time.perf_counter() - t
        return answer

    async def _http(self, method: str, path: str, body: bytes | None = None, **headers: str) -> Any:
        data, header_length = self.canned.body(self._flags)
        return 200, {"Inference-Header-Content-Length": str(header_length)}, data

    async def _round(self, seqs: list) -> None:
        t = time.perf_counter()
        await super()._round(seqs)
        self.spent["round"] += time.perf_counter() - t

    def _answered(self, *args: Any) -> None:
        t = time.perf_counter()
        super()._answered(*args)
        self.spent["answer"] += time.perf_counter() - t


def sampling(tokens: int) -> SamplingConfig:
    """The card's sampling (a ChatBot's replies share one config), no stop ids: `tokens` each."""
    return SamplingConfig(max_new_tokens=tokens, stop_ids=())


async def measure(n: int, tokens: int, prompt: int, codec: bool) -> dict:
    """One measurement of the rounds' client at `n` rows (see the module's docstring)."""
    client = Instant(n, Canned(2 * n), codec)
    cfg, batch = sampling(tokens), prompts(n, prompt)
    shared = np.random.default_rng(0)  # as one ChatBot: one generator for its replies
    await asyncio.gather(*(generate(client, p, cfg, shared) for p in batch))  # warm-up
    client.reset()
    t0 = time.perf_counter()
    gens = await asyncio.gather(*(generate(client, p, cfg, shared) for p in batch))
    wall = time.perf_counter() - t0
    assert all(len(g.tokens) == tokens for g in gens), "a generation ended early"
    out = summary(n, wall, client.stamps, client.rows_sent, sum(g.full_rows for g in gens))
    await client.close()
    per_round = 1000 / out["rounds"]
    spent = client.spent
    out["build_ms"] = (spent["round"] - spent["send"] - spent["answer"]) * per_round
    out["answer_ms"] = spent["answer"] * per_round  # the tokens chosen, checked and appended
    out["loop_ms"] = (wall - spent["round"]) * per_round  # the loop, futures, the callers' tasks
    out["send_ms"] = spent["send"] * per_round  # the instant answer (with codec: its (de)serialization)
    return out


def worker(run: Any) -> int:
    """Measurements asked for on stdin (a JSON object a line), answered on stdout the same way."""
    for request in sys.stdin:
        args = json.loads(request)
        print(json.dumps(asyncio.run(run(**args))), flush=True)
    return 0


class Worker:
    """A worker process: one side's client, measured on demand."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(
            command, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def measure(self, **args: Any) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(args) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"the worker {self.proc.args!r} ended (exit {self.proc.wait()})")
        result: dict = json.loads(answer)
        return result

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def checkout(before: str, into: Path) -> Path:
    """`before` if it is a folder, else the commit's bot/, contract/ and serve/ unpacked into `into`."""
    if Path(before).is_dir():
        return Path(before)
    archive = subprocess.run(
        ["git", "archive", before, "bot", "contract", "serve"], cwd=ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def workers(before: Path | None) -> dict[str, Worker]:
    sides = {"after": Worker([sys.executable, "-m", "bench.client_round", "--worker"], ROOT)}
    if before is not None:
        old = ROOT / "bench" / "client_round_old.py"
        env = {**os.environ, "PYTHONPATH": str(before)}
        sides["before"] = Worker([sys.executable, str(old), str(ROOT / "bench" / "canned.py")], before, env)
    return sides


def aggregate(samples: list[dict]) -> list[dict]:
    """Min and median of every figure, per side, mode and rows."""
    groups: dict[tuple, list[dict]] = {}
    for s in samples:
        groups.setdefault((s["side"], s["mode"], s["rows"]), []).append(s)
    rows = []
    for (side, mode, n), group in groups.items():
        row: dict[str, Any] = {"side": side, "mode": mode, "rows": n, "repeats": len(group)}
        for key, value in group[0].items():
            if isinstance(value, float):
                values = [g[key] for g in group]
                row[f"{key}_min"], row[f"{key}_median"] = min(values), statistics.median(values)
        row["full_rows"] = max(g["full_rows"] for g in group)
        row["rounds"] = group[0]["rounds"]
        row["target_ms"] = PER_ROW_US * n / 1000 + PER_ROUND_MS
        rows.append(row)
    return sorted(rows, key=lambda r: (r["mode"], r["rows"], r["side"] != "before"))


def markdown(rows: list[dict], info: dict[str, str], args: argparse.Namespace) -> str:
    lines = [
        f"Machine: {line(info)}. `python -m bench.client_round --rows {args.rows} --repeats "
        f"{args.repeats} --tokens {args.tokens} --prompt {args.prompt}`: the card's sampling; ms per "
        "round = the timed batch's wall time / its rounds that stepped (the prompt's included); "
        "steady = the median time between two rounds' sends; min / median over the repeats.",
        "",
        "| client | mode | rows | ms/round min | median | steady ms | µs/row min | median "
        "| target ms (3 µs/row + 0.2) | met (min) | build | choose+append | loop |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|",
    ]
    for r in rows:
        parts = (
            " | ".join(f"{r[f'{k}_ms_median']:.3f}" for k in ("build", "answer", "loop"))
            if "build_ms_median" in r
            else " | | "
        )
        met = "yes" if r["round_ms_min"] <= r["target_ms"] else "no"
        lines.append(
            f"| {r['side']} | {r['mode']} | {r['rows']} "
            f"| {r['round_ms_min']:.3f} | {r['round_ms_median']:.3f} "
            f"| {r['cycle_ms_median']:.3f} | {r['row_us_min']:.1f} | {r['row_us_median']:.1f} "
            f"| {r['target_ms']:.3f} | {met} | {parts} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.client_round", description=__doc__)
    p.add_argument("--rows", default="1,32,128,256", help="generations at once, comma separated")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tokens", type=int, default=40, help="tokens per generation")
    p.add_argument("--prompt", type=int, default=100, help="prompt tokens")
    p.add_argument("--modes", default="rounds,codec", help="rounds: send instant; codec: HTTP instant")
    p.add_argument("--before", help="the commit before the rounds (df53aa5), or a checkout of it")
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(lambda rows, tokens, prompt, codec: measure(rows, tokens, prompt, codec))
    scratch = tempfile.TemporaryDirectory(prefix="client-round-before-")
    sides, samples = workers(checkout(args.before, Path(scratch.name)) if args.before else None), []
    try:
        for repeat in range(args.repeats):
            for n in (int(x) for x in args.rows.split(",")):
                for mode in args.modes.split(","):
                    for side, w in sides.items():  # alternating: the load of the moment on both
                        s = w.measure(rows=n, tokens=args.tokens, prompt=args.prompt, codec=mode == "codec")
                        samples.append({"side": side, "mode": mode, "repeat": repeat, **s})
                        print(
                            f"{side:6s} {mode:6s} {n:4d} rows: {s['round_ms']:7.3f} ms/round, "
                            f"{s['row_us']:7.1f} µs/row",
                            file=sys.stderr,
                        )
    finally:
        for w in sides.values():
            w.close()
        scratch.cleanup()
    info, rows = machine("aiohttp", "tritonclient"), aggregate(samples)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": info, "settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    (args.out / "client-round.json").write_text(json.dumps({**report, "samples": samples}, indent=2))
    text = markdown(rows, info, args)
    (args.out / "client-round.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
