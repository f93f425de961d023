"""How a batch of steps becomes onnxruntime calls (pure functions, no onnxruntime).

A batch runs in rounds in which a sequence appears at most once. A round's rows become calls over
contiguous slot ranges: every slot in a call's range is bound, so a held slot without a step is an
idle row that costs compute; rows are merged into one call while that costs less than a call of
their own (CALL_OVERHEAD_TOKENS).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

# A call's fixed cost in tokens of compute: merging two runs of rows into one call pays off when
# the idle or padded rows that merging adds cost less than this. Measured on ruDialoGPT-small
# with 2 CPU threads: a decode call of 1 row costs as much as ~6.5 rows more (weights are read
# once per call, whatever the rows); noisy, so rounded down.
CALL_OVERHEAD_TOKENS = 6


@dataclass
class Row:
    """A step that will run: its index in the batch, its slot, context before it, new tokens."""

    index: int
    slot: int
    past: int  # tokens of context before the new ones (the first new token's position)
    ids: np.ndarray
    full: bool = False  # the whole row of logits is wanted
    pad: int = 0  # filler tokens after `ids` (see chunk_width); their cache entries are overwritten later

    @property
    def width(self) -> int:
        return self.ids.size + self.pad


def chunk_width(n: int, past: int, slot_length: int) -> int:
    """The width a chunk of `n` tokens runs at in a graph without ragged chunks: the next power of
    two from 16 (where the slot has room), so that few chunk shapes ever reach onnxruntime (its
    CUDA provider pays ~0.05-0.5 s for each shape it has not run yet; they are run at load).

    Filler tokens after a chunk are harmless there: attention is causal, the logits are taken at
    the last real token, and the context length counts only the real ones, so the next real
    tokens overwrite the fillers' cache entries."""
    width = max(16, 1 << (n - 1).bit_length())
    return width if n > 1 and past + width <= slot_length else n


def rounds(sequence_ids: Sequence[int]) -> Iterator[list[int]]:
    """The indices of `sequence_ids` in rounds in which a sequence appears at most once, each
    step in the first round after its sequence's previous step."""
    pending = list(range(len(sequence_ids)))
    while pending:
        seen: set[int] = set()
        batch: list[int] = []
        later: list[int] = []
        for i in pending:
            (later if sequence_ids[i] in seen else batch).append(i)
            seen.add(sequence_ids[i])
        yield batch
        pending = later


def plan_calls(
    rows: list[Row], lengths: dict[int, int], slot_length: int, ragged: bool, first_chunks: bool = False
) -> list[list[Row]]:
    """`rows` split into calls over contiguous slot ranges, merged while that is cheaper.

    A call costs CALL_OVERHEAD_TOKENS plus (slots bound) × (widest chunk) tokens: idle slots inside
    the range and padding both count. Every bound slot must have room for the chunk (`lengths`:
    context by held slot; a free slot counts as 1). A graph without ragged chunks runs each
    multi-token chunk in a call of its own, except, with `first_chunks`, where `together` allows."""
    calls: list[list[Row]] = []
    for row in sorted(rows, key=lambda r: r.slot):
        if calls and not ragged and (row.width > 1 or calls[-1][0].width > 1):
            if first_chunks and together(calls[-1], row, slot_length):
                calls[-1].append(row)
            else:
                calls.append([row])
            continue
        if calls:
            current = calls[-1]
            lo, hi = current[0].slot, current[-1].slot + 1
            width = max(r.width for r in current)
            merged_width = max(width, row.width)
            merged = (row.slot + 1 - lo) * merged_width
            apart = (hi - lo) * width + CALL_OVERHEAD_TOKENS + row.width
            fits = row.past + merged_width <= slot_length and all(
                lengths.get(s, 1) + merged_width <= slot_length for s in range(lo, row.slot)
            )
            if merged <= apart and fits:
                current.append(row)
                continue
        calls.append([row])
    return calls


def together(call: list[Row], row: Row, slot_length: int) -> bool:
    """Whether `row` may join `call` in a graph without ragged chunks: both first chunks (position
    0) of the same width, in the next slot.

    GroupQueryAttention without per-row query lengths (`query_seqlens`) refuses a call of several
    rows whose chunks have a past ("batch_size must be 1 when sequence_length > 1 and past context
    is given", onnxruntime 1.32 on the CPU), so continuation chunks stay alone. It takes a call whose
    `total_sequence_length` equals the chunk's width as a batch of first prompts, each row's keys
    and values written from position 0: a held idle row in the range would lose its cache, so the
    rows must be adjacent. On the CPU such a call equals each row run alone, to the bit
    (tests/test_engine.py). onnxruntime-gpu's GroupQueryAttention (CUDA, 1.31) is another
    implementation whose handling of several first prompts has not been run: the engine merges by
    default with the CPU provider only (KVEngine's `prompt_batching`) and checks its first merged
    call against each row alone (engine/checks.py). At most `slot_length` tokens in all (rows x
    width): the CPU kernel's attention scratch grows with rows x width x slot length, and a single
    chunk may already be that wide."""
    last = call[-1]
    return (
        row.past == 0
        and row.width > 1
        and row.slot == last.slot + 1
        and all(r.past == 0 and r.width == row.width for r in call)
        and (len(call) + 1) * row.width <= slot_length
    )
