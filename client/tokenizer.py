"""The dialogue's tokenizer, and which model version's tokenizer the bot uses.

BOT_TOKENIZER_DIR names either the model's folder in the repository (model_repository/<name>,
what export writes: a tokenizer in every version folder) or one folder with tokenizer.json. With
the model's folder the bot follows the served version: a reply starts with the tokenizer of the
newest version it knows; when another version answers (Triton loaded a new one), that version's
tokenizer is loaded (checked with the rule of contract/repository.py) and the reply starts again.
With a plain tokenizer folder, the tokenizer never changes and any version is used with it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from client.transport import TritonRequestError
from contract import repository as layout
from contract.dialogue import FIRST

log = logging.getLogger(__name__)


class DialogueTokenizer:
    """tokenizer.json (as export wrote it) with the ids the dialogue needs."""

    def __init__(self, folder: Path):
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(
                f"no tokenizer at {path}: run `python -m export`, or pass --tokenizer "
                "(BOT_TOKENIZER_DIR) with the model's folder or a folder holding tokenizer.json"
            )
        self.tokenizer = Tokenizer.from_file(str(path))
        self.first_id = self.tokenizer.token_to_id(FIRST)
        if self.first_id is None:
            raise ValueError(f"{path} lacks the {FIRST} token: this is not a ruDialoGPT tokenizer")
        eos = (
            json.loads((folder / "tokenizer_config.json").read_text()).get("eos_token")
            if (folder / "tokenizer_config.json").exists()
            else None
        )
        eos = eos.get("content") if isinstance(eos, dict) else eos
        eos_id = self.tokenizer.token_to_id(eos) if eos else None
        self.stop_ids = tuple(i for i in (self.first_id, eos_id) if i is not None)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def keep_last(self, text: str, n: int) -> str:
        """The last `n` tokens of `text`, as text."""
        return self.decode(self.encode(text)[-n:]).strip()

    def decode(self, ids: list[int]) -> str:
        text: str = self.tokenizer.decode(ids, skip_special_tokens=True)
        return text


class TokenizerRefused(TritonRequestError):
    """The served version's tokenizer cannot be used by this bot; the message names the fix."""


@dataclass(frozen=True)
class Served:
    """A model version with the tokenizer its prompts are encoded with."""

    version: str | None  # Triton's version folder; None: a fixed tokenizer, any version
    tokenizer: DialogueTokenizer
    digest: str  # contract.repository.tokenizer_digest of its files ("" when not known)


OnChange = Callable[[str, str | None], None]  # (result, version): see ModelVersions.watch


class ModelVersions:
    """The tokenizer of the version being served: one log line and a metric per switch."""

    def __init__(self, current: Served, folder: Path | None = None):
        self.current = current
        self.folder = folder  # the model's folder; None: the tokenizer is fixed
        self.refused: dict[str, str] = {}  # version: why its tokenizer cannot be used
        self.on_change: OnChange | None = None

    @classmethod
    def open(cls, folder: Path) -> ModelVersions:
        """BOT_TOKENIZER_DIR: a folder with tokenizer.json (fixed), or the model's folder (followed,
        starting from its newest version with a tokenizer: the first answer corrects that)."""
        folder = Path(folder)
        if (folder / "tokenizer.json").exists():
            return cls(Served(None, DialogueTokenizer(folder), layout.tokenizer_digest(folder)))
        usable = [v for v in layout.versions(folder) if layout.tokenizer_dir(folder, v).is_dir()]
        if not usable:
            raise FileNotFoundError(
                f"no tokenizer under {folder}: BOT_TOKENIZER_DIR (--tokenizer) names the model's "
                "folder in the repository (model_repository/<name>, with the versions `python -m "
                "export` wrote) or a folder holding tokenizer.json"
            )
        errors = []
        for version in reversed(usable):  # the newest this bot can read (a newer one may be refused)
            try:
                return cls(_load(folder, str(version)), folder)
            except Exception as exc:  # tokenizers raises plain Exceptions for a broken file
                errors.append(f"version {version}: {exc}")
                log.error("model version %s's tokenizer cannot be used by this bot: %s", version, exc)
        raise ValueError(f"no tokenizer under {folder} that this bot can use ({'; '.join(errors)})")

    @classmethod
    def fixed(cls, tokenizer: DialogueTokenizer) -> ModelVersions:
        """One tokenizer for every version."""
        return cls(Served(None, tokenizer, ""))

    def watch(self, on_change: OnChange) -> None:
        """Call `on_change(result, version)` now ("current") and at every switch ("followed",
        "refused"): the bot's metrics."""
        self.on_change = on_change
        on_change("current", self.current.version)

    def follow(self, version: str) -> Served:
        """The tokenizer for `version`, made current; TokenizerRefused if the bot cannot use it."""
        old = self.current
        if self.folder is None or version == old.version:
            return old
        if version in self.refused:
            raise TokenizerRefused(self.refused[version])
        try:
            new = _load(self.folder, version)
        except Exception as exc:  # a missing file, a broken one (tokenizers raises Exception)
            why = (
                f"model version {version}'s tokenizer cannot be used by this bot ({exc}); replies "
                "fail until Triton serves a version this bot can read: roll back with `python -m "
                "export --rollback`, or update the bot"
            )
            self.refused[version] = why
            log.error("%s", why)
            self._tell("refused", version)
            raise TokenizerRefused(why) from exc
        same = new.digest == old.digest
        log.info(
            "model version %s -> %s: tokenizer %s (sha256 %s)",
            old.version,
            version,
            "unchanged" if same else "reloaded",
            new.digest[:12],
        )
        self.current = Served(version, old.tokenizer, old.digest) if same else new
        self._tell("followed", version)
        return self.current

    def _tell(self, result: str, version: str) -> None:
        if self.on_change:
            self.on_change(result, version)


def _load(folder: Path, version: str) -> Served:
    """Version `version`'s tokenizer, checked with contract/repository.py's rule."""
    path = layout.tokenizer_dir(folder, version)
    if problems := layout.tokenizer_problems(path):  # the graph's logits: model.py checked them
        raise ValueError("; ".join(problems))
    return Served(version, DialogueTokenizer(path), layout.tokenizer_digest(path))
