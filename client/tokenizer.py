"""The dialogue's tokenizer, and which model version's tokenizer the bot uses.

BOT_TOKENIZER_DIR names either the model's folder in the repository (model_repository/<name>,
what export writes: a tokenizer in every version folder) or one folder with tokenizer.json. With
the model's folder the bot follows the served version: when another version answers (Triton
loaded a new one), that version's tokenizer is loaded (checked with the rule of
contract/repository.py) and the reply starts again. With a plain tokenizer folder the tokenizer
never changes. Either way the tokenizer must be the one the served version was exported with:
Triton says which (its digest, client/transport.py's Serving), and a bot whose tokenizer differs
refuses to talk to it, naming the folder that matches, instead of sending it nonsense.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from client.transport import Serving, TritonRequestError
from contract import repository as layout
from contract.dialogue import FIRST

log = logging.getLogger(__name__)


class DialogueTokenizer:
    """tokenizer.json (as export wrote it) with the ids the dialogue needs."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        path = self.folder / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(
                f"no tokenizer at {path}: run `python -m export`, or pass --tokenizer "
                "(BOT_TOKENIZER_DIR) with the model's folder or a folder holding tokenizer.json"
            )
        self.tokenizer = Tokenizer.from_file(str(path))
        self.digest = layout.tokenizer_digest(self.folder)  # what export records for a version
        self.first_id = self.tokenizer.token_to_id(FIRST)
        if self.first_id is None:
            raise ValueError(f"{path} lacks the {FIRST} token: this is not a ruDialoGPT tokenizer")
        config = self.folder / "tokenizer_config.json"
        eos = json.loads(config.read_text()).get("eos_token") if config.exists() else None
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

    version: str | None  # Triton's version folder; None: not known yet (a fixed tokenizer)
    tokenizer: DialogueTokenizer


OnChange = Callable[[str, str | None], None]  # (result, version): see ModelVersions.watch


class ModelVersions:
    """The tokenizer of the version being served: one log line and a metric per switch."""

    def __init__(self, current: Served, folder: Path | None = None):
        self.current = current
        self.folder = folder  # the model's folder; None: the tokenizer is fixed
        self.refused: dict[str, str] = {}  # version: why this bot cannot use it
        self.on_change: OnChange | None = None

    @classmethod
    def open(cls, folder: Path) -> ModelVersions:
        """BOT_TOKENIZER_DIR: a folder with tokenizer.json (fixed), or the model's folder (followed,
        starting from its newest version with a tokenizer: the first answer corrects that)."""
        folder = Path(folder)
        if (folder / "tokenizer.json").exists():
            return cls.fixed(DialogueTokenizer(folder))
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
        return cls(Served(None, tokenizer))

    def watch(self, on_change: OnChange) -> None:
        """Call `on_change(result, version)` now ("current") and at every switch ("followed",
        "refused"): the bot's metrics."""
        self.on_change = on_change
        on_change("current", self.current.version)

    def follow(self, version: str) -> Served:
        """The tokenizer for `version`, made current; TokenizerRefused if the bot cannot use it."""
        old = self.current
        if version in self.refused:
            raise TokenizerRefused(self.refused[version])
        if self.folder is None or version == old.version:
            return old
        try:
            new = _load(self.folder, version)
        except Exception as exc:  # a missing file, a broken one (tokenizers raises Exception)
            raise self._refuse(
                version,
                f"model version {version}'s tokenizer cannot be used by this bot ({exc}); replies "
                "fail until Triton serves a version this bot can read: roll back with `python -m "
                "export --rollback`, or update the bot",
            ) from exc
        same = new.tokenizer.digest == old.tokenizer.digest
        log.info(
            "model version %s -> %s: tokenizer %s (sha256 %s)",
            old.version,
            version,
            "unchanged" if same else "reloaded",
            new.tokenizer.digest[:12],
        )
        self.current = Served(version, old.tokenizer) if same else new
        self._tell("followed", version)
        return self.current

    def check(self, serving: Serving) -> Served:
        """The tokenizer for the version Triton serves (follow()), refused (TokenizerRefused)
        where it is not the one that version was exported with."""
        served = self.follow(serving.version)
        mine = served.tokenizer
        if mine.digest != serving.tokenizer_sha256:
            model_folder = Path(serving.tokenizer_folder).parent.parent
            raise self._refuse(
                serving.version,
                f"Triton serves model version {serving.version}, exported with the tokenizer in "
                f"{serving.tokenizer_folder} (sha256 {serving.tokenizer_sha256[:12]}), but this bot "
                f"encodes with {mine.folder} (sha256 {mine.digest[:12]}): its prompts would be "
                f"nonsense to that model. Point --tokenizer (BOT_TOKENIZER_DIR) at the model's folder "
                f"of the repository Triton serves ({model_folder}, as the Triton host names it)",
            )
        return served

    def _refuse(self, version: str, why: str) -> TokenizerRefused:
        """Remember that `version` is refused and why (logged once); the error to raise."""
        self.refused[version] = why
        log.error("%s", why)
        self._tell("refused", version)
        return TokenizerRefused(why)

    def _tell(self, result: str, version: str) -> None:
        if self.on_change:
            self.on_change(result, version)


def _load(folder: Path, version: str) -> Served:
    """Version `version`'s tokenizer, checked with contract/repository.py's rule."""
    path = layout.tokenizer_dir(folder, version)
    if problems := layout.tokenizer_problems(path):  # the graph's logits: model.py checked them
        raise ValueError("; ".join(problems))
    return Served(version, DialogueTokenizer(path))
