"""The training CSV as every source writes it: the columns `python -m training` reads, identical
rows once, and never a partial file (written beside the output, renamed onto it at the end)."""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path
from types import TracebackType
from typing import IO

# training.data.COLUMNS (tests check they are equal; importing it here would load pandas).
COLUMNS = ("context_1", "context_2", "context_3", "response")  # oldest context first
Row = tuple[str, str, str, str]  # a row in COLUMNS' order; "" where a dialogue has fewer turns


class PrepareError(ValueError):
    """Input or settings that give no training CSV; the message names the fix."""


def check_output(output: Path, *inputs: Path) -> None:
    """Reject an --output that cannot be written, before any input is read."""
    if output.is_dir():
        raise PrepareError(f"--output {output} is a folder; pass a file name, e.g. {output / 'data.csv'}")
    if not output.parent.is_dir():
        raise PrepareError(f"--output {output}: the folder {output.parent} does not exist; create it first")
    for source in inputs:
        if source.exists() and output.exists() and output.samefile(source):
            raise PrepareError(f"--output {output} is the input file; pass another name, e.g. data.csv")


class RowWriter:
    """Writes rows to `path` as the training CSV, each distinct row once.

    Rows go to a hidden file beside `path` that replaces `path` in one rename when the `with`
    block ends without an exception; on an exception it is deleted, so `path` is never partial
    and an earlier file there stays as it was."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        self.written = 0  # distinct rows in the file
        self.duplicates = 0  # rows dropped because an identical row was written before
        self.replaced = False  # whether the rename replaced an existing file
        self._seen: set[bytes] = set()  # 8-byte digests of the rows written
        self._file: IO[str] | None = None

    def __enter__(self) -> RowWriter:
        # errors="replace": text that is no valid Unicode (a lone surrogate) must not make a file
        # that training rejects as "not UTF-8".
        self._file = self.partial.open("w", encoding="utf-8", errors="replace", newline="", buffering=1 << 20)
        self._csv = csv.writer(self._file, lineterminator="\n")
        self._csv.writerow(COLUMNS)
        return self

    def write(self, row: Row) -> None:
        """Add `row` unless an identical one was written."""
        key = hashlib.blake2b("\x00".join(row).encode("utf-8", "surrogatepass"), digest_size=8).digest()
        if key in self._seen:
            self.duplicates += 1
            return
        self._seen.add(key)
        self._csv.writerow(row)
        self.written += 1

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        assert self._file is not None
        self._file.close()
        if kind is not None:
            self.partial.unlink(missing_ok=True)
            return
        self.replaced = self.path.exists()
        os.replace(self.partial, self.path)
