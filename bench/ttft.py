"""`python -m bench.ttft --shape small`: time to first token in-process, on the graph without
ragged chunks (onnxruntime-gpu's layout), with prompt batching off (before) and on (after).

Prompts go in the bot's 256-token chunks, one chunk per round, while other conversations decode
a token every round (each round is one engine step, as a served round is one execute()). A
prompt's time to first token runs from the start of the round that carries its first chunk to
the end of the round that carries its last (whose candidates give the first token). Scenarios:

- one: a ~1000-token prompt arrives while N conversations decode;
- burst: K ~1000-token prompts arrive in one round while N decode (generations starting over
  at once, e.g. after a version switch);
- short burst: K 200-token prompts (one chunk each) arrive in one round while N decode.

Prompt batching merges only first chunks (position 0) of equal width in adjacent slots: the graph
refuses several rows of continuation chunks (engine/plan.py's `together`).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.__main__ import SHAPES, build_model
from client.generate import PROMPT_CHUNK

log = logging.getLogger("bench.ttft")


def first_tokens(engine, decoding: int, arriving: int, prompt: int, vocab: int, seed: int) -> list[float]:
    """Seconds to the first token of each of `arriving` prompts of `prompt` tokens that arrive in
    one round while `decoding` conversations (50-token contexts, started before) decode."""
    from engine.core import Step

    rng = np.random.default_rng(seed)
    decoders = {k: int(rng.integers(5, vocab)) for k in range(1, decoding + 1)}
    engine.step([Step(k, rng.integers(5, vocab, 50), 0) for k in decoders])
    last = {k: 50 for k in decoders}  # their next position
    prompts = {1000 + j: rng.integers(5, vocab, prompt) for j in range(arriving)}
    sent: dict[int, int] = dict.fromkeys(prompts, 0)
    done: dict[int, float] = {}
    t0 = time.perf_counter()
    while len(done) < arriving:
        steps = [Step(k, np.array([tok]), last[k]) for k, tok in decoders.items()]
        chunked = [k for k in prompts if k not in done]
        for k in chunked:
            n = min(PROMPT_CHUNK, prompt - sent[k])
            steps.append(Step(k, prompts[k][sent[k] : sent[k] + n], sent[k]))
            sent[k] += n
        out = engine.step(steps)
        now = time.perf_counter()
        assert (out.status == 0).all(), out.errors
        for i, k in enumerate(decoders):
            decoders[k], last[k] = int(out.top_ids[i, 0]), last[k] + 1
        done.update((k, now - t0) for k in chunked if sent[k] == prompt)
    engine.step([Step(k, np.zeros(0, np.int64), None, end=True) for k in [*decoders, *prompts]])
    return [done[k] for k in prompts]


def run(shape: str, work: Path, threads: int, decoding: int, burst: int, repeats: int) -> dict:
    from engine.core import KVEngine, make_session
    from export import serving_graph

    onnx_path = work / "uniform.onnx"
    if not onnx_path.exists():
        cfg, weights = serving_graph.load_weights(build_model(shape, work / "checkpoint"))
        serving_graph.save(serving_graph.build(cfg, weights, ragged=False), onnx_path)
    session = make_session(str(onnx_path), threads=threads)
    vocab = SHAPES[shape]["vocab_size"]
    engines = {
        mode: KVEngine(session, slots=decoding + burst, decode_graphs="off", prompt_batching=mode)
        for mode in ("off", "on")
    }
    scenarios = {"one": (1, 1000), "burst": (burst, 1000), "short burst": (burst, 200)}
    results: dict = {"shape": shape, "threads": threads, "decoding": decoding, "burst": burst, "rows": []}
    for name, (arriving, prompt) in scenarios.items():
        times: dict[str, list[float]] = {"off": [], "on": []}
        first_tokens(engines["on"], decoding, arriving, prompt, vocab, seed=99)  # warm-up: allocators
        first_tokens(engines["off"], decoding, arriving, prompt, vocab, seed=99)
        for r in range(repeats):  # alternating, so that a busy moment of the host hits both
            for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
                times[mode] += first_tokens(engines[mode], decoding, arriving, prompt, vocab, seed=r)
        row = {
            "scenario": name,
            "arriving": arriving,
            "prompt": prompt,
            **{f"{mode}_ms_median": statistics.median(t) * 1000 for mode, t in times.items()},
            **{f"{mode}_ms_max": max(t) * 1000 for mode, t in times.items()},
        }
        results["rows"].append(row)
        log.info(
            "%-11s %d x %4d tokens beside %d decoding: TTFT median %.0f -> %.0f ms, max %.0f -> %.0f ms",
            name,
            arriving,
            prompt,
            decoding,
            row["off_ms_median"],
            row["on_ms_median"],
            row["off_ms_max"],
            row["on_ms_max"],
        )
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ttft", description=__doc__)
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--out", type=Path, default=Path("results"), help="folder for the JSON")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads")
    p.add_argument("--decoding", type=int, default=7, help="conversations decoding meanwhile")
    p.add_argument("--burst", type=int, default=8, help="prompts arriving together in the bursts")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("engine").setLevel(logging.WARNING)
    work = args.out / f"work-{args.shape}"
    results = run(args.shape, work, args.threads, args.decoding, args.burst, args.repeats)
    path = args.out / f"ttft-{args.shape}.json"
    path.write_text(json.dumps(results, indent=1))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
