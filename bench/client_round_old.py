"""The client before the rounds rewrite (df53aa5: bot/triton_client.py, bot/step_gate.py,
bot/generate.py, bot/sampling.py), timed as bench/client_round.py times today's: a worker that
bench/client_round.py starts in that commit's checkout (the working directory, PYTHONPATH), with
bench/canned.py's path as its argument. Its `_send_round` answers at once: the request's arrays
are built as that commit built them, each row gets its answer as it did, and the tensors'
serialization, the HTTP call and the parsing are left out (mode "codec": only the HTTP call).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
# This folder is not the old checkout's bench/: nothing is imported from it by name.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]


def load_canned(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_canned", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def instant(canned: ModuleType, slots: int, codec: bool) -> Any:
    """That commit's TritonClient with an instant `_send_round` (or, with `codec`, an instant HTTP call)."""
    from bot.triton_client import ModelInfo, StepOutput, TritonClient
    from contract import triton_io as io

    class InstantOld(TritonClient):
        def __init__(self) -> None:
            super().__init__("127.0.0.1:9", timeout=60)
            self.canned, self.fixed = canned.Canned(2 * slots), ModelInfo(4096, slots)
            self.stamps: list[float] = []
            self.extra_s = 0.0  # the fake's own work where the real one has none (subtracted)
            self._flags = np.zeros(0, np.int32)

        async def model_info(self) -> Any:
            return self.fixed

        async def _send_round(self, rows: list) -> list:
            t = time.perf_counter()
            flags = np.array(
                [(io.ROW_END if r.end else 0) | (io.ROW_FULL if r.full else 0) for r in rows], np.int32
            )
            if canned.steps_in(flags):
                self.stamps.append(t)
            if codec:
                self._flags = flags
                self.extra_s += time.perf_counter() - t
                return await super()._send_round(rows)
            # The request's arrays as _send_round built them (their InferInputs left out).
            np.array([[r.sequence_id for r in rows]], np.uint64)
            np.array([[r.position for r in rows]], np.int64)
            np.array([[r.ids.size for r in rows]], np.int32)
            np.concatenate([r.ids for r in rows])[None]
            a = self.canned.arrays(flags)
            ids, logits, full = a[io.CANDIDATE_IDS], a[io.CANDIDATE_LOGITS], iter(a[io.LOGITS])
            status = a[io.STATUS]
            answers = []
            for i, row in enumerate(rows):  # each row's answer, as _send_round gave them out
                if status[i] == io.ROW_OK:
                    answers.append(StepOutput(ids[i], logits[i], next(full) if row.full else None, "1"))
            return answers

        async def _call(self, coro_fn: Any) -> Any:  # the HTTP call: answered at once
            data, header_length = self.canned.body(self._flags)
            return 200, str(header_length), data

    return InstantOld()


async def measure(canned: ModuleType, rows: int, tokens: int, prompt: int, codec: bool) -> dict:
    from bot.generate import generate
    from bot.sampling import SamplingConfig

    client = instant(canned, rows, codec)
    cfg, batch = SamplingConfig(max_new_tokens=tokens, stop_ids=()), canned.prompts(rows, prompt)
    shared = np.random.default_rng(0)
    await asyncio.gather(*(generate(client, p, cfg, shared) for p in batch))  # warm-up
    client.stamps, client.extra_s, released = [], 0.0, client.gate.released
    t0 = time.perf_counter()
    gens = await asyncio.gather(*(generate(client, p, cfg, shared) for p in batch))
    wall = time.perf_counter() - t0 - client.extra_s
    assert all(len(g.tokens) == tokens for g in gens), "a generation ended early"
    out: dict = canned.summary(
        rows, wall, client.stamps, client.gate.released - released, sum(g.full_rows for g in gens)
    )
    await client.close()
    return out


def main() -> int:
    canned = load_canned(sys.argv[1])
    for request in sys.stdin:
        print(json.dumps(asyncio.run(measure(canned, **json.loads(request)))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
