"""The model repository's layout and the tokenizer rule: what export writes, Triton loads, the bot reads.

    model_repository/<name>/config.pbtxt        one config for all versions (version_policy latest 1)
    model_repository/<name>/<N>/                 a version: model.onnx, model.py (Triton's entry,
                                                 one import of engine.model), engine/ and contract/
                                                 (the packages, copied whole), tokenizer/ (what the
                                                 bot encodes with), version.json
    <repository's parent>/.<repository>.staging-*/  an export being written, beside the repository
                                                 (anything new inside the model's folder makes
                                                 Triton load the serving version again)

Triton loads the highest version number; the bot reads the tokenizer of the version that answered
it. A version's tokenizer must pass `tokenizer_problems` against its graph's vocabulary: export
checks it before a version is written, model.py again before a version serves (a refused version
fails to load and the one before keeps serving), the bot when it follows a version. Standard
library only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from contract.dialogue import FIRST, SECOND

TOKENIZER_DIR = "tokenizer"  # in a version folder: tokenizer.json and tokenizer_config.json
VERSION_INFO = "version.json"  # in a version folder: what export recorded (source, checks, digest)
STAGING_PREFIX = ".staging-"  # an export being written (beside the repository, see export/versions.py)
CODE_PACKAGES = ("engine", "contract")  # copied whole into every version: what model.py imports
ENTRY_FILE = "model.py"  # the file Triton's python backend loads from a version folder
ENTRY_SOURCE = "from engine.model import TritonPythonModel  # noqa: F401  (the engine package beside it)\n"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")  # what the digest covers


def versions(model_dir: Path) -> list[int]:
    """The version numbers in `model_dir`, oldest first: the folders Triton takes for versions
    (a positive integer without leading zeros)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isascii() and p.name.isdigit() and p.name[0] != "0"
    )


def newest(model_dir: Path) -> Path | None:
    """The highest version's folder (what Triton serves once loaded); None without versions."""
    numbers = versions(model_dir)
    return version_dir(model_dir, numbers[-1]) if numbers else None


def version_dir(model_dir: Path, version: int | str) -> Path:
    return Path(model_dir) / str(version)


def tokenizer_dir(model_dir: Path, version: int | str) -> Path:
    return version_dir(model_dir, version) / TOKENIZER_DIR


def tokenizer_digest(folder: Path) -> str:
    """sha256 over the tokenizer's files (name and bytes): equal digests encode alike."""
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = Path(folder) / name
        if path.exists():
            h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _token_ids(spec: dict[str, Any]) -> dict[str, int]:
    """Every token of a tokenizer.json with its id: the model's vocabulary and the added tokens."""
    vocab = spec.get("model", {}).get("vocab", {})
    ids = dict(vocab) if isinstance(vocab, dict) else {}
    for added in spec.get("added_tokens", []):
        ids[added["content"]] = int(added["id"])
    return ids


def tokenizer_problems(folder: Path, vocab_size: int | None = None) -> list[str]:
    """Why the tokenizer in `folder` cannot drive a model of `vocab_size` logits; [] when it can.

    The dialogue needs both turn markers as single tokens (contract/dialogue.py), and every id
    the tokenizer can produce must have a logit (a larger vocabulary would feed the model ids it
    has no embedding for; None: not checked, for who does not know the graph)."""
    folder = Path(folder)
    path = folder / "tokenizer.json"
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        ids = {token: int(i) for token, i in _token_ids(spec).items()}
    except FileNotFoundError:
        return [f"no {path}: export writes it beside the model"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return [f"{path} is not a tokenizer.json ({exc.__class__.__name__}: {exc})"]
    problems = [
        f"it lacks the turn marker {m}: not a ruDialoGPT tokenizer" for m in (FIRST, SECOND) if m not in ids
    ]
    largest = max(ids.values(), default=-1)
    if vocab_size is not None and largest >= vocab_size:
        problems.append(
            f"it has ids up to {largest} but the model has {vocab_size} logits: tokenizer and "
            "model come from different checkpoints"
        )
    return problems


def version_info(model_dir: Path, version: int | str) -> dict[str, Any]:
    """What export recorded about a version ({} when the file is missing or unreadable)."""
    try:
        info = json.loads((version_dir(model_dir, version) / VERSION_INFO).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}
