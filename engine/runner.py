"""onnxruntime calls over the engine's KV slots: ordinary calls, and decode steps on fixed bindings.

The KV buffers (one per layer and kind, `[slots, heads, slot_length, head_dim]`) live on the
execution device; a call binds a contiguous range of slots by pointer as both the `past` input and
the `present` output, so GroupQueryAttention appends in place. Only the candidates (`[rows, K]`)
come back to the host; the whole `[rows, vocab]` logits stay in a device scratch buffer unless a
row asks for them.

Decode steps can also run on fixed bindings, replayed as CUDA graphs: engine/graphs.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from contract import triton_io as io
from engine.plan import Row

log = logging.getLogger(__name__)

ORT_DTYPES: dict[str, type[np.generic]] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
GRAPH_SKIP = "-1"  # gpu_graph_id of a run that is neither captured nor replayed


def make_session(
    onnx_path: str, provider: str = "cpu", threads: int = 0, device_id: int = 0, cuda_graphs: bool = False
) -> ort.InferenceSession:
    """An ORT session on the CPU or CUDA; asking for CUDA where it is missing is an error.

    `cuda_graphs` lets the session capture and replay CUDA graphs (decode steps, see DecodeGraph);
    runs that pass gpu_graph_id -1 stay ordinary."""
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
        options = {"device_id": str(device_id), "enable_cuda_graph": "1" if cuda_graphs else "0"}
        providers: list[str | tuple[str, dict[str, str]]] = [
            ("CUDAExecutionProvider", options),
            "CPUExecutionProvider",
        ]
    elif provider == "cpu":
        providers = ["CPUExecutionProvider"]
    else:
        raise ValueError(f"execution_provider must be 'cpu' or 'cuda', not {provider!r}")
    session = ort.InferenceSession(onnx_path, opts, providers=providers)
    if provider == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(
            f"onnxruntime could not load its CUDA provider (session runs on {session.get_providers()}): "
            "check the CUDA 13 and cuDNN 9 libraries (docker/triton.Dockerfile's check)"
        )
    return session


@dataclass(frozen=True)
class Shape:
    """What the engine and its calls must know of the served graph (from its inputs and metadata)."""

    layers: int
    heads: int
    head_dim: int
    vocab: int
    max_positions: int
    candidates: int  # K
    dtype: type[np.generic]
    ragged: bool  # rows of one call may carry chunks of different lengths (query_seqlens in GQA)

    @classmethod
    def of(cls, session: ort.InferenceSession) -> Shape:
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        if io.ONNX_QUERY_SEQLENS not in inputs or io.ONNX_TOP_IDS not in outputs:
            raise ValueError(
                "this ONNX model is not the current serving graph (no query_seqlens input or "
                "top_ids output): re-export it with `python -m export`"
            )
        past0 = inputs[io.serving_past(0, "key")]
        meta = session.get_modelmeta().custom_metadata_map
        return cls(
            layers=sum(1 for name in inputs if name.startswith("past_key.")),
            heads=int(past0.shape[1]),
            head_dim=int(past0.shape[3]),
            vocab=int(meta[io.META_VOCAB_SIZE]),
            max_positions=int(meta[io.META_MAX_POSITIONS]),
            candidates=int(meta[io.META_CANDIDATES]),
            dtype=ORT_DTYPES[past0.type],
            ragged=meta.get(io.META_RAGGED_CHUNKS, "1") == "1",
        )


class KVBuffers:
    """Every layer's key and value buffer `[slots, heads, slot_length, head_dim]` on one device,
    and a `[slots, vocab]` scratch buffer for logits nobody reads."""

    def __init__(self, shape: Shape, slots: int, slot_length: int, device: str, device_id: int = 0):
        self.names = [
            (io.serving_past(i, k), io.serving_present(i, k))
            for i in range(shape.layers)
            for k in ("key", "value")
        ]
        self.device, self.device_id, self.dtype = device, device_id, shape.dtype
        self.row_shape = [shape.heads, slot_length, shape.head_dim]
        self.row_bytes = shape.heads * slot_length * shape.head_dim * np.dtype(shape.dtype).itemsize
        self.values = [
            ort.OrtValue.ortvalue_from_shape_and_type(
                [slots, *self.row_shape], shape.dtype, device, device_id
            )
            for _ in self.names
        ]
        self.nbytes = self.row_bytes * slots * len(self.names)
        self.vocab = shape.vocab
        self.scratch = ort.OrtValue.ortvalue_from_shape_and_type(
            [slots, shape.vocab], np.float32, device, device_id
        )

    def bind(self, binding: ort.IOBinding, lo: int, hi: int) -> list[int]:
        """Bind slots [lo, hi) of every buffer as both past input and present output; their addresses."""
        shape, ptrs = [hi - lo, *self.row_shape], []
        for (past, present), value in zip(self.names, self.values, strict=True):
            ptr = value.data_ptr() + lo * self.row_bytes
            binding.bind_input(past, self.device, self.device_id, self.dtype, shape, ptr)
            binding.bind_output(present, self.device, self.device_id, self.dtype, shape, ptr)
            ptrs.append(ptr)
        return ptrs

    def bind_scratch_logits(self, binding: ort.IOBinding, rows: int) -> None:
        binding.bind_output(
            io.ONNX_LOGITS,
            self.device,
            self.device_id,
            np.float32,
            [rows, self.vocab],
            self.scratch.data_ptr(),
        )

    def slot_numpy(self, k: int, slot: int) -> np.ndarray:
        """A host copy of buffer `k`'s slot (tests and debugging)."""
        return np.asarray(self.values[k].numpy()[slot])


@dataclass
class CallResult:
    top_ids: np.ndarray  # int32 [rows of the call, K]
    top_logits: np.ndarray  # float32 [rows of the call, K]
    logits: np.ndarray | None  # float32 [rows of the call, vocab] when a row asked for it


def fill_rows(
    call: list[Row],
    lo: int,
    rows: int,
    lengths: dict[int, int],
    width: int,
    shape: Shape,
    arrays: dict[str, np.ndarray],
) -> None:
    """Write the graph's inputs for `call` over slots [lo, lo + rows) into `arrays` (ids, pos,
    seqlens_k, query, each with `rows` rows): idle rows keep their cache (with ragged chunks: no
    token; without: one filler token at position `length`, past their context, where their next
    real token overwrites it)."""
    ids, pos, seqlens_k, query = arrays["ids"], arrays["pos"], arrays["seqlens_k"], arrays["query"]
    ids.fill(0)
    pos.fill(0)
    seqlens_k.fill(0)
    query.fill(0 if shape.ragged else 1)
    for slot, length in lengths.items():
        if lo <= slot < lo + rows:
            seqlens_k[slot - lo] = max(length, 1) - 1 if shape.ragged else length
    if width == 1:  # decode rows: one token each, written all at once
        rows_at = [r.slot - lo for r in call]
        past = [r.past for r in call]
        ids[rows_at, 0] = [int(r.ids[0]) for r in call]
        pos[rows_at, 0] = np.minimum(past, shape.max_positions - 1)
        seqlens_k[rows_at], query[rows_at] = past, 1
        return
    for r in call:
        b, n = r.slot - lo, r.ids.size
        ids[b, :n] = r.ids
        pos[b] = np.minimum(r.past + np.arange(width), shape.max_positions - 1)
        # GQA writes the whole width (fillers included); the logits come from the last real token.
        seqlens_k[b], query[b] = r.past + r.width - 1, n


class Runner:
    """Ordinary calls: any rows over a contiguous slot range, bound afresh each call."""

    def __init__(self, session: ort.InferenceSession, shape: Shape, kv: KVBuffers, slot_length: int):
        self.session, self.shape, self.kv, self.slot_length = session, shape, kv, slot_length
        self.options = ort.RunOptions()
        self.options.add_run_config_entry("gpu_graph_id", GRAPH_SKIP)

    def run(self, call: list[Row], lengths: dict[int, int]) -> CallResult:
        lo, hi = call[0].slot, call[-1].slot + 1
        width, rows = max(r.width for r in call), hi - lo
        arrays: dict[str, np.ndarray] = {
            "ids": np.zeros((rows, width), np.int64),
            "pos": np.zeros((rows, width), np.int64),
            "seqlens_k": np.zeros(rows, np.int32),
            "query": np.zeros(rows, np.int32),
        }
        fill_rows(call, lo, rows, lengths, width, self.shape, arrays)
        # GQA's total_sequence_length: with ragged chunks an upper bound (the slot length), else the
        # call's longest context, as the kernel uses it to tell a first prompt from later steps.
        total = self.slot_length if self.shape.ragged else int(arrays["seqlens_k"].max()) + 1
        binding = self.session.io_binding()
        for name, array in (
            (io.ONNX_INPUT_IDS, arrays["ids"]),
            (io.ONNX_POSITION_IDS, arrays["pos"]),
            (io.ONNX_SEQLENS_K, arrays["seqlens_k"]),
            (io.ONNX_TOTAL_SEQUENCE_LENGTH, np.array(total, np.int32)),
            (io.ONNX_QUERY_SEQLENS, arrays["query"]),
        ):
            binding.bind_cpu_input(name, array)
        full = any(r.full for r in call)
        if full:
            binding.bind_output(io.ONNX_LOGITS, "cpu")
        else:
            self.kv.bind_scratch_logits(binding, rows)
        binding.bind_output(io.ONNX_TOP_LOGITS, "cpu")
        binding.bind_output(io.ONNX_TOP_IDS, "cpu")
        ptrs = self.kv.bind(binding, lo, hi)
        self.session.run_with_iobinding(binding, self.options)
        outputs = binding.get_outputs()
        if [v.data_ptr() for v in outputs[3:]] != ptrs:
            raise RuntimeError(
                "onnxruntime did not write the KV cache in place (present bound to the past buffer "
                "was reallocated)"
            )
        return CallResult(outputs[2].numpy(), outputs[1].numpy(), outputs[0].numpy() if full else None)
