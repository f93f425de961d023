"""The training CSV: loading with clear errors, and the tokenized dataset with its label mask."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from contract.dialogue import FIRST, SECOND, clean_turn, format_example
from training.config import ConfigError

if TYPE_CHECKING:  # imported where used: reading a CSV needs neither (GPU hosts may lack datasets)
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq

log = logging.getLogger(__name__)

CONTEXTS = ("context_1", "context_2", "context_3")  # oldest turn first; empty means fewer turns
RESPONSE = "response"
COLUMNS = (*CONTEXTS, RESPONSE)
IGNORE = -100  # label of positions the loss skips (prompt and padding)
_HEADER = ",".join(COLUMNS)


class DataError(ValueError):
    """The training CSV cannot be used; the message names the fix."""


@dataclass
class Examples:
    """The usable rows of a CSV as (prompt, target) pairs, and how many rows were skipped."""

    pairs: list[tuple[str, str]]  # format_example(contexts, response) per usable row
    no_response: int  # rows skipped because the response is empty
    no_context: int  # rows skipped because every context is empty

    @property
    def rows(self) -> int:
        """The CSV's rows (its header not counted)."""
        return len(self.pairs) + self.no_response + self.no_context


def data_file(path: Path, rows: int) -> dict[str, str | int]:
    """What a run records of a data file it trained on: its path, rows and sha256."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return {"path": str(Path(path).resolve()), "rows": rows, "sha256": digest.hexdigest()}


def read_csv(path: Path | str) -> pd.DataFrame:
    """The CSV as strings (empty cells NaN), checked for the usual ways a file goes wrong."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; pass the training CSV with --data")
    raw = path.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{path}: the file is UTF-16; re-save it as UTF-8 (in Excel: CSV UTF-8)")
    if b"\x00" in raw:
        raise DataError(f"{path}: this looks like a binary file; --data must be a CSV text file")
    try:
        text = raw.decode("utf-8-sig").lstrip()
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 (bad byte at offset {e.start}); re-save it as UTF-8, "
            f"e.g. `iconv -f cp1251 -t utf-8 {path.name} > fixed.csv`"
        ) from None
    if not text:
        raise DataError(f"{path}: the file is empty; it needs the header {_HEADER} and one row per example")
    names = [name.strip() for name in next(csv.reader([text.partition("\n")[0]]))]
    if len(names) == 1:
        raise DataError(
            f"{path}: found a single column {names[0]!r}; the file must use commas as delimiter "
            f"(not ';' or tabs) with the header {_HEADER}"
        )
    duplicates = sorted({n for n in names if n and names.count(n) > 1})
    if duplicates:
        raise DataError(f"{path}: duplicate column names {', '.join(duplicates)}; keep one of each")
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(names)}; "
            f"the header must be {_HEADER} (extra columns are ignored)"
        )
    try:
        with warnings.catch_warnings():  # a row longer than the header must not shift or lose data
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""], index_col=False
            )
    except (pd.errors.ParserError, pd.errors.ParserWarning) as e:
        raise DataError(
            f"{path}: not valid CSV ({str(e).strip()}); every row needs as many fields as the header, "
            "and a field with commas, quotes or newlines must be in double quotes, with quotes inside "
            'it doubled ("")'
        ) from None
    if frame.empty:
        raise DataError(f"{path}: the file has a header but no rows; add one row per example")
    frame.columns = names
    return frame


def load_examples(path: Path | str) -> Examples:
    """Every usable row of the CSV as format_example's (prompt, target)."""
    frame = read_csv(path)
    examples = Examples(pairs=[], no_response=0, no_context=0)
    for *contexts, response in frame[list(COLUMNS)].itertuples(index=False, name=None):
        if not clean_turn(response):
            examples.no_response += 1
        elif not any(clean_turn(c) for c in contexts):
            examples.no_context += 1
        else:
            examples.pairs.append(format_example(contexts, response))
    if examples.no_response or examples.no_context:
        log.warning(
            "%s: skipped %d rows with an empty response and %d rows with no context",
            path,
            examples.no_response,
            examples.no_context,
        )
    if not examples.pairs:
        raise DataError(
            f"{path}: none of its {len(frame)} rows is usable; each row needs a non-empty "
            f"{RESPONSE} and at least one non-empty context column"
        )
    log.info("%s: %d examples", path, len(examples.pairs))
    return examples


def build_dataset(
    pairs: list[tuple[str, str]], tokenizer, max_length: int, full_text_loss: bool = False
) -> tuple[Dataset, int]:
    """Token ids and labels per pair (labels IGNORE over the prompt), and the count of rows dropped.

    An example longer than `max_length` loses prompt tokens from the left; a row whose target
    alone leaves no room for the prompt's last token (the answer marker) is dropped."""
    from datasets import Dataset

    prompts = tokenizer([p for p, _ in pairs])["input_ids"]
    fulls = tokenizer([p + t for p, t in pairs])["input_ids"]
    rows: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
    dropped = 0
    for prompt, full in zip(prompts, fulls, strict=True):
        if full[: len(prompt)] != prompt:
            raise ConfigError(
                "the tokenizer splits prompt and response differently in the full text; its "
                f"{FIRST}/{SECOND} markers must be special tokens"
            )
        if len(full) - len(prompt) >= max_length:
            dropped += 1
            continue
        cut = max(0, len(full) - max_length)
        ids, n_prompt = full[cut:], len(prompt) - cut
        rows["input_ids"].append(ids)
        rows["labels"].append(list(ids) if full_text_loss else [IGNORE] * n_prompt + ids[n_prompt:])
    if dropped:
        log.warning("dropped %d rows whose response does not fit in %d tokens", dropped, max_length)
    if not rows["input_ids"]:
        raise DataError(f"no response fits in --max-length {max_length} tokens; raise --max-length")
    return Dataset.from_dict(rows), dropped


def split(dataset: Dataset, eval_fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """(train, eval): eval holds `eval_fraction` of the rows, at least one when there are two."""
    n = len(dataset)
    n_eval = min(n - 1, max(1, round(n * eval_fraction))) if eval_fraction > 0 and n >= 2 else 0
    if n_eval == 0:
        log.warning("no eval set (%d rows, --eval-fraction %s): eval loss is not reported", n, eval_fraction)
        return dataset, None
    parts = dataset.train_test_split(test_size=n_eval, seed=seed)
    return parts["train"], parts["test"]


def collator(tokenizer) -> DataCollatorForSeq2Seq:
    """Pads a batch on the tokenizer's side (right: load_base sees to it) with its pad id,
    attention_mask 0 and labels IGNORE: transformers' own collator does exactly this."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE)
