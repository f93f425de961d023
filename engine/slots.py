"""Which sequence holds which KV slot, and how much context it holds there (no onnxruntime).

A sequence takes a slot with a step at position 0 and keeps it until END, idle eviction, or an
eviction to make room. Slot `slots` (one past the generations' slots) is the liveness probe's own
(io.PROBE_SLOTS), so a probe never waits for a slot or takes one from a generation. The lowest
free slot is taken first, which keeps live slots dense at the bottom: calls over a contiguous
range and the decode graphs over slots [0, bucket) bind few idle rows.
"""

from __future__ import annotations

import heapq
import logging
import time
from dataclasses import dataclass, field

from contract import triton_io as io
from engine.steps import StepError

log = logging.getLogger(__name__)

# When every slot is held, a new sequence may take the slot of the least recently used one only
# if that one has not stepped for this long: a generation steps every few milliseconds, so such
# a sequence is abandoned or paused. Otherwise the new one is refused as busy (the client waits
# and tries again) rather than evicting a live generation into a restart of its whole context.
EVICT_AFTER_S = 2.0


@dataclass(eq=False)
class Seq:
    slot: int
    length: int = 0  # tokens of context held in the slot (the next position)
    last_used: float = field(default_factory=time.monotonic)


class SlotTable:
    """Sequences → slots and context lengths, for `slots` generations plus the probe."""

    def __init__(
        self,
        slots: int,
        slot_length: int,
        idle_seconds: float = io.DEFAULT_IDLE_SECONDS,
        evict_after_s: float = EVICT_AFTER_S,
    ):
        self.slots, self.slot_length = slots, slot_length
        self.total = slots + io.PROBE_SLOTS  # the buffers' first dimension
        self.idle_seconds, self.evict_after_s = idle_seconds, evict_after_s
        self.seqs: dict[int, Seq] = {}
        self._free = list(range(slots))  # a heap: the lowest free slot first

    def __contains__(self, sequence_id: int) -> bool:
        return sequence_id in self.seqs

    def __getitem__(self, sequence_id: int) -> Seq:
        return self.seqs[sequence_id]

    def free(self, sequence_id: int) -> None:
        seq = self.seqs.pop(sequence_id, None)
        if seq is not None and seq.slot < self.slots:
            heapq.heappush(self._free, seq.slot)

    def prepare(self, sequence_id: int, position: int | None, n: int, busy: set[int]) -> Seq:
        """The sequence's slot, ready for `n` new tokens at `position` (None: after its context).

        0 takes a slot (or restarts the one held); a position inside the held context rewinds to
        it, so a step sent again recomputes the same tokens; a position past it means the server
        lost what came between. `busy`: the sequences of this round (never evicted for a new one)."""
        seq = self.seqs.get(sequence_id)
        lost = f"start it again at position 0 (slots idle for {self.idle_seconds:.0f} s are freed)"
        if position is None:
            if seq is None:
                raise StepError(
                    f"sequence {sequence_id}: the server holds no cache for it: {lost}", io.ROW_LOST
                )
            position = seq.length
        if position < 0:
            raise StepError(f"sequence {sequence_id}: position {position} is negative")
        if position > 0 and (seq is None or position > seq.length):
            held = f"holds {seq.length} tokens of it" if seq is not None else "holds no cache for it"
            raise StepError(
                f"sequence {sequence_id}: the step starts at position {position} but the server "
                f"{held}: {lost}",
                io.ROW_LOST,
            )
        if position + n > self.slot_length:
            raise StepError(
                f"context of {position + n} tokens exceeds the {self.slot_length} positions of a KV "
                "slot: end this sequence and start a shorter one"
            )
        if seq is None:
            seq = self.seqs[sequence_id] = Seq(self._take(sequence_id, busy))
        seq.length = position
        return seq

    def _take(self, sequence_id: int, busy: set[int]) -> int:
        if sequence_id == io.PROBE_SEQUENCE_ID:
            return self.slots
        if not self._free:
            now = time.monotonic()
            idle = [
                (s.last_used, k)
                for k, s in self.seqs.items()
                if k not in busy and k != io.PROBE_SEQUENCE_ID and now - s.last_used >= self.evict_after_s
            ]
            if not idle:
                raise StepError(
                    f"all {self.slots} KV slots are held by running generations: try again shortly, "
                    "or raise kv_slots (python -m export --kv-slots)",
                    io.ROW_BUSY,
                )
            victim = min(idle)[1]
            log.warning("all %d KV slots in use: freeing least recently used sequence %d", self.slots, victim)
            self.free(victim)
        return heapq.heappop(self._free)

    def evict_idle(self, now: float | None = None) -> int:
        """Free slots unused for idle_seconds (abandoned sequences); returns how many."""
        now = time.monotonic() if now is None else now
        stale = [k for k, s in self.seqs.items() if now - s.last_used > self.idle_seconds]
        for k in stale:
            self.free(k)
        return len(stale)

    def held(self) -> list[Seq]:
        """The generations' sequences (not the probe's)."""
        return [s for k, s in self.seqs.items() if k != io.PROBE_SEQUENCE_ID]

    def free_slots(self) -> int:
        return len(self._free)

    def lengths(self) -> dict[int, int]:
        """Context length by slot, of every held slot."""
        return {s.slot: s.length for s in self.seqs.values()}
