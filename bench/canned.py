"""Canned answers for timing the client alone (bench/client_round.py): a round's answer as arrays,
or as the HTTP body Triton would send, for any rows and whole rows, the same every round.

It imports only numpy, tritonclient and `contract.triton_io`, so that the client of an older
commit (bench/client_round_old.py, run from that commit's checkout) loads it by its path and gets
the same answers, in that commit's own contract.
"""

from __future__ import annotations

import json

import numpy as np
from tritonclient.utils import serialize_byte_tensor

from contract import triton_io as io

VOCAB = 50261  # ruDialoGPT-small's vocabulary: what a whole row costs to choose from


class Canned:
    """The K candidates per row (random ids, logits best first) and a whole row of logits."""

    def __init__(self, rows: int, vocab: int = VOCAB, k: int = io.CANDIDATES, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.vocab, self.rows = vocab, max(rows, 1)
        self.ids = rng.integers(0, vocab, (self.rows, k)).astype(np.int32)
        logits = np.sort(rng.normal(size=(self.rows, k)).astype(np.float32), axis=1)[:, ::-1] * 3
        self.logits = np.ascontiguousarray(logits)
        self.full_row = (rng.normal(size=vocab) * 3).astype(np.float32)
        self._bodies: dict[tuple[int, int], tuple[bytes, int]] = {}

    def arrays(self, flags: np.ndarray) -> dict[str, np.ndarray]:
        """The answer's outputs (without Triton's batch dimension) to rows with `flags`: every row
        answered (ROW_OK), the whole row for each ROW_FULL row."""
        n = flags.size
        at = np.arange(n) % self.rows
        full = int(np.count_nonzero(flags & io.ROW_FULL))
        return {
            io.STATUS: np.zeros(n, np.int32),
            io.ERRORS: np.zeros(0, object),
            io.CANDIDATE_IDS: self.ids[at],
            io.CANDIDATE_LOGITS: self.logits[at],
            io.LOGITS: np.broadcast_to(self.full_row, (full, self.vocab)),
        }

    def body(self, flags: np.ndarray, version: str = "1") -> tuple[bytes, int]:
        """The HTTP body Triton answers to rows with `flags` (binary tensors after a JSON header),
        and the header's length; cached by the rows' and whole rows' counts."""
        key = (flags.size, int(np.count_nonzero(flags & io.ROW_FULL)))
        if key not in self._bodies:
            outputs, raw = [], []
            for name, array in self.arrays(flags).items():
                data = (
                    serialize_byte_tensor(array).tobytes()
                    if io.RESPONSE_OUTPUTS[name] == "BYTES" and array.size
                    else b""
                    if array.dtype == object
                    else np.ascontiguousarray(array).tobytes()
                )
                outputs.append(
                    {
                        "name": name,
                        "datatype": io.RESPONSE_OUTPUTS[name],
                        "shape": [1, *array.shape],
                        "parameters": {"binary_data_size": len(data)},
                    }
                )
                raw.append(data)
            header = json.dumps(
                {"model_name": io.DEFAULT_MODEL_NAME, "model_version": version, "outputs": outputs}
            ).encode()
            self._bodies[key] = (header + b"".join(raw), len(header))
        return self._bodies[key]


def prompts(n: int, length: int, seed: int = 1) -> list[list[int]]:
    """The same `n` random prompts on both sides."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB, length).tolist() for _ in range(n)]


def steps_in(flags: np.ndarray) -> bool:
    """A round that steps some generation (not one of END rows only)."""
    return bool(np.any((flags & io.ROW_END) == 0))


def summary(n: int, wall: float, stamps: list[float], rows_sent: int, full_rows: int) -> dict:
    """One measurement at `n` rows: `stamps` are when each round that stepped was sent. Per round:
    the wall time over those rounds (the prompt's included), and the median time between two
    sends (a steady decode round); per row: per round / n."""
    rounds = max(len(stamps), 1)
    return {
        "rows": n,
        "rounds": rounds,
        "rows_sent": rows_sent,
        "full_rows": full_rows,
        "round_ms": wall / rounds * 1000,
        "row_us": wall / rounds / n * 1e6,
        "cycle_ms": float(np.median(np.diff(stamps))) * 1000 if len(stamps) > 2 else wall * 1000,
    }
