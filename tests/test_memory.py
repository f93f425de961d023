"""engine/memory.py (KV slots sized by the device) and engine/plan.py's merging of first chunks:
pure functions, with injected numbers (no GPU needed)."""

from __future__ import annotations

import numpy as np
import pytest

from contract import triton_io as io
from engine import memory
from engine.graphs import buckets
from engine.plan import Row, plan_calls

GB, MB = 10**9, 10**6


def test_slots_fill_the_free_memory_less_margin_and_reserve():
    slots, why = memory.size_slots(
        free_bytes=10 * GB, per_slot_bytes=100 * MB, cap=256, margin_bytes=1 * GB, reserve_bytes=500 * MB
    )
    assert slots == (10 * GB - 1 * GB - 500 * MB) // (100 * MB) == 85
    for part in (
        "free 10.00 GB",
        "margin 1.00 GB",
        "reserve 0.50 GB",
        "100.00 MB per slot",
        "cap 256",
        "-> 85",
    ):
        assert part in why
    assert "\n" not in why


def test_the_cap_and_the_share_of_the_device_bound_the_slots():
    h200 = dict(free_bytes=137 * GB, per_slot_bytes=75 * MB, margin_bytes=1 * GB, reserve_bytes=0)
    assert memory.size_slots(**h200, cap=256)[0] == 256  # 1813 fit
    # A second version loading beside: the first took at most 40 % of a 16 GB card.
    slots, why = memory.size_slots(
        free_bytes=15 * GB, per_slot_bytes=75 * MB, cap=256, total_bytes=16 * GB, margin_bytes=1 * GB
    )
    assert slots == int(0.4 * 16 * GB) // (75 * MB) == 85 and "at most 40% of 16.00 GB" in why


def test_less_than_one_slot_is_one_and_says_so():
    slots, why = memory.size_slots(free_bytes=1 * GB, per_slot_bytes=100 * MB, margin_bytes=1 * GB)
    assert slots == 1 and "less than one slot fits" in why


def test_auto_is_the_default_count_on_the_cpu_and_a_set_count_wins():
    assert memory.choose_slots(None, "cpu", 0, 100 * MB, 0)[0] == io.DEFAULT_KV_SLOTS == 8
    slots, why = memory.choose_slots(32, "cuda", 0, 100 * MB, 9, memory=lambda d: (100 * GB, 140 * GB))
    assert slots == 32 and "set" in why


def test_auto_on_cuda_reads_the_device_and_reserves_the_probe_and_the_decode_graphs():
    seen = []

    def info(device_id: int) -> tuple[int, int]:
        seen.append(device_id)
        return 20 * GB, 80 * GB

    graphs = len(buckets(memory.SLOTS_CAP))
    slots, why = memory.choose_slots(None, "cuda", 1, 150 * MB, graphs, memory=info)
    reserve = 150 * MB + graphs * memory.GRAPH_BYTES
    assert seen == [1] and slots == (20 * GB - memory.MARGIN_BYTES - reserve) // (150 * MB)
    assert why.startswith(f"KV slots: {slots} (auto on cuda:1: free 20.00 GB")
    assert buckets(slots)[-1] == slots  # the decode graphs cover the chosen count
    # Without a CUDA runtime to ask, the default count.
    assert memory.choose_slots(None, "cuda", 0, 150 * MB, graphs, memory=lambda d: None)[0] == 8


def test_kv_slots_settings():
    assert [memory.parse_slots(v) for v in ("auto", "AUTO", "0", None, "32", 4)] == [None] * 4 + [32, 4]
    with pytest.raises(ValueError, match="auto"):
        memory.parse_slots("many")


def test_the_cuda_runtime_onnxruntime_loaded_is_found_in_the_process_maps():
    maps = (
        "7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/libc.so.6\n"
        "7f02-7f03 r-xp 00000000 08:01 2 /opt/nvidia/cuda_runtime/lib/libcudart.so.13\n"
        "7f04-7f05 r--p 00001000 08:01 2 /opt/nvidia/cuda_runtime/lib/libcudart.so.13\n"
        "7f06-7f07 rw-p 00000000 00:00 0\n"
    )
    assert memory.cudart_paths(maps) == ["/opt/nvidia/cuda_runtime/lib/libcudart.so.13"]


def row(index: int, slot: int, n: int, past: int = 0, width: int | None = None) -> Row:
    return Row(index, slot, past, np.arange(n), pad=(width or n) - n)


def test_first_chunks_of_equal_width_in_adjacent_slots_share_a_call_without_ragged_chunks():
    rows = [row(0, 0, 9, width=16), row(1, 1, 14, width=16), row(2, 2, 30, width=32), row(3, 3, 16)]
    lengths = {0: 0, 1: 0, 2: 0, 3: 0}

    def slots(calls: list[list[Row]]) -> list[list[int]]:
        return [[r.slot for r in c] for c in calls]

    assert slots(plan_calls(rows, lengths, 512, ragged=False)) == [[0], [1], [2], [3]]
    assert slots(plan_calls(rows, lengths, 512, ragged=False, first_chunks=True)) == [[0, 1], [2], [3]]
    # Continuation chunks (a past) never share a call: the graph refuses them.
    later = [row(0, 0, 16, past=16), row(1, 1, 16, past=40)]
    assert slots(plan_calls(later, {0: 16, 1: 40}, 512, ragged=False, first_chunks=True)) == [[0], [1]]
    # A held slot between two first chunks: apart (its cache would be written over).
    apart = [row(0, 0, 16), row(1, 2, 16)]
    assert slots(plan_calls(apart, {0: 0, 1: 20, 2: 0}, 512, ragged=False, first_chunks=True)) == [[0], [2]]
    # At most slot_length tokens in one call.
    many = [row(i, i, 64) for i in range(5)]
    assert slots(plan_calls(many, dict.fromkeys(range(5), 0), 128, ragged=False, first_chunks=True)) == [
        [0, 1],
        [2, 3],
        [4],
    ]
    # Decode rows beside them keep their own call.
    mixed = [row(0, 0, 1, past=5), row(1, 1, 16), row(2, 2, 16)]
    assert slots(plan_calls(mixed, {0: 5, 1: 0, 2: 0}, 512, ragged=False, first_chunks=True)) == [[0], [1, 2]]


def test_ragged_planning_is_unchanged_by_first_chunks():
    rows = [row(0, 0, 9), row(1, 1, 14), row(2, 2, 1, past=30), row(3, 3, 16, past=8)]
    lengths = {0: 0, 1: 0, 2: 30, 3: 8}
    assert plan_calls(rows, lengths, 512, ragged=True, first_chunks=True) == plan_calls(
        rows, lengths, 512, ragged=True
    )


def test_the_cuda_memory_of_this_host_is_a_pair_or_none():
    """None where no CUDA runtime loads (this CPU host); (free, total) where one does."""
    info = memory.cuda_memory(0)
    assert info is None or 0 < info[0] <= info[1]
