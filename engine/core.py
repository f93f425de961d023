"""The server model's core: GPT-2 steps on onnxruntime over KV-cache slots the engine owns.

Pure numpy + onnxruntime (no Triton imports), so it runs and is tested in-process as well as
inside Triton's python backend (engine/model.py). The graph is export/serving_graph.py's. The
engine ties these units together: the slot table (engine/slots.py: which sequence holds which slot,
positions, eviction), the plan (engine/plan.py: rounds and calls), the runner (engine/runner.py:
sessions, KV buffers, ordinary onnxruntime calls), the decode graphs (engine/graphs.py), the first
runs checked against ordinary calls (engine/checks.py), the slot count (engine/memory.py) and the
step types (engine/steps.py).

A sequence holds one slot from its first step (position 0) to END. Rows are right-padded chunks
with their own lengths, so prompts and single tokens, at any context lengths, share a call
without padding the cache; decode rows (one token after a context) run on the decode graph of
the smallest bucket that covers their slots, where one is enabled.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from contract import triton_io as io
from engine import checks, memory
from engine.graphs import DecodeGraph, buckets
from engine.plan import Row, chunk_width, plan_calls, rounds
from engine.runner import CallResult, KVBuffers, Runner, Shape, make_session
from engine.slots import EVICT_AFTER_S, SlotTable
from engine.steps import Output, Step, StepError

__all__ = ["KVEngine", "Output", "Step", "StepError", "Usage", "make_session"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Usage:
    """What the engine holds and did, for the model's metrics (the probe's slot not counted)."""

    sequences: int  # sequences holding a slot
    tokens: int  # tokens of context in those slots
    free_slots: int
    active_rows: int  # rows bound to onnxruntime calls since load that carried tokens
    idle_rows: int  # rows bound since load without tokens (compute spent on nothing)
    graph_steps: int  # decode calls run on a decode graph since load


class KVEngine:
    """Runs steps of many sequences, each holding a KV-cache slot from position 0 to END."""

    def __init__(
        self,
        session: ort.InferenceSession,
        slots: int | None = io.DEFAULT_KV_SLOTS,
        slot_length: int | None = None,
        idle_seconds: float = io.DEFAULT_IDLE_SECONDS,
        device_id: int = 0,
        decode_graphs: str = "auto",
        evict_after_s: float = EVICT_AFTER_S,
        prompt_batching: str = "auto",
    ):
        """`slots`: a count, or None to size them at load (engine/memory.py); `prompt_batching`:
        whether the first chunks of several prompts share a call in a graph without ragged chunks
        ("auto": with the CPU provider, where it was checked; see engine/plan.py's `together`)."""
        for name, value in (("decode_graphs", decode_graphs), ("prompt_batching", prompt_batching)):
            if value not in ("auto", "on", "off"):
                raise ValueError(f"{name} must be 'auto', 'on' or 'off', not {value!r}")
        self.session = session
        self.shape = shape = Shape.of(session)
        self.vocab_size, self.layers, self.ragged = shape.vocab, shape.layers, shape.ragged
        self.slot_length = min(slot_length or shape.max_positions, shape.max_positions)
        self.device = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        with_graphs = decode_graphs == "on" or (decode_graphs == "auto" and self.device == "cuda")
        per_slot = memory.slot_bytes(shape, self.slot_length)
        graph_count = len(buckets(memory.SLOTS_CAP)) if with_graphs else 0
        slots, self.slots_why = memory.choose_slots(slots, self.device, device_id, per_slot, graph_count)
        log.info("%s", self.slots_why)
        self.table = SlotTable(slots, self.slot_length, idle_seconds, evict_after_s)
        self.kv = KVBuffers(shape, self.table.total, self.slot_length, self.device, device_id)
        self.runner = Runner(session, shape, self.kv, self.slot_length)
        self.graphs: dict[int, DecodeGraph] = {}
        if with_graphs:
            options = session.get_provider_options().get("CUDAExecutionProvider", {})
            capture = options.get("enable_cuda_graph") == "1"
            for n, bucket in enumerate(buckets(slots)):
                self.graphs[bucket] = DecodeGraph(self.runner, bucket, n + 1 if capture else None)
        self.first_chunks = prompt_batching == "on" or (prompt_batching == "auto" and self.device == "cpu")
        self.first_chunks_checked = False  # its first call was compared with each row alone
        self.tolerance = checks.tolerance(shape.dtype)
        self.lock = threading.Lock()
        self.calls = self.rows_bound = self.rows_idle = self.graph_steps = 0
        log.info(
            "KV cache: %d slots x %d positions, %.2f GB %s on %s; decode graphs: %s; prompt batching: %s",
            slots,
            self.slot_length,
            self.kv.nbytes / 1e9,
            np.dtype(shape.dtype).name,
            self.device,
            ",".join(map(str, self.graphs)) or "off",
            self.prompt_batching,
        )

    @property
    def slots(self) -> int:
        return self.table.slots

    @property
    def prompt_batching(self) -> str:
        """Which prompt chunks of several sequences share a call, in words."""
        if self.ragged:
            return "any (ragged chunks)"
        return "first chunks" if self.first_chunks else "off (each chunk alone)"

    def evict_idle(self, now: float | None = None) -> int:
        """Free slots unused for idle_seconds (abandoned sequences); returns how many."""
        with self.lock:
            freed = self.table.evict_idle(now)
        if freed:
            log.info("freed %d idle sequence slot(s)", freed)
        return freed

    def usage(self) -> Usage:
        with self.lock:
            held = self.table.held()
            return Usage(
                len(held),
                sum(s.length for s in held),
                self.table.free_slots(),
                self.rows_bound - self.rows_idle,
                self.rows_idle,
                self.graph_steps,
            )

    def warm_up(self) -> float:
        """Run every shape this engine will meet once, at load, so that no user waits for a first
        run (onnxruntime's CUDA provider takes ~0.05-0.5 s for a shape it has not run): the chunk
        widths at a prompt's start and after it (on the probe's slot), and each decode graph (on
        the free slots, captured). The seconds it took."""
        t0 = time.monotonic()
        probe, width = io.PROBE_SEQUENCE_ID, 16
        while not self.ragged and 2 * width <= self.slot_length:
            self.step([Step(probe, np.zeros(width, np.int64), 0)])
            self.step([Step(probe, np.zeros(width, np.int64), width, end=True)])
            width *= 2
        for bucket in list(self.graphs):
            dummies = [probe + 1 + i for i in range(bucket)]
            self.step([Step(k, np.zeros(1, np.int64), 0) for k in dummies])
            self.step([Step(k, np.zeros(1, np.int64), 1, end=True) for k in dummies])
        return time.monotonic() - t0

    # ---- the step ---------------------------------------------------------------------------
    def step(self, steps: list[Step]) -> Output:
        """Each step's status and candidates (and the whole row where it asked).

        Steps run in rounds in which a sequence appears at most once; each step is checked against
        the state its own round finds, so END and a later step of the same sequence in one batch
        behave as if they had come in two batches."""
        out = Output.empty(len(steps), self.shape.candidates)
        full: dict[int, np.ndarray] = {}
        with self.lock:
            for batch in rounds([s.sequence_id for s in steps]):
                self._round(steps, batch, out, full)
        if full:
            out.full_rows = sorted(full)
            out.full = np.stack([full[i] for i in out.full_rows])
        return out

    def logits(self, steps: list[Step]) -> list[np.ndarray | StepError]:
        """The whole row of logits [vocab] after each step (empty for a bare END), or its error
        (checks and tests)."""
        for s in steps:
            s.full = True
        out = self.step(steps)
        empty = np.zeros(0, np.float32)
        return [out.error(i) or (out.logits(i) if i in out.full_rows else empty) for i in range(len(steps))]

    def _check(self, step: Step) -> None:
        ids = step.ids
        if ids.ndim != 1:
            raise StepError(f"a row's token ids must be a list, got shape {ids.shape}")
        if ids.size == 1 and 0 <= ids[0] < self.vocab_size:  # a decode step: nothing more to look at
            return
        if ids.size == 0 and not step.end:
            raise StepError(f"{io.INPUT_IDS}: the row has no tokens: send at least one (none only with END)")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise StepError(
                f"token ids must be in [0, {self.vocab_size}), got {int(ids.min())}..{int(ids.max())}"
            )

    def _round(self, steps: list[Step], batch: list[int], out: Output, full: dict[int, np.ndarray]) -> None:
        busy = {steps[i].sequence_id for i in batch}
        rows: list[Row] = []
        for i in batch:
            step = steps[i]
            try:
                self._check(step)
                if step.ids.size == 0:  # a bare END
                    self.table.free(step.sequence_id)
                    continue
                seq = self.table.prepare(step.sequence_id, step.position, step.ids.size, busy)
            except StepError as exc:
                out.fail(i, exc)
                if step.end:
                    self.table.free(step.sequence_id)
                continue
            pad = (
                0 if self.ragged else chunk_width(step.ids.size, seq.length, self.slot_length) - step.ids.size
            )
            rows.append(Row(i, seq.slot, seq.length, step.ids, step.full, pad))
        lengths = self.table.lengths()
        failed: set[int] = set()
        for call, graph in self._calls(rows, lengths):
            try:
                result = self._run(call, graph, lengths)
            except Exception as exc:  # an ORT failure: these sequences' caches may be half-written
                log.error("ORT call over slots %d..%d failed: %r", call[0].slot, call[-1].slot, exc)
                for r in call:
                    failed.add(r.index)
                    out.fail(
                        r.index,
                        StepError(
                            f"inference failed ({exc}); its cache was dropped: start it again at 0",
                            io.ROW_FAILED,
                        ),
                    )
                continue
            graph = graph if graph is not None and graph.bucket in self.graphs else None  # None: turned off
            self._take(call, 0 if graph else call[0].slot, result, out, full)
            bound = graph.bucket if graph else call[-1].slot + 1 - call[0].slot
            self.calls += 1
            self.graph_steps += graph is not None
            self.rows_bound += bound
            self.rows_idle += bound - len(call)
            for r in call:  # later calls of this round bind these slots as idle rows at their new length
                lengths[r.slot] = r.past + r.ids.size
        now = time.monotonic()
        for r in rows:
            sequence_id = steps[r.index].sequence_id
            if r.index in failed or steps[r.index].end:
                self.table.free(sequence_id)
            else:
                seq = self.table[sequence_id]
                seq.length, seq.last_used = r.past + r.ids.size, now

    def _calls(self, rows: list[Row], lengths: dict[int, int]) -> list[tuple[list[Row], DecodeGraph | None]]:
        """The round's calls: its decode rows on a decode graph first (where one covers their slots
        and fits), then the rest planned into ordinary calls."""
        decode = sorted(
            (r for r in rows if r.ids.size == 1 and r.past > 0 and not r.full), key=lambda r: r.slot
        )
        graph = None
        if decode and self.graphs:
            top = max(r.slot for r in decode) + 1
            graph = self.graphs[min(b for b in self.graphs if b >= top)]
            if not graph.fits(lengths):
                graph = None
        if graph is None:
            return [
                (call, None)
                for call in plan_calls(rows, lengths, self.slot_length, self.ragged, self.first_chunks)
            ]
        on_graph = {r.index for r in decode}
        rest = [r for r in rows if r.index not in on_graph]
        return [
            (decode, graph),
            *(
                (call, None)
                for call in plan_calls(rest, lengths, self.slot_length, self.ragged, self.first_chunks)
            ),
        ]

    def _run(self, call: list[Row], graph: DecodeGraph | None, lengths: dict[int, int]) -> CallResult:
        """The call on its decode graph, or an ordinary call (`call` sorted by slot); the first run
        of a decode graph and of several first chunks together are checked (engine/checks.py)."""
        if graph is not None:
            return checks.graph_run(self, call, graph, lengths)
        if len(call) > 1 and not self.ragged and call[0].width > 1 and not self.first_chunks_checked:
            return checks.first_chunks_run(self, call, lengths)
        return self.runner.run(call, lengths)

    @staticmethod
    def _take(call: list[Row], lo: int, result: CallResult, out: Output, full: dict[int, np.ndarray]) -> None:
        index, b = [r.index for r in call], [r.slot - lo for r in call]
        out.top_ids[index] = result.top_ids[b]
        out.top_logits[index] = result.top_logits[b]
        if result.logits is not None:
            full.update((r.index, result.logits[r.slot - lo]) for r in call if r.full)
