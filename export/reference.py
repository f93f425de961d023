"""optimum's standard ONNX export of the checkpoint: the reference the serving graph is checked against.

optimum (`main_export`, task text-generation-with-past) traces GPT-2 from PyTorch the standard
way: attention over a past that each call concatenates, and logits at every position. Run with an
empty past over a whole text in one call, it gives the logits after each of its positions, which
the exporter compares with the serving graph's (export/verify.py: `Served.against`): two ONNX
graphs made independently from the same weights (one traced, one written with `onnx.helper`),
both in onnxruntime, on the same token ids. Nothing of it is served.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TASK = "text-generation-with-past"

# optimum's tensor names for GPT-2 (task text-generation-with-past): the serving graph's
# (contract/triton_io.py) happen to share the first four, but the two graphs are fed differently.
INPUT_IDS = "input_ids"  # int64 [batch, new tokens]
ATTENTION_MASK = "attention_mask"  # int64 [batch, past + new tokens]: 1 for a real token
POSITION_IDS = "position_ids"  # int64 [batch, new tokens]
LOGITS = "logits"  # [batch, new tokens, vocab]: after every new token
PAST_PREFIX = "past_key_values."  # + "N.key", "N.value": layer N's past, [batch, heads, past, head_dim]


def export(checkpoint: Path, folder: Path) -> Path:
    """optimum's export of `checkpoint` (fp32) into `folder`; the ONNX file's path."""
    from optimum.exporters.onnx import main_export

    from export import quiet

    with quiet.optimum_export():
        main_export(str(checkpoint), output=folder, task=TASK, do_validation=False)
    return Path(folder) / "model.onnx"


def logits(onnx_path: Path, texts: list[list[int]]) -> list[np.ndarray]:
    """optimum's graph over each text (token ids) in one call with an empty past: float32
    [len(text), vocab] each, the logits after every position."""
    from engine.core import make_session

    session = make_session(str(onnx_path))
    dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
    empty = {  # [batch 1, heads, 0 positions, head_dim] per layer, keys and values
        i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), dtype[i.type])
        for i in session.get_inputs()
        if i.name.startswith(PAST_PREFIX)
    }
    out = []
    for ids in texts:
        n = len(ids)
        feed = {
            INPUT_IDS: np.array([ids], np.int64),
            ATTENTION_MASK: np.ones((1, n), np.int64),
            POSITION_IDS: np.arange(n, dtype=np.int64)[None],
            **empty,
        }
        out.append(session.run([LOGITS], feed)[0][0].astype(np.float32))
    return out
