"""What the export's log leaves out: warnings the libraries it drives give on every export of a
GPT-2, each dropped only around the call that gives it, and only where a check of the export makes
it moot. Anything else they say still shows."""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator


class _Drop(logging.Filter):
    """Drops the records whose message matches one of `patterns` (regexes, at its start)."""

    def __init__(self, patterns: list[str]):
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.match(message) for p in self.patterns)


@contextlib.contextmanager
def dropping(logs: dict[str, list[str]]) -> Iterator[None]:
    """Drop, meanwhile, the records of each named logger ("" is the root) whose message matches
    one of its patterns. (A logger's filter sees the records logged on that logger itself.)"""
    filters = [(logging.getLogger(name), _Drop(patterns)) for name, patterns in logs.items()]
    for logger, drop in filters:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger, drop in filters:
            logger.removeFilter(drop)


@contextlib.contextmanager
def optimum_export() -> Iterator[None]:
    """Around optimum's export (export/reference.py). optimum's graph serves only for the logits
    the exporter compares with the serving graph's: a trace that does not generalize to those
    inputs, or an index op gone wrong, shows there as a difference. (Python's warning filters are
    process-wide: a matching warning of another thread is dropped meanwhile too.)"""
    import torch.jit

    logs = {
        # optimum passes the old name of the dtype argument to transformers
        "transformers.configuration_utils": [r"`torch_dtype` is deprecated"],
        # the tied lm_head is traced as a transposed copy of the embedding, which optimum's weight
        # deduplication reports: a header, then a tab-indented line per weight with its one
        # candidate (a weight with several candidates, or none, still shows)
        "optimum": [
            r"Found different candidate ONNX initializers \(likely duplicate\)",
            r"\t\S+: \{'[^']*'\}$",
        ],
    }
    with warnings.catch_warnings(), dropping(logs):
        # transformers' cache and mask code branches on tensor values while torch traces it
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"transformers\.")
        # GPT-2's advanced indexing becomes several ONNX ops, wrong only for negative indices
        warnings.filterwarnings(
            "ignore", r"Exporting aten::index operator of advanced indexing", UserWarning, r"torch\.onnx\."
        )
        yield


def quantization() -> contextlib.AbstractContextManager[None]:
    """Around onnxruntime's dynamic quantization: its advice to pre-process the model first (shape
    inference, graph optimization) goes; the int8 model's deviation from PyTorch is measured and
    reported instead."""
    return dropping({"": [r"Please consider to run pre-processing before quantization"]})
