"""How many KV slots an engine holds: a count set in config.pbtxt, or "auto", sized at load.

"auto" on CUDA sizes the slots from the device's free memory after the session has loaded the
weights and before the KV buffers are allocated (`size_slots`: pure arithmetic, the rule below);
on the CPU it keeps the fixed default (io.DEFAULT_KV_SLOTS), as the host's memory is shared with
everything else and the CPU serves few conversations anyway.

The rule: budget = min(free - MARGIN_BYTES, KV_SHARE x total) - reserve, where the reserve is
what the engine allocates after the sizing besides the slots (the probe's slot, and on CUDA the
decode graphs: GRAPH_BYTES per bucket); slots = budget // bytes per slot, at least 1, at most
SLOTS_CAP. The share keeps room for a second version: Triton loads a new one beside the one that
serves (export/versions.py), and it must find memory for its weights and its slots.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

from contract import triton_io as io
from engine.runner import Shape

# Most slots "auto" chooses: each doubling adds a decode graph to capture at load, and rounds of
# 256 conversations are far past the 32 measured on a GPU (docs/serving.md).
SLOTS_CAP = 256
# Left free after the slots: onnxruntime's activations and workspaces for the widest chunk,
# cuBLAS/cuDNN handles, the allocator's rounding.
MARGIN_BYTES = 1 << 30
# Decode graphs' captures took 34 MB of GPU memory for the first bucket and 0-2 MB for each other
# (H200, 124M GPT-2, fp16): reserved, rounded up, per bucket of the largest count "auto" can
# choose (buckets 1, 2, 4, ..., SLOTS_CAP).
GRAPH_BYTES = 40 * 10**6
KV_SHARE = 0.4  # the slots take at most this share of the device: a version loading beside fits

MemoryInfo = Callable[[int], tuple[int, int] | None]  # device id -> (free, total) bytes


def parse_slots(value: str | int | None) -> int | None:
    """config.pbtxt's kv_slots as the engine takes it: a count >= 1, or None for "auto" (also
    "0" and a missing value)."""
    text = str(value).strip().lower() if value is not None else io.KV_SLOTS_AUTO
    if text in (io.KV_SLOTS_AUTO, "0", ""):
        return None
    if not text.isdigit():
        raise ValueError(f"kv_slots must be a count >= 1 or {io.KV_SLOTS_AUTO!r}, got {value!r}")
    return int(text)


def slot_bytes(shape: Shape, slot_length: int) -> int:
    """Bytes one slot takes: a key and a value row per layer (engine/runner.py's KVBuffers), and
    its row of the fp32 logits scratch."""
    row = shape.heads * slot_length * shape.head_dim * np.dtype(shape.dtype).itemsize
    return shape.layers * 2 * row + shape.vocab * np.dtype(np.float32).itemsize


def size_slots(
    free_bytes: int,
    per_slot_bytes: int,
    cap: int = SLOTS_CAP,
    margin_bytes: int = MARGIN_BYTES,
    reserve_bytes: int = 0,
    total_bytes: int | None = None,
    share: float = KV_SHARE,
) -> tuple[int, str]:
    """Slots that fit (the rule in the module's docstring), and one line that says why."""
    gb = 1e9
    limit = free_bytes - margin_bytes
    shared = ""
    if total_bytes is not None:
        limit = min(limit, int(share * total_bytes))
        shared = f", at most {share:.0%} of {total_bytes / gb:.2f} GB"
    budget = limit - reserve_bytes
    fit = max(budget // per_slot_bytes, 0)
    slots = min(max(fit, 1), cap)
    why = (
        f"free {free_bytes / gb:.2f} GB after the weights, margin {margin_bytes / gb:.2f} GB{shared}, "
        f"reserve {reserve_bytes / gb:.2f} GB: budget {budget / gb:.2f} GB / {per_slot_bytes / 1e6:.2f} MB "
        f"per slot = {fit}, cap {cap} -> {slots}"
    )
    if fit < 1:
        why += " (less than one slot fits: 1, its allocation may fail)"
    return slots, why


def choose_slots(
    requested: int | None,
    device: str,
    device_id: int,
    per_slot_bytes: int,
    graph_buckets: int,
    memory: MemoryInfo | None = None,
) -> tuple[int, str]:
    """The engine's slot count and the log line that says how it was chosen. `requested`: a count
    (it wins) or None ("auto"); `graph_buckets`: the decode graphs that will be captured at the
    largest count (reserved on CUDA); `memory`: the device's (free, total) bytes (cuda_memory)."""
    if requested is not None:
        return requested, f"KV slots: {requested} (set: kv_slots {requested})"
    if device != "cuda":
        return io.DEFAULT_KV_SLOTS, (
            f"KV slots: {io.DEFAULT_KV_SLOTS} (auto on the {device}: the default count; "
            "free memory sizes them on CUDA)"
        )
    info = (memory or cuda_memory)(device_id)
    if info is None:
        return io.DEFAULT_KV_SLOTS, (
            f"KV slots: {io.DEFAULT_KV_SLOTS} (auto on cuda:{device_id}: free memory unknown, "
            "no CUDA runtime found; the default count)"
        )
    reserve = per_slot_bytes * io.PROBE_SLOTS + graph_buckets * GRAPH_BYTES
    slots, why = size_slots(info[0], per_slot_bytes, reserve_bytes=reserve, total_bytes=info[1])
    return slots, f"KV slots: {slots} (auto on cuda:{device_id}: {why})"


def cudart_paths(maps: str) -> list[str]:
    """The CUDA runtime libraries a process has loaded, from its /proc/self/maps text."""
    found: list[str] = []
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)  # address perms offset dev inode path
        if len(fields) == 6 and Path(fields[5]).name.startswith("libcudart.so") and fields[5] not in found:
            found.append(fields[5])
    return found


def cuda_memory(device_id: int) -> tuple[int, int] | None:
    """(free, total) bytes of a CUDA device from the CUDA runtime (cudaMemGetInfo): the one
    onnxruntime's CUDA provider loaded, else the first found; None without one."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    names = [
        *cudart_paths(maps),
        ctypes.util.find_library("cudart") or "",
        "libcudart.so.13",
        "libcudart.so.12",
    ]
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        if (
            lib.cudaSetDevice(device_id) == 0
            and lib.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) == 0
        ):
            return free.value, total.value
        return None
    return None
