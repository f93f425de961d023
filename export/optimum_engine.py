"""The pre-v2 engine, over optimum's graph: the reference the serving graph is checked against.

Until Engine v2 this was engine/core.py. It now runs optimum's export (`text-generation-with-past`)
for the exporter's reference check and as the "today's engine" baseline of `python -m bench`:
every step feeds the whole past to ORT and keeps the `present` outputs, which concatenate it.

Caches live in *groups*: sequences that were last run together share one batched cache
(`[rows, heads, length, head_dim]` per layer) and an attention mask saying which of its
positions hold real tokens. While the same sequences keep stepping together (the common case:
conversations decoding in lockstep), a step feeds the group's arrays to ORT as they are and keeps
ORT's outputs as the new cache: no copy per step, whatever the context length. A row whose
sequence misses a step gets a masked filler position; a sequence that starts, or a batch that
mixes groups, is gathered once into a new group (left-padded, padding masked).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import onnxruntime as ort

from contract import triton_io as io
from engine.core import Step, StepError
from engine.plan import rounds

log = logging.getLogger(__name__)

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass(eq=False)
class _Group:
    past: list[np.ndarray]  # 2 × layers arrays [rows, heads, length, head_dim]: key, value per layer
    mask: np.ndarray  # [rows, length] int64: 1 where the row holds a real token
    rows: list[int | None]  # sequence id of each row; None: the sequence left


@dataclass(eq=False)
class _Cache:
    group: _Group
    row: int
    length: int  # tokens of context (the next position id)
    last_used: float = field(default_factory=time.monotonic)


class OptimumEngine:
    """Runs steps of many sequences, holding each sequence's KV cache between its steps."""

    def __init__(self, session: ort.InferenceSession, max_positions: int):
        self.session = session
        inputs = {i.name: i for i in session.get_inputs()}
        self.layers = sum(1 for name in inputs if name.endswith(".key"))
        past0 = inputs[io.onnx_past(0, "key")]
        self.heads, self.head_dim = past0.shape[1], past0.shape[3]
        self.dtype = _ORT_DTYPES[past0.type]
        self.vocab_size = session.get_outputs()[0].shape[-1]
        self.max_positions = max_positions
        self.caches: dict[int, _Cache] = {}
        self.lock = threading.Lock()
        self._past_names = [io.onnx_past(i, k) for i in range(self.layers) for k in ("key", "value")]
        self._present_names = [io.onnx_present(i, k) for i in range(self.layers) for k in ("key", "value")]

    # ---- bookkeeping ----------------------------------------------------------------------
    def _drop(self, sequence_id: int) -> None:
        cache = self.caches.pop(sequence_id, None)
        if cache is not None:
            cache.group.rows[cache.row] = None  # the row's memory goes with the group's last member

    def _check(self, step: Step) -> None:
        """The reference runs the exporter's and the bench's own steps: only what they can get wrong."""
        if not _starts(step) and step.sequence_id not in self.caches:
            raise StepError(f"unknown sequence {step.sequence_id}: start it at position 0", io.ROW_LOST)
        past = 0 if _starts(step) else self.caches[step.sequence_id].length
        if step.position not in (None, 0, past):
            raise StepError(f"the reference engine only appends (position {past}), not {step.position}")
        if past + step.ids.size > self.max_positions:
            raise StepError(
                f"context of {past + step.ids.size} tokens exceeds {self.max_positions} positions"
            )

    # ---- the step ---------------------------------------------------------------------------
    def logits(self, steps: list[Step]) -> list[np.ndarray | StepError]:
        """Logits [vocab] after each step (empty for a bare END), or its StepError."""
        results: list[np.ndarray | StepError | None] = [None] * len(steps)
        runnable: list[int] = []
        with self.lock:
            for i, step in enumerate(steps):
                if _starts(step):
                    self._drop(step.sequence_id)
                try:
                    self._check(step)
                except StepError as exc:
                    results[i] = exc
                    continue
                if step.ids.size == 0:
                    self._drop(step.sequence_id)
                    results[i] = np.zeros(0, np.float32)
                else:
                    runnable.append(i)
            for batch in rounds([steps[i].sequence_id for i in runnable]):  # one ORT call per round
                for k, logits in zip(batch, self._run([steps[runnable[k]] for k in batch]), strict=True):
                    results[runnable[k]] = logits
        return cast(list[np.ndarray | StepError], results)  # every step has its result by now

    def _in_place_group(self, steps: list[Step]) -> _Group | None:
        """The group these steps can run in as it is, or None when they must be gathered."""
        if any(_starts(s) for s in steps) or len({s.ids.size for s in steps}) != 1:
            return None
        groups = {id(self.caches[s.sequence_id].group): self.caches[s.sequence_id].group for s in steps}
        if len(groups) != 1:
            return None
        group = next(iter(groups.values()))
        fits = group.mask.shape[1] + steps[0].ids.size <= self.max_positions
        return group if fits and 2 * len(steps) >= len(group.rows) else None  # rows mostly busy

    def _gather(self, steps: list[Step]) -> _Group:
        """A new group holding exactly these sequences' caches, left-padded and masked."""
        parts = []
        for s in steps:
            cache = None if _starts(s) else self.caches[s.sequence_id]
            keep = None if cache is None else cache.group.mask[cache.row].astype(bool)
            parts.append((cache, keep))
        width = max(0 if c is None else c.length for c, _ in parts)
        past = [
            np.zeros((len(steps), self.heads, width, self.head_dim), self.dtype) for _ in self._past_names
        ]
        mask = np.zeros((len(steps), width), np.int64)
        for r, (cache, keep) in enumerate(parts):
            if cache is not None:
                for k, arr in enumerate(past):
                    arr[r, :, width - cache.length :] = cache.group.past[k][cache.row][:, keep]
                mask[r, width - cache.length :] = 1
                cache.group.rows[cache.row] = None
        return _Group(past, mask, [s.sequence_id for s in steps])

    def _run(self, steps: list[Step]) -> list[np.ndarray]:
        group = self._in_place_group(steps) or self._gather(steps)
        rows = len(group.rows)
        row_of = {sid: r for r, sid in enumerate(group.rows) if sid is not None}
        width = max(s.ids.size for s in steps)
        ids = np.zeros((rows, width), np.int64)
        new_mask = np.zeros((rows, width), np.int64)
        pos = np.zeros((rows, width), np.int64)
        for s in steps:
            r, n = row_of[s.sequence_id], s.ids.size
            start = 0 if _starts(s) else self.caches[s.sequence_id].length
            ids[r, :n] = s.ids
            new_mask[r, :n] = 1
            pos[r] = np.minimum(start + np.arange(width), self.max_positions - 1)
        mask = np.concatenate([group.mask, new_mask], axis=1)
        feed = {io.ONNX_INPUT_IDS: ids, io.ONNX_ATTENTION_MASK: mask, io.ONNX_POSITION_IDS: pos}
        feed.update(zip(self._past_names, group.past, strict=True))
        outputs = self.session.run([io.ONNX_LOGITS, *self._present_names], feed)
        group.past, group.mask = outputs[1:], mask
        now, results = time.monotonic(), []
        for s in steps:
            r, n = row_of[s.sequence_id], s.ids.size
            length = n + (0 if _starts(s) else self.caches[s.sequence_id].length)
            if s.end:
                self.caches.pop(s.sequence_id, None)
                group.rows[r] = None
            else:
                self.caches[s.sequence_id] = _Cache(group, r, length, now)
            results.append(outputs[0][r, n - 1].astype(np.float32))
        return results


def _starts(step: Step) -> bool:
    return step.position == 0
