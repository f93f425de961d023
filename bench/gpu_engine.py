"""The GPU check's engine phases (bench/gpu_check.py): the engine in-process with its KV buffers
on the device, decode graphs captured, both paths timed and compared."""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np

from bench.__main__ import measure
from bench.gpu_report import Check
from bench.runners import prompts, run_ort


def capture_graphs(engine, vocab: int) -> list[dict]:
    """Each decode graph captured on its own: its first run's time and the GPU memory it took."""
    import torch

    from engine.core import Step

    def free() -> int:
        return torch.cuda.mem_get_info()[0] if engine.device == "cuda" else 0

    out = []
    for bucket, graph in engine.graphs.items():
        steps = [Step(9000 + i, np.array(prompts(1, 8, vocab, i)[0]), 0) for i in range(bucket)]
        engine.step(steps)
        before = free()
        engine.step([Step(s.sequence_id, np.array([5]), 8, end=True) for s in steps])
        out.append(
            {
                "bucket": bucket,
                "first_run_ms": graph.capture_s * 1000,
                "memory_mb": (before - free()) / 1e6,
                "max_abs_vs_ordinary": graph.check_diff,
                "runs": graph.runs,
            }
        )
    return out


def prompt_costs(engine, vocab: int, chunk: int = 256, chunks: int = 4) -> list[dict]:
    """ms of each 256-token chunk of a 1000-token prompt (the bot's chunks), twice: a prompt's
    first chunk (position 0) and its continuations (past in the cache) take different kernels."""
    import torch

    from engine.core import Step

    out = []
    for attempt in range(2):
        ids = prompts(1, chunk * chunks, vocab, 30 + attempt)[0]
        for k in range(chunks):
            if engine.device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            result = engine.step([Step(500 + attempt, np.array(ids[k * chunk : (k + 1) * chunk]), k * chunk)])
            out.append({"attempt": attempt, "position": k * chunk, "ms": (time.perf_counter() - t) * 1000})
            assert result.status[0] == 0, result.errors
        engine.step([Step(500 + attempt, np.zeros(0, np.int64), None, end=True)])
    return out


def churn_parity(graphs, plain, vocab: int, steps: int = 200) -> dict:
    """Greedy tokens of two engines over `steps` rounds with conversations joining and leaving."""
    from engine.core import Step

    rng, contexts, rows, differ, refused = np.random.default_rng(5), {}, 0, 0, 0
    for t in range(steps):
        batch = []
        if t % 7 == 0:  # a newcomer
            prompt = prompts(1, int(rng.integers(8, 60)), vocab, t)[0]
            batch.append(Step(10_000 + t, np.array(prompt), 0))
            contexts[10_000 + t] = prompt
        for k, ctx in contexts.items():
            if k != 10_000 + t and rng.random() > 0.1:  # some skip a step
                end = len(ctx) > 100 or rng.random() < 0.02
                batch.append(Step(k, np.array(ctx[-1:]), len(ctx) - 1, end=end))
        a, b = graphs.step(batch), plain.step(batch)
        ok = (a.status == 0) & (b.status == 0)
        rows, refused = rows + len(batch), refused + int((~ok).sum())
        differ += int((ok & (a.top_ids[:, 0] != b.top_ids[:, 0])).sum())
        for i, s in enumerate(batch):
            if s.end or not ok[i]:
                contexts.pop(s.sequence_id, None)
            else:
                contexts[s.sequence_id].append(int(a.top_ids[i, 0]))
    return {
        "rounds": steps,
        "rows": rows,
        "rows_differing": differ,
        "rows_refused": refused,
        "graph_steps": graphs.graph_steps,
    }


def first_chunks(plain, onnx_path: str, provider: str, vocab: int) -> dict:
    """Prompt batching on this device: an engine with it forced on against `plain` (each chunk
    alone), the candidates of prompts arriving together compared, and their time to first token
    (bench/ttft.py's scenarios: 8 prompts beside the rest of the slots decoding)."""
    from bench.ttft import first_tokens
    from engine.core import KVEngine, Step, make_session

    merged = KVEngine(
        make_session(onnx_path, provider), slots=plain.slots, decode_graphs="off", prompt_batching="on"
    )
    arriving = min(8, plain.slots)
    batch = [Step(700 + k, np.array(p), 0, end=True) for k, p in enumerate(prompts(arriving, 200, vocab, 7))]
    a, b = merged.step(batch), plain.step(batch)
    out = {
        "batching": merged.prompt_batching,  # "off ..." where its first merged call failed or differed
        "max_abs": float(np.abs(a.top_logits - b.top_logits).max()),
        "top1_equal": bool((a.top_ids[:, 0] == b.top_ids[:, 0]).all()),
    }
    decoding = plain.slots - arriving
    for prompt in (200, 1000):
        for name, engine in (("off", plain), ("on", merged)):
            first_tokens(engine, decoding, arriving, prompt, vocab, seed=99)  # new shapes' first runs
            ms = [t * 1000 for t in first_tokens(engine, decoding, arriving, prompt, vocab, seed=1)]
            out[f"ttft_{prompt}_{name}_ms"] = float(np.median(ms))
    return out


def engine_phases(check: Check, args: argparse.Namespace, onnx_path: str, slots: int, vocab: int) -> None:
    """The engine in-process: KV on the device, decode graphs captured, both paths timed and compared."""
    from engine.core import KVEngine, make_session

    rep, cuda = check.report, args.provider == "cuda"
    grid = (args.lengths, args.concurrency, vocab)
    plain = KVEngine(make_session(onnx_path, args.provider), slots=slots, decode_graphs="off")
    rep["kv"] = {"device": plain.kv.values[0].device_name(), "bytes": plain.kv.nbytes}
    rep["warm_up_s"] = {"ordinary": plain.warm_up()}  # as the served model does at load
    runner = partial(run_ort, plain, new_tokens=args.new_tokens)
    rep["rows"] += check.phase("ort_cuda", partial(measure, "ort_cuda", runner, *grid)) or []
    check.phase("prompt_chunks", lambda: rep.__setitem__("prompt_chunks", prompt_costs(plain, vocab)))
    check.phase(
        "first_chunks",
        lambda: rep.__setitem__("first_chunks", first_chunks(plain, onnx_path, args.provider, vocab)),
    )

    def auto_slots() -> None:  # sized by the device's free memory (what "auto" serves), then freed
        rep["slots_auto"] = KVEngine(
            make_session(onnx_path, args.provider), None, decode_graphs="off"
        ).slots_why

    check.phase("slots_auto", auto_slots)

    def graph_engine() -> KVEngine:
        session = make_session(onnx_path, args.provider, cuda_graphs=cuda)
        return KVEngine(session, slots=slots, decode_graphs="on")

    graphs = check.phase("graph_session", graph_engine)
    if not isinstance(graphs, KVEngine):
        return
    check.phase("capture", lambda: rep.__setitem__("graphs", capture_graphs(graphs, vocab)))
    rep["warm_up_s"]["graphs"] = graphs.warm_up()
    runner = partial(run_ort, graphs, new_tokens=args.new_tokens)
    rep["rows"] += check.phase("ort_cuda_graphs", partial(measure, "ort_cuda_graphs", runner, *grid)) or []
    check.phase("churn", lambda: rep.__setitem__("churn", churn_parity(graphs, plain, vocab)))
