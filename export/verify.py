"""The exporter's checks: the serving graph's logits, computed the way Triton serves them, against
PyTorch's and against optimum's export's (export/reference.py) at the same positions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.dialogue import build_prompt

SAMPLE_TURNS = [
    "Привет! Как прошли выходные?",
    "Отлично, ездили за город.",
    "Здорово! А погода была хорошая?",
]
SAMPLE_REPLY = " Да, солнечно и тепло весь день."
SECOND_TURNS = ["Что посоветуешь почитать?"]
SECOND_REPLY = " Возьми что-нибудь из Чехова, рассказы короткие."


@dataclass
class Texts:
    """Token ids of the sample dialogues, their prompt lengths and PyTorch's logits at every position."""

    ids: list[list[int]]
    prompt_lens: list[int]
    logits: list[np.ndarray]  # [len(ids[k]), vocab] each


@dataclass
class Deviation:
    max_abs: float  # max |Δlogit| over every checked position
    top1: float  # share of checked positions where both pick the same most likely token


def torch_reference(checkpoint: Path) -> Texts:
    """The sample dialogues tokenized and run through the checkpoint in PyTorch (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    texts = Texts([], [], [])
    for turns, reply in ((SAMPLE_TURNS, SAMPLE_REPLY), (SECOND_TURNS, SECOND_REPLY)):
        prompt = build_prompt(turns)
        ids = tok(prompt + reply)["input_ids"]
        with torch.no_grad():
            texts.logits.append(model(torch.tensor([ids])).logits[0].numpy())
        texts.ids.append(ids)
        texts.prompt_lens.append(len(tok(prompt)["input_ids"]))
    return texts


def compare(served: dict[int, np.ndarray], reference: np.ndarray) -> Deviation:
    """`served` maps a position to the logits after it; compared with `reference`'s (PyTorch's or
    optimum's, [positions, vocab]) at the same positions."""
    got = np.stack([served[p].reshape(-1) for p in sorted(served)])
    want = reference[sorted(served)]
    return Deviation(float(np.abs(got - want).max()), float(np.mean(got.argmax(-1) == want.argmax(-1))))


def worst(devs: list[Deviation]) -> Deviation:
    return Deviation(max(d.max_abs for d in devs), min(d.top1 for d in devs))


def _logits(engine, steps) -> list[np.ndarray]:
    """The whole row of logits after each step (`engine.logits`), raising a step's error."""
    out = engine.logits(steps)
    for logits in out:
        if isinstance(logits, Exception):
            raise logits
    return out


def served_path(engine, ids: list[int], prompt_len: int) -> dict[int, np.ndarray]:
    """One sequence as Triton serves it: the prompt in one step, then one token per step."""
    from engine.core import Step

    out = {prompt_len - 1: _logits(engine, [Step(1, np.array(ids[:prompt_len]), 0)])[0]}
    for p in range(prompt_len, len(ids)):
        out[p] = _logits(engine, [Step(1, np.array([ids[p]]), p, end=p == len(ids) - 1)])[0]
    return out


def served_ragged(engine, texts: Texts, chunk: int = 3) -> list[dict[int, np.ndarray]]:
    """Both dialogues at once, ragged: the first decodes token by token after its prompt while the
    second joins on its second step and feeds its prompt in chunks of `chunk` tokens, so calls
    mix a prompt chunk with single tokens at different context lengths; rows skip steps too."""
    from engine.core import Step

    a, b = texts.ids
    pa = texts.prompt_lens[0]
    out: list[dict[int, np.ndarray]] = [{}, {}]
    cursor = [pa, 0]  # next position to feed
    out[0][pa - 1] = _logits(engine, [Step(1, np.array(a[:pa]), 0)])[0]
    round_no = 0
    while cursor[0] < len(a) or cursor[1] < len(b):
        round_no += 1
        steps, owners = [], []
        if cursor[0] < len(a) and round_no % 4 != 3:  # sequence 1 skips every fourth step
            steps.append(Step(1, np.array([a[cursor[0]]]), cursor[0], end=cursor[0] == len(a) - 1))
            owners.append((0, cursor[0], 1))
        if round_no >= 2 and cursor[1] < len(b):
            n = chunk if cursor[1] < texts.prompt_lens[1] else 1
            piece = b[cursor[1] : cursor[1] + n]
            steps.append(Step(2, np.array(piece), cursor[1], end=cursor[1] + len(piece) == len(b)))
            owners.append((1, cursor[1], len(piece)))
        for (k, at, n), logits in zip(owners, _logits(engine, steps), strict=True):
            out[k][at + n - 1] = logits
            cursor[k] = at + n
    return out


@dataclass
class Served:
    """The serving graph over the sample dialogues, the way Triton serves them: each alone on the
    served path, then both at once, ragged; and its candidates against its own whole rows."""

    runs: list[tuple[int, dict[int, np.ndarray]]]  # (text index, position → logits after it) per run
    candidates: Deviation

    def against(self, reference: list[np.ndarray]) -> Deviation:
        """Every served position's logits against `reference`'s ([positions, vocab] per text)."""
        return worst([compare(served, reference[k]) for k, served in self.runs])


def serve(onnx_path: Path, texts: Texts, provider: str = "cpu") -> Served:
    """The serving graph at `onnx_path` on the served path and ragged (fresh engines, no decode graphs)."""
    from engine.core import KVEngine, make_session

    session = make_session(str(onnx_path), provider)
    length = max(len(ids) for ids in texts.ids)

    def engine(slots: int) -> KVEngine:
        return KVEngine(session, slots=slots, slot_length=length, decode_graphs="off")

    runs = [
        (k, served_path(engine(1), ids, n))
        for k, (ids, n) in enumerate(zip(texts.ids, texts.prompt_lens, strict=True))
    ]
    runs += list(enumerate(served_ragged(engine(3), texts)))
    return Served(runs, check_candidates(engine(1), texts))


def check_graph(onnx_path: Path, texts: Texts, provider: str = "cpu") -> Deviation:
    """The serving graph on the served path and ragged, against PyTorch: the worst deviation."""
    served = serve(onnx_path, texts, provider)
    return worst([served.against(texts.logits), served.candidates])


def check_candidates(engine, texts: Texts) -> Deviation:
    """The graph's candidates against its own whole row after each prompt: their logits must be
    the row's K largest, at their ids (the deviation is 0 when they are)."""
    from engine.core import Step

    worst_gap = 0.0
    for ids, n in zip(texts.ids, texts.prompt_lens, strict=True):
        out = engine.step([Step(1, np.array(ids[:n]), 0, end=True, full=True)])
        row, top_ids, top = out.logits(0), out.top_ids[0], out.top_logits[0]
        largest = np.sort(row)[::-1][: top.size]
        worst_gap = max(
            worst_gap, float(np.abs(row[top_ids] - top).max()), float(np.abs(largest - top).max())
        )
    return Deviation(worst_gap, 1.0)
