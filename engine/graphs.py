"""Decode steps on fixed bindings, replayed as CUDA graphs with the CUDA provider.

A decode step (one new token per row after a context) runs as a `DecodeGraph`: for a bucket of
B slots ([0, B), rows without a step are idle), every input and output is bound once to fixed
buffers (the small inputs packed into one, the candidates into another), so a step is one copy
in, one run, one copy out. With the CUDA provider the run is captured once as a CUDA graph and
replayed (`gpu_graph_id`), which removes the launch cost of ~600 kernels per step; on the CPU the
same fixed bindings run without capture.
"""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort

from contract import triton_io as io
from engine.plan import Row
from engine.runner import GRAPH_SKIP, CallResult, Runner, fill_rows


class _Packed:
    """Named arrays packed into one host buffer and one equal buffer on the device, each bound by
    pointer: refreshing all of them is one copy."""

    ALIGN = 256

    def __init__(self, fields: dict[str, tuple[type[np.generic], list[int]]], device: str, device_id: int):
        offsets, size = {}, 0
        for name, (dtype, dims) in fields.items():
            offsets[name] = size
            size += -(-int(np.prod(dims)) * np.dtype(dtype).itemsize // self.ALIGN) * self.ALIGN
        self.host = np.zeros(size, np.uint8)
        self.device, self.device_id = device, device_id
        self.value = ort.OrtValue.ortvalue_from_numpy(self.host, device, device_id)
        self.fields = fields
        self.offsets = offsets
        self.arrays = {name: self._view(self.host, name) for name in fields}

    def _view(self, buffer: np.ndarray, name: str) -> np.ndarray:
        dtype, dims = self.fields[name]
        n = int(np.prod(dims)) * np.dtype(dtype).itemsize
        return buffer[self.offsets[name] : self.offsets[name] + n].view(dtype).reshape(dims)

    def bind(self, binding: ort.IOBinding, names: dict[str, str], output: bool = False) -> None:
        """Bind field → graph tensor name (`names`: field name → tensor name)."""
        for field, tensor in names.items():
            dtype, dims = self.fields[field]
            ptr = self.value.data_ptr() + self.offsets[field]
            bind = binding.bind_output if output else binding.bind_input
            bind(tensor, self.device, self.device_id, dtype, dims, ptr)

    def upload(self) -> None:
        if self.device != "cpu":
            self.value.update_inplace(self.host)

    def download(self) -> dict[str, np.ndarray]:
        buffer = self.value.numpy() if self.device != "cpu" else self.host.copy()
        return {name: self._view(buffer, name) for name in self.fields}


class DecodeGraph:
    """Decode steps over slots [0, bucket) on bindings fixed once; a CUDA graph on CUDA."""

    def __init__(self, runner: Runner, bucket: int, graph_id: int | None):
        self.runner, self.bucket, self.graph_id = runner, bucket, graph_id
        shape, kv, session = runner.shape, runner.kv, runner.session
        k = shape.candidates
        self.inputs = _Packed(
            {
                "ids": (np.int64, [bucket, 1]),
                "pos": (np.int64, [bucket, 1]),
                "seqlens_k": (np.int32, [bucket]),
                "query": (np.int32, [bucket]),
            },
            kv.device,
            kv.device_id,
        )
        self.outputs = _Packed(
            {"top_logits": (np.float32, [bucket, k]), "top_ids": (np.int32, [bucket, k])},
            kv.device,
            kv.device_id,
        )
        # A host scalar that never changes: decode rows attend to at most the slot's positions.
        self.total = ort.OrtValue.ortvalue_from_numpy(np.array(runner.slot_length, np.int32))
        self.binding = session.io_binding()
        self.inputs.bind(
            self.binding,
            {
                "ids": io.ONNX_INPUT_IDS,
                "pos": io.ONNX_POSITION_IDS,
                "seqlens_k": io.ONNX_SEQLENS_K,
                "query": io.ONNX_QUERY_SEQLENS,
            },
        )
        self.binding.bind_ortvalue_input(io.ONNX_TOTAL_SEQUENCE_LENGTH, self.total)
        self.outputs.bind(
            self.binding, {"top_logits": io.ONNX_TOP_LOGITS, "top_ids": io.ONNX_TOP_IDS}, output=True
        )
        kv.bind_scratch_logits(self.binding, bucket)
        kv.bind(self.binding, 0, bucket)
        self.options = ort.RunOptions()
        self.options.add_run_config_entry("gpu_graph_id", GRAPH_SKIP if graph_id is None else str(graph_id))
        self.runs = 0
        self.capture_s = 0.0  # the first run's time: capture included on CUDA
        self.check_diff = 0.0  # max |Δ| of its first run's candidates against an ordinary call

    def fits(self, lengths: dict[int, int]) -> bool:
        """Idle rows of a graph without ragged chunks take a filler token at their length: only
        where their slot has room for it."""
        return self.runner.shape.ragged or all(
            n < self.runner.slot_length for s, n in lengths.items() if s < self.bucket
        )

    def run(self, call: list[Row], lengths: dict[int, int]) -> CallResult:
        fill_rows(call, 0, self.bucket, lengths, 1, self.runner.shape, self.inputs.arrays)
        self.inputs.upload()
        t0 = time.perf_counter()
        self.runner.session.run_with_iobinding(self.binding, self.options)
        if self.runs == 0:
            self.capture_s = time.perf_counter() - t0
        self.runs += 1
        out = self.outputs.download()
        return CallResult(out["top_ids"], out["top_logits"], None)


def buckets(slots: int) -> list[int]:
    """Decode graph sizes: powers of two below `slots`, and `slots` itself."""
    sizes = [1 << i for i in range(slots.bit_length()) if 1 << i < slots]
    return [*sizes, slots]
