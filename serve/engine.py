"""The server model's core: GPT-2 steps on onnxruntime over KV-cache slots the engine owns.

Pure numpy + onnxruntime (no Triton imports), so it runs and is tested in-process as well as
inside Triton's python backend (serve/model.py). The graph is export/serving_graph.py's.

Each layer's keys and values live in one buffer `[slots, heads, slot_length, head_dim]` on the
execution device (CPU memory, or CUDA memory with the CUDA provider), allocated once. A sequence
holds one slot from START to END. A call binds a contiguous range of slots by pointer as both the
`past` input and the `present` output, so GroupQueryAttention appends the new keys and values in
place: nothing is copied or concatenated, whatever the context length, and on a GPU only ids,
lengths and `[rows, vocab]` logits cross PCIe. Rows are right-padded chunks with their own
lengths, so prompts and single tokens, at any context lengths, share a call without padding the
cache. Slots in the bound range that have no step this call are idle rows (`query_seqlens` 0):
they cost compute, so a batch is split into calls by a small cost model (`_plan`).
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from contract import triton_io as io

log = logging.getLogger(__name__)

_ORT_DTYPES: dict[str, type[np.generic]] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# A call's fixed cost in tokens of compute: merging two runs of rows into one call pays off when
# the idle or padded rows that merging adds cost less than this. Measured on ruDialoGPT-small
# with 2 CPU threads: a decode call of 1 row costs as much as ~6.5 rows more (weights are read
# once per call, whatever the rows); noisy, so rounded down.
CALL_OVERHEAD_TOKENS = 6


class StepError(ValueError):
    """A request the model refuses; returned to that request alone, the server keeps serving.

    `kind` says whose move it is, and model.py turns it into Triton's error code (HTTP status)."""

    INVALID = "invalid"  # the request itself is wrong (shape, ids, context too long): 400
    LOST = "lost"  # no cache for the sequence (never started, freed, dropped): START again; 400
    BUSY = "busy"  # no KV slot free right now: try again later; 503
    FAILED = "failed"  # onnxruntime failed; the call's caches were dropped: START again; 500

    def __init__(self, message: str, kind: str = INVALID):
        super().__init__(message)
        self.kind = kind


@dataclass
class Step:
    """One request: a sequence's new token ids and its START/END flags."""

    sequence_id: int
    ids: np.ndarray  # int64, shape [n]
    start: bool = False
    end: bool = False


@dataclass(eq=False)
class _Seq:
    slot: int
    length: int = 0  # tokens of context held in the slot (the next position id)
    last_used: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Usage:
    """What the engine holds, for the model's metrics (the liveness probe's slot not counted)."""

    sequences: int  # sequences holding a slot
    tokens: int  # tokens of context in those slots
    free_slots: int
    active_rows: int  # rows bound to onnxruntime calls since load that carried tokens
    idle_rows: int  # rows bound since load without tokens (compute spent on nothing)


@dataclass
class _Row:
    index: int  # the step's index in the batch
    seq: _Seq
    ids: np.ndarray


def make_session(
    onnx_path: str, provider: str = "cpu", threads: int = 0, device_id: int = 0
) -> ort.InferenceSession:
    """An ORT session on the CPU or CUDA; asking for CUDA where it is missing is an error."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Idle ORT threads would otherwise spin between steps and take the CPU from Triton's HTTP
    # handling and from the client when they share a machine.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if provider == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(
                "execution_provider=cuda but this onnxruntime has no CUDA provider: "
                "install onnxruntime-gpu, or set execution_provider to cpu"
            )
        providers = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    elif provider == "cpu":
        providers = ["CPUExecutionProvider"]
    else:
        raise ValueError(f"execution_provider must be 'cpu' or 'cuda', not {provider!r}")
    return ort.InferenceSession(onnx_path, opts, providers=providers)


def rounds(steps: list[Step], pending: list[int]) -> Iterator[list[int]]:
    """The indices `pending` of `steps` in rounds in which a sequence appears at most once, each
    step in the first round after its sequence's previous step."""
    while pending:
        seen: set[int] = set()
        batch: list[int] = []
        later: list[int] = []
        for i in pending:
            (later if steps[i].sequence_id in seen else batch).append(i)
            seen.add(steps[i].sequence_id)
        yield batch
        pending = later


class KVBuffers:
    """Every layer's key and value buffer `[slots, heads, slot_length, head_dim]` on one device."""

    def __init__(
        self,
        names: list[tuple[str, str]],
        slots: int,
        heads: int,
        slot_length: int,
        head_dim: int,
        dtype: type[np.generic],
        device: str = "cpu",
        device_id: int = 0,
    ):
        self.names, self.device, self.device_id, self.dtype = names, device, device_id, dtype
        self.row_shape = [heads, slot_length, head_dim]
        self.row_bytes = heads * slot_length * head_dim * np.dtype(dtype).itemsize
        self.values = [
            ort.OrtValue.ortvalue_from_shape_and_type([slots, *self.row_shape], dtype, device, device_id)
            for _ in names
        ]
        self.nbytes = self.row_bytes * slots * len(names)

    def bind(self, binding: ort.IOBinding, lo: int, hi: int) -> list[int]:
        """Bind slots [lo, hi) of every buffer as both past input and present output; their addresses."""
        shape, ptrs = [hi - lo, *self.row_shape], []
        for (past, present), value in zip(self.names, self.values, strict=True):
            ptr = value.data_ptr() + lo * self.row_bytes
            binding.bind_input(past, self.device, self.device_id, self.dtype, shape, ptr)
            binding.bind_output(present, self.device, self.device_id, self.dtype, shape, ptr)
            ptrs.append(ptr)
        return ptrs

    def slot_numpy(self, k: int, slot: int) -> np.ndarray:
        """A host copy of buffer `k`'s slot (tests and debugging)."""
        return np.asarray(self.values[k].numpy()[slot])


class KVEngine:
    """Runs steps of many sequences, each holding a KV-cache slot from START to END."""

    def __init__(
        self,
        session: ort.InferenceSession,
        slots: int = io.DEFAULT_KV_SLOTS,
        slot_length: int | None = None,
        idle_seconds: float = io.DEFAULT_IDLE_SECONDS,
        device_id: int = 0,
    ):
        self.session = session
        inputs = {i.name: i for i in session.get_inputs()}
        if io.ONNX_QUERY_SEQLENS not in inputs:
            raise ValueError(
                "this ONNX model is not a serving graph (no query_seqlens input): "
                "re-export it with `python -m export`"
            )
        self.layers = sum(1 for name in inputs if name.startswith("past_key."))
        past0 = inputs[io.serving_past(0, "key")]
        self.heads, self.head_dim = int(past0.shape[1]), int(past0.shape[3])
        self.dtype = _ORT_DTYPES[past0.type]
        self.vocab_size = int(session.get_outputs()[0].shape[-1])
        meta = session.get_modelmeta().custom_metadata_map
        self.max_positions = int(meta[io.PARAM_MAX_POSITIONS])
        self.slot_length = min(slot_length or self.max_positions, self.max_positions)
        self.ragged = meta.get(io.META_RAGGED_CHUNKS, "1") == "1"  # see export/serving_graph.build
        self.slots = slots
        self.idle_seconds = idle_seconds
        on_cuda = session.get_providers()[0] == "CUDAExecutionProvider"
        self.device = "cuda" if on_cuda else "cpu"
        names = [
            (io.serving_past(i, k), io.serving_present(i, k))
            for i in range(self.layers)
            for k in ("key", "value")
        ]
        # One more slot than asked for, reserved for the liveness probe (io.PROBE_SEQUENCE_ID), so a
        # probe never waits for a slot or takes one from a generation when all are held.
        self.kv = KVBuffers(
            names, slots + 1, self.heads, self.slot_length, self.head_dim, self.dtype, self.device, device_id
        )
        self.seqs: dict[int, _Seq] = {}
        self._free = list(range(slots))  # a heap: the lowest free slot first keeps live slots dense
        self.lock = threading.Lock()
        self.calls = self.rows_bound = self.rows_idle = 0  # counters: ORT calls, rows bound, idle rows
        log.info(
            "KV cache: %d slots x %d positions, %.2f GB %s on %s",
            slots,
            self.slot_length,
            self.kv.nbytes / 1e9,
            np.dtype(self.dtype).name,
            self.device,
        )

    # ---- bookkeeping ----------------------------------------------------------------------
    def _drop(self, sequence_id: int) -> None:
        seq = self.seqs.pop(sequence_id, None)
        if seq is not None and seq.slot < self.slots:
            heapq.heappush(self._free, seq.slot)

    def _allocate(self, sequence_id: int, busy: set[int]) -> _Seq:
        if sequence_id == io.PROBE_SEQUENCE_ID:
            seq = self.seqs[sequence_id] = _Seq(self.slots)
            return seq
        if not self._free:  # every slot held: free the least recently used one not in this batch
            idle = [s for s in self.seqs if s not in busy and s != io.PROBE_SEQUENCE_ID]
            if not idle:
                raise StepError(
                    f"all {self.slots} KV slots are in use by this batch: raise kv_slots "
                    "(python -m export --kv-slots) or lower max_batch_size",
                    StepError.BUSY,
                )
            victim = min(idle, key=lambda s: self.seqs[s].last_used)
            log.warning("all %d KV slots in use: freeing least recently used sequence %d", self.slots, victim)
            self._drop(victim)
        seq = self.seqs[sequence_id] = _Seq(heapq.heappop(self._free))
        return seq

    def evict_idle(self, now: float | None = None) -> int:
        """Free slots unused for idle_seconds (abandoned sequences); returns how many."""
        now = time.monotonic() if now is None else now
        with self.lock:
            stale = [s for s, c in self.seqs.items() if now - c.last_used > self.idle_seconds]
            for s in stale:
                self._drop(s)
        if stale:
            log.info("freed %d idle sequence slot(s)", len(stale))
        return len(stale)

    def usage(self) -> Usage:
        with self.lock:
            held = [s for k, s in self.seqs.items() if k != io.PROBE_SEQUENCE_ID]
            return Usage(
                len(held),
                sum(s.length for s in held),
                len(self._free),
                self.rows_bound - self.rows_idle,
                self.rows_idle,
            )

    def _check(self, step: Step) -> None:
        ids = step.ids
        if ids.ndim != 1:
            raise StepError(f"{io.INPUT_IDS} must have shape [1, n], got a batch row of shape {ids.shape}")
        if ids.size == 0 and not step.end:
            raise StepError(f"{io.INPUT_IDS} is empty: send at least one token id (empty only with END)")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise StepError(
                f"token ids must be in [0, {self.vocab_size}), got {int(ids.min())}..{int(ids.max())}"
            )
        if not step.start and step.sequence_id not in self.seqs:
            raise StepError(
                f"unknown sequence {step.sequence_id}: begin it with the START flag "
                f"(slots idle for {self.idle_seconds:.0f} s are freed)",
                StepError.LOST,
            )
        past = 0 if step.start else self.seqs[step.sequence_id].length
        if past + ids.size > self.slot_length:
            raise StepError(
                f"context of {past + ids.size} tokens exceeds the {self.slot_length} positions of "
                "a KV slot: end this sequence and start a shorter one"
            )

    # ---- the step ---------------------------------------------------------------------------
    def step(self, steps: list[Step]) -> list[np.ndarray | StepError]:
        """Logits [1, vocab] after each step (empty [1, 0] for a bare END), or its StepError.

        Steps run in rounds in which a sequence appears at most once; each step is checked against
        the state its own round finds, so END and a later step of the same sequence in one batch
        behave as if they had come in two batches."""
        results: list[np.ndarray | StepError | None] = [None] * len(steps)
        with self.lock:
            for batch in rounds(steps, list(range(len(steps)))):
                self._round(steps, batch, results, {steps[i].sequence_id for i in batch})
        return [r if r is not None else StepError("no result (engine bug)") for r in results]

    def _round(
        self,
        steps: list[Step],
        batch: list[int],
        results: list[np.ndarray | StepError | None],
        busy: set[int],
    ) -> None:
        rows: list[_Row] = []
        for i in batch:
            step = steps[i]
            try:
                if step.start:
                    self._drop(step.sequence_id)
                self._check(step)
                if step.ids.size == 0:  # a bare END
                    self._drop(step.sequence_id)
                    results[i] = np.zeros((1, 0), np.float32)
                    continue
                seq = self._allocate(step.sequence_id, busy) if step.start else self.seqs[step.sequence_id]
            except StepError as exc:
                results[i] = exc
                continue
            rows.append(_Row(i, seq, step.ids))
        for call in self._plan(rows):
            self._run(call, results)
        now = time.monotonic()
        for row in rows:
            if isinstance(results[row.index], np.ndarray):
                row.seq.length += row.ids.size
                row.seq.last_used = now
            if steps[row.index].end or isinstance(results[row.index], StepError):
                self._drop(steps[row.index].sequence_id)

    def _plan(self, rows: list[_Row]) -> list[list[_Row]]:
        """Rows split into calls over contiguous slot ranges, merged while that is cheaper.

        A call costs CALL_OVERHEAD_TOKENS plus (slots bound) × (widest chunk) tokens: idle slots
        inside the range and padding both count. Every bound slot must have room for the chunk.
        A graph without ragged chunks runs each multi-token chunk in a call of its own."""
        calls: list[list[_Row]] = []
        lengths = {s.slot: s.length for s in self.seqs.values()}
        for row in sorted(rows, key=lambda r: r.seq.slot):
            alone = not self.ragged and (row.ids.size > 1 or (calls and calls[-1][0].ids.size > 1))
            if calls and not alone:
                current = calls[-1]
                lo, width = current[0].seq.slot, max(r.ids.size for r in current)
                hi = current[-1].seq.slot + 1
                merged_width = max(width, row.ids.size)
                merged = (row.seq.slot + 1 - lo) * merged_width
                apart = (hi - lo) * width + CALL_OVERHEAD_TOKENS + row.ids.size
                fits = (
                    all(
                        lengths.get(s, 1) + merged_width <= self.slot_length
                        for s in range(lo, row.seq.slot + 1)
                        if s != row.seq.slot
                    )
                    and row.seq.length + merged_width <= self.slot_length
                )
                if merged <= apart and fits:
                    current.append(row)
                    continue
            calls.append([row])
        return calls

    def _total(self, seqlens_k: np.ndarray) -> int:
        """GQA's total_sequence_length: with ragged chunks an upper bound (the slot length), else
        the call's longest context, as the kernel uses it to tell a first prompt from later steps."""
        return self.slot_length if self.ragged else int(seqlens_k.max()) + 1

    def _run(self, call: list[_Row], results: list[np.ndarray | StepError | None]) -> None:
        lo, hi = call[0].seq.slot, call[-1].seq.slot + 1
        width, rows = max(r.ids.size for r in call), hi - lo
        ids = np.zeros((rows, width), np.int64)
        pos = np.zeros((rows, width), np.int64)
        seqlens_k = np.zeros(rows, np.int32)
        query = np.zeros(rows, np.int32)
        for seq in self.seqs.values():  # idle rows keep their length (a free slot counts as 1)
            if lo <= seq.slot < hi:
                # Without query_seqlens an idle row takes one filler token at position `length`,
                # past its context, where its next real token will overwrite it.
                seqlens_k[seq.slot - lo] = max(seq.length, 1) - 1 if self.ragged else seq.length
        for r in call:
            b, n, past = r.seq.slot - lo, r.ids.size, r.seq.length
            ids[b, :n] = r.ids
            pos[b] = np.minimum(past + np.arange(width), self.max_positions - 1)
            seqlens_k[b], query[b] = past + n - 1, n
        binding = self.session.io_binding()
        for name, array in (
            (io.ONNX_INPUT_IDS, ids),
            (io.ONNX_POSITION_IDS, pos),
            (io.ONNX_SEQLENS_K, seqlens_k),
            (io.ONNX_TOTAL_SEQUENCE_LENGTH, np.array(self._total(seqlens_k), np.int32)),
            (io.ONNX_QUERY_SEQLENS, query),
        ):
            binding.bind_cpu_input(name, array)
        binding.bind_output(io.ONNX_LOGITS, "cpu")
        ptrs = self.kv.bind(binding, lo, hi)
        try:
            self.session.run_with_iobinding(binding)
            outputs = binding.get_outputs()
            if [v.data_ptr() for v in outputs[1:]] != ptrs:
                raise RuntimeError(
                    "onnxruntime did not write the KV cache in place (present bound to the "
                    "past buffer was reallocated)"
                )
            logits = outputs[0].numpy()
        except Exception as exc:  # an ORT failure: these sequences' caches may be half-written
            log.error("ORT call over slots %d..%d failed: %r", lo, hi - 1, exc)
            for r in call:
                results[r.index] = StepError(
                    f"inference failed ({exc}); the sequence's cache was dropped: begin it again with START",
                    StepError.FAILED,
                )
            return
        self.calls += 1
        self.rows_bound += rows
        self.rows_idle += rows - len(call)
        for r in call:
            results[r.index] = logits[r.seq.slot - lo][None].astype(np.float32, copy=False)
