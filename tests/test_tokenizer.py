"""client/tokenizer.py: which tokenizer the bot encodes with, and how it follows the served version.
Model folders with versions holding copies of the real export's tokenizer; no server."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from bot.metrics import Metrics
from client.tokenizer import DialogueTokenizer, ModelVersions, TokenizerRefused
from client.transport import TritonRequestError
from contract import repository as layout
from contract.dialogue import FIRST, SECOND
from tests.helpers import MODEL

NEW_WORD = "приветище"  # one token in a changed tokenizer, several in the real one


def add_version(model_dir: Path, number: int, tokenizer: Path | None) -> Path:
    """Version folder `number` with a copy of `tokenizer` (None: a version without one)."""
    folder = model_dir / str(number)
    folder.mkdir(parents=True)
    if tokenizer is not None:
        shutil.copytree(tokenizer, folder / layout.TOKENIZER_DIR)
    return folder


def with_new_word(real_tokenizer: Path, folder: Path) -> Path:
    """A copy of the real tokenizer with one added (ordinary) token."""
    shutil.copytree(real_tokenizer, folder)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert tok.add_tokens([NEW_WORD]) == 1
    tok.save(str(folder / "tokenizer.json"))
    return folder


def without(marker: str):
    """A copy of the real tokenizer without the turn marker `marker`."""

    def make(real_tokenizer: Path, folder: Path) -> Path:
        shutil.copytree(real_tokenizer, folder)
        path = folder / "tokenizer.json"
        spec = json.loads(path.read_text(encoding="utf-8"))
        del spec["model"]["vocab"][marker]
        spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] != marker]
        path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        return folder

    return make


def not_json(real_tokenizer: Path, folder: Path) -> Path:
    shutil.copytree(real_tokenizer, folder)
    (folder / "tokenizer.json").write_text('{"model": {"vocab": ')
    return folder


def switches(metrics: Metrics, result: str) -> float | None:
    return metrics.registry.get_sample_value("bot_model_switches_total", {"result": result})


def shown_version(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("bot_model_version")


def tokenizer_logs(caplog, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "client.tokenizer" and r.levelno == level]


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


# -- open ------------------------------------------------------------------------------------------


def test_a_plain_tokenizer_folder_is_fixed(real_tokenizer, metrics):
    versions = ModelVersions.open(real_tokenizer)
    versions.watch(metrics.model_changed)
    served = versions.current
    assert served.version is None and versions.folder is None
    assert served.tokenizer.digest == layout.tokenizer_digest(real_tokenizer)
    assert versions.follow("7") is served and versions.follow("8") is served
    assert versions.current is served
    assert switches(metrics, "followed") == 0 and switches(metrics, "refused") == 0
    assert shown_version(metrics) == 0


def test_fixed_uses_one_tokenizer_for_every_version(real_tokenizer):
    tok = DialogueTokenizer(real_tokenizer)
    versions = ModelVersions.fixed(tok)
    assert versions.follow("3").tokenizer is tok and versions.current.version is None


def test_a_model_folder_starts_at_its_newest_version_with_a_tokenizer(tmp_path, real_tokenizer, metrics):
    model_dir = tmp_path / MODEL
    add_version(model_dir, 1, real_tokenizer)
    add_version(model_dir, 2, with_new_word(real_tokenizer, tmp_path / "changed"))
    add_version(model_dir, 3, None)  # an export before versions held tokenizers: skipped
    (model_dir / "07").mkdir()  # not a version
    versions = ModelVersions.open(model_dir)
    versions.watch(metrics.model_changed)
    assert versions.folder == model_dir and versions.current.version == "2"
    assert len(versions.current.tokenizer.encode(NEW_WORD)) == 1  # version 2's tokenizer
    assert versions.current.tokenizer.digest == layout.tokenizer_digest(layout.tokenizer_dir(model_dir, 2))
    assert shown_version(metrics) == 2


@pytest.mark.parametrize("versions_there", [[], [1, 2]], ids=["empty", "versions-without-tokenizer"])
def test_a_folder_without_a_tokenizer_names_the_setting(tmp_path, versions_there):
    model_dir = tmp_path / MODEL
    model_dir.mkdir()
    for n in versions_there:
        add_version(model_dir, n, None)
    with pytest.raises(FileNotFoundError, match="BOT_TOKENIZER_DIR"):
        ModelVersions.open(model_dir)


# -- follow ----------------------------------------------------------------------------------------


@pytest.fixture
def model_dir(tmp_path, real_tokenizer) -> Path:
    """A model folder that held only version 1 when the bot opened it (tests add version 2)."""
    model_dir = tmp_path / MODEL
    add_version(model_dir, 1, real_tokenizer)
    return model_dir


@pytest.fixture
def followed(model_dir, metrics) -> ModelVersions:
    versions = ModelVersions.open(model_dir)
    versions.watch(metrics.model_changed)
    assert versions.current.version == "1"
    return versions


def test_following_a_version_with_the_same_tokenizer_keeps_it(
    model_dir, real_tokenizer, followed, metrics, caplog
):
    caplog.set_level(logging.INFO, logger="client.tokenizer")
    old = followed.current
    add_version(model_dir, 2, real_tokenizer)

    served = followed.follow("2")

    assert served is followed.current and served.version == "2"
    assert served.tokenizer is old.tokenizer and served.tokenizer.digest == old.tokenizer.digest
    assert followed.follow("2") is served  # the current version: nothing happens
    assert switches(metrics, "followed") == 1 and switches(metrics, "refused") == 0
    assert shown_version(metrics) == 2
    [line] = tokenizer_logs(caplog, logging.INFO)
    assert "1 -> 2" in line and "unchanged" in line
    assert tokenizer_logs(caplog, logging.ERROR) == []


def test_following_a_version_with_another_tokenizer_loads_it(
    model_dir, real_tokenizer, followed, metrics, caplog, tmp_path
):
    caplog.set_level(logging.INFO, logger="client.tokenizer")
    old = followed.current
    add_version(model_dir, 2, with_new_word(real_tokenizer, tmp_path / "changed"))

    served = followed.follow("2")

    assert served.version == "2" and served.tokenizer is not old.tokenizer
    assert served.tokenizer.digest != old.tokenizer.digest
    assert len(served.tokenizer.encode(NEW_WORD)) == 1 < len(old.tokenizer.encode(NEW_WORD))
    assert switches(metrics, "followed") == 1 and shown_version(metrics) == 2
    [line] = tokenizer_logs(caplog, logging.INFO)
    assert "1 -> 2" in line and "reloaded" in line

    back = followed.follow("1")  # a rollback's copy answers: version 1's tokenizer again
    assert back.version == "1" and back.tokenizer.digest == old.tokenizer.digest
    assert switches(metrics, "followed") == 2 and shown_version(metrics) == 1


@pytest.mark.parametrize(
    "broken",
    [without(FIRST), without(SECOND), not_json, None],
    ids=["no-first-marker", "no-second-marker", "not-json", "no-tokenizer"],
)
def test_a_version_whose_tokenizer_is_broken_is_refused_once(
    model_dir, real_tokenizer, followed, metrics, caplog, tmp_path, broken
):
    caplog.set_level(logging.INFO, logger="client.tokenizer")
    old = followed.current
    add_version(model_dir, 2, broken(real_tokenizer, tmp_path / "broken") if broken else None)

    with pytest.raises(TokenizerRefused) as refused:
        followed.follow("2")

    assert isinstance(refused.value, TritonRequestError)  # the bot answers «unavailable», no crash
    assert "python -m export --rollback" in str(refused.value) and "version 2" in str(refused.value)
    [line] = tokenizer_logs(caplog, logging.ERROR)
    assert line == str(refused.value)
    assert switches(metrics, "refused") == 1 and switches(metrics, "followed") == 0
    assert followed.current is old and shown_version(metrics) == 1

    with pytest.raises(TokenizerRefused) as again:  # remembered: no second log line, no second count
        followed.follow("2")
    assert str(again.value) == str(refused.value)
    assert len(tokenizer_logs(caplog, logging.ERROR)) == 1
    assert switches(metrics, "refused") == 1
    assert followed.current is old
    assert tokenizer_logs(caplog, logging.INFO) == []
