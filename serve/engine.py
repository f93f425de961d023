"""The server model's core: GPT-2 steps on onnxruntime with each sequence's KV cache kept here.

Pure numpy + onnxruntime (no Triton imports), so it runs and is tested in-process as well as
inside Triton's python backend (serve/model.py). Steps of several sequences run as one batched ORT
call: past caches are left-padded to the longest, new tokens right-padded to the longest, and the
attention mask hides the padding, so each sequence sees exactly its own context.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from contract import triton_io as io

log = logging.getLogger(__name__)

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class StepError(ValueError):
    """A request the model refuses; returned to that request alone, the server keeps serving."""


@dataclass
class Step:
    """One request: a sequence's new token ids and its START/END flags."""

    sequence_id: int
    ids: np.ndarray  # int64, shape [n]
    start: bool = False
    end: bool = False


@dataclass
class _Cache:
    past: list[np.ndarray]  # 2 × layers arrays [1, heads, length, head_dim]: key, value per layer
    length: int
    last_used: float = field(default_factory=time.monotonic)


def make_session(onnx_path: str, provider: str = "cpu", threads: int = 0, device_id: int = 0
                 ) -> ort.InferenceSession:
    """An ORT session on the CPU or CUDA; asking for CUDA where it is missing is an error."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if provider == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("execution_provider=cuda but this onnxruntime has no CUDA provider: "
                               "install onnxruntime-gpu, or set execution_provider to cpu")
        providers = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    elif provider == "cpu":
        providers = ["CPUExecutionProvider"]
    else:
        raise ValueError(f"execution_provider must be 'cpu' or 'cuda', not {provider!r}")
    return ort.InferenceSession(onnx_path, opts, providers=providers)


class KVEngine:
    """Runs steps of many sequences, holding each sequence's KV cache between its steps."""

    def __init__(self, session: ort.InferenceSession, max_positions: int,
                 idle_seconds: float = 60.0, max_sequences: int = 256):
        self.session = session
        inputs = {i.name: i for i in session.get_inputs()}
        self.layers = sum(1 for name in inputs if name.endswith(".key"))
        past0 = inputs[io.onnx_past(0, "key")]
        self.heads, self.head_dim = past0.shape[1], past0.shape[3]
        self.dtype = _ORT_DTYPES[past0.type]
        self.vocab_size = session.get_outputs()[0].shape[-1]
        self.max_positions = max_positions
        self.idle_seconds = idle_seconds
        self.max_sequences = max_sequences
        self.caches: dict[int, _Cache] = {}
        self.lock = threading.Lock()
        self._past_names = [io.onnx_past(i, k) for i in range(self.layers) for k in ("key", "value")]
        self._present_names = [io.onnx_present(i, k) for i in range(self.layers) for k in ("key", "value")]

    # ---- bookkeeping ----------------------------------------------------------------------
    def evict_idle(self, now: float | None = None) -> int:
        """Free caches unused for idle_seconds (abandoned sequences); returns how many."""
        now = time.monotonic() if now is None else now
        with self.lock:
            stale = [s for s, c in self.caches.items() if now - c.last_used > self.idle_seconds]
            for s in stale:
                del self.caches[s]
        if stale:
            log.info("freed %d idle sequence cache(s)", len(stale))
        return len(stale)

    def cached_tokens(self) -> int:
        with self.lock:
            return sum(c.length for c in self.caches.values())

    def _check(self, step: Step) -> None:
        ids = step.ids
        if ids.ndim != 1:
            raise StepError(f"{io.INPUT_IDS} must have shape [1, n], got a batch row of shape {ids.shape}")
        if ids.size == 0 and not step.end:
            raise StepError(f"{io.INPUT_IDS} is empty: send at least one token id (empty only with END)")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise StepError(f"token ids must be in [0, {self.vocab_size}), got {int(ids.min())}..{int(ids.max())}")
        if not step.start and step.sequence_id not in self.caches:
            raise StepError(f"unknown sequence {step.sequence_id}: begin it with the START flag "
                            f"(caches idle for {self.idle_seconds:.0f} s are freed)")
        past = 0 if step.start else self.caches[step.sequence_id].length
        if past + ids.size > self.max_positions:
            raise StepError(f"context of {past + ids.size} tokens exceeds the model's {self.max_positions} "
                            "positions: end this sequence and start a shorter one")

    # ---- the step ---------------------------------------------------------------------------
    def step(self, steps: list[Step]) -> list[np.ndarray | StepError]:
        """Logits [1, vocab] after each step (empty [1, 0] for a bare END), or its StepError."""
        results: list[np.ndarray | StepError | None] = [None] * len(steps)
        runnable: list[int] = []
        with self.lock:
            for i, step in enumerate(steps):
                if step.start:
                    self.caches.pop(step.sequence_id, None)
                try:
                    self._check(step)
                except StepError as exc:
                    results[i] = exc
                    continue
                if step.ids.size == 0:
                    self.caches.pop(step.sequence_id, None)
                    results[i] = np.zeros((1, 0), np.float32)
                else:
                    runnable.append(i)
        while runnable:  # one ORT call per round; a sequence appears at most once per round
            seen, batch, later = set(), [], []
            for i in runnable:
                (later if steps[i].sequence_id in seen else batch).append(i)
                seen.add(steps[i].sequence_id)
            for i, logits in zip(batch, self._run([steps[i] for i in batch])):
                results[i] = logits
            runnable = later
        return results

    def _run(self, steps: list[Step]) -> list[np.ndarray]:
        pasts = [None if s.start else self.caches[s.sequence_id] for s in steps]
        lengths = [0 if c is None else c.length for c in pasts]
        sizes = [s.ids.size for s in steps]
        b, p_max, n_max = len(steps), max(lengths), max(sizes)
        ids = np.zeros((b, n_max), np.int64)
        mask = np.zeros((b, p_max + n_max), np.int64)
        pos = np.zeros((b, n_max), np.int64)
        for r, (s, p, n) in enumerate(zip(steps, lengths, sizes)):
            ids[r, :n] = s.ids
            mask[r, p_max - p:p_max + n] = 1
            pos[r] = np.minimum(p + np.arange(n_max), self.max_positions - 1)
        feed = {io.ONNX_INPUT_IDS: ids, io.ONNX_ATTENTION_MASK: mask, io.ONNX_POSITION_IDS: pos}
        for k, name in enumerate(self._past_names):
            if b == 1 and pasts[0] is not None:
                feed[name] = pasts[0].past[k]
                continue
            arr = np.zeros((b, self.heads, p_max, self.head_dim), self.dtype)
            for r, c in enumerate(pasts):
                if c is not None:
                    arr[r, :, p_max - c.length:] = c.past[k][0]
            feed[name] = arr
        outputs = self.session.run([io.ONNX_LOGITS, *self._present_names], feed)
        logits, presents = outputs[0], outputs[1:]
        now = time.monotonic()
        with self.lock:
            for r, (s, p, n) in enumerate(zip(steps, lengths, sizes)):
                if s.end:
                    self.caches.pop(s.sequence_id, None)
                    continue
                if b == 1:
                    past = presents
                else:
                    past = [np.ascontiguousarray(x[r:r + 1, :, p_max - p:p_max + n]) for x in presents]
                self.caches[s.sequence_id] = _Cache(past, p + n, now)
            over = len(self.caches) - self.max_sequences
            if over > 0:  # least recently used first
                for sid in sorted(self.caches, key=lambda k: self.caches[k].last_used)[:over]:
                    log.warning("cache limit %d reached: freeing sequence %d", self.max_sequences, sid)
                    del self.caches[sid]
        return [logits[r, n - 1:n].astype(np.float32) for r, n in enumerate(sizes)]
