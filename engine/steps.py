"""What the engine takes and gives: a step per sequence in, a status and candidates per step out."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from contract import triton_io as io


class StepError(ValueError):
    """A step the engine refuses; returned to that step alone, the others run.

    `code` is the row status of the contract (io.ROW_*): whose move it is."""

    def __init__(self, message: str, code: int = io.ROW_INVALID):
        super().__init__(message)
        self.code = code


@dataclass
class Step:
    """One row: a sequence's new token ids, where they start, and its flags."""

    sequence_id: int
    ids: np.ndarray  # int64 [n]: the new tokens (empty only with end)
    position: int | None = 0  # where ids start in the context: 0 starts the sequence; None appends
    end: bool = False  # free the sequence's slot after this step
    full: bool = False  # answer the whole row of logits too


@dataclass
class Output:
    """The answer to a batch of steps, one row per step, as arrays (what model.py sends)."""

    status: np.ndarray  # int32 [n]: io.ROW_OK or the step's error code
    errors: list[str]  # the step's error message ("" when ok)
    top_ids: np.ndarray  # int32 [n, K]: the K most likely next tokens after the step, best first
    top_logits: np.ndarray  # float32 [n, K]: their logits
    full_rows: list[int] = field(default_factory=list)  # the steps that asked for the whole row
    full: np.ndarray | None = None  # float32 [len(full_rows), vocab]: those rows, in that order

    @classmethod
    def empty(cls, n: int, k: int) -> Output:
        return cls(np.zeros(n, np.int32), [""] * n, np.zeros((n, k), np.int32), np.zeros((n, k), np.float32))

    def fail(self, i: int, error: StepError) -> None:
        self.status[i], self.errors[i] = error.code, str(error)

    def error(self, i: int) -> StepError | None:
        """Step i's error, or None when it succeeded."""
        return None if self.status[i] == io.ROW_OK else StepError(self.errors[i], int(self.status[i]))

    def logits(self, i: int) -> np.ndarray:
        """Step i's whole row of logits (it must have asked with full=True); raises its error."""
        if (error := self.error(i)) is not None:
            raise error
        if self.full is None or i not in self.full_rows:
            raise ValueError(f"step {i} did not ask for the whole row (full=True)")
        row: np.ndarray = self.full[self.full_rows.index(i)]
        return row
