"""contract/repository.py: which folders are versions, what a version recorded, the tokenizer rule
and digest. Copies of the real export's tokenizer; no export, no server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from contract import repository as layout
from contract.dialogue import FIRST, SECOND

# -- contract/repository.py: which folders are versions -------------------------------------------


def test_versions_are_positive_integers_without_leading_zeros_sorted_numerically(tmp_path):
    for name in ("1", "2", "10", "01", "0", "007", ".staging-x1", "abc", "3a", "-4"):
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("a file is not a version")
    assert layout.versions(tmp_path) == [1, 2, 10]
    assert layout.newest(tmp_path) == tmp_path / "10"


def test_no_versions_in_a_missing_or_empty_folder(tmp_path):
    assert layout.versions(tmp_path / "missing") == [] and layout.newest(tmp_path / "missing") is None
    assert layout.versions(tmp_path) == [] and layout.newest(tmp_path) is None


def test_version_info_is_empty_when_missing_or_unreadable(tmp_path):
    (tmp_path / "1").mkdir()
    assert layout.version_info(tmp_path, 1) == {}
    (tmp_path / "1" / layout.VERSION_INFO).write_text("{not json")
    assert layout.version_info(tmp_path, 1) == {}
    (tmp_path / "1" / layout.VERSION_INFO).write_text("[1, 2]")
    assert layout.version_info(tmp_path, 1) == {}
    (tmp_path / "1" / layout.VERSION_INFO).write_text('{"version": 1}')
    assert layout.version_info(tmp_path, "1") == {"version": 1}


# -- the tokenizer rule ----------------------------------------------------------------------------


def edited(real_tokenizer: Path, folder: Path, change) -> Path:
    """A copy of the real tokenizer with `change(spec)` applied to its tokenizer.json."""
    shutil.copytree(real_tokenizer, folder)
    path = folder / "tokenizer.json"
    spec = json.loads(path.read_text(encoding="utf-8"))
    change(spec)
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return folder


def largest_id(folder: Path) -> int:
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    return max([*spec["model"]["vocab"].values(), *(t["id"] for t in spec["added_tokens"])])


def test_the_real_tokenizer_has_no_problems(real_tokenizer):
    size = largest_id(real_tokenizer) + 1
    assert layout.tokenizer_problems(real_tokenizer) == []
    assert layout.tokenizer_problems(real_tokenizer, vocab_size=size) == []


@pytest.mark.parametrize("marker", [FIRST, SECOND])
def test_a_tokenizer_without_a_turn_marker(real_tokenizer, tmp_path, marker):
    def drop(spec):
        assert marker in spec["model"]["vocab"]  # the real one has it in both places
        del spec["model"]["vocab"][marker]
        spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] != marker]

    folder = edited(real_tokenizer, tmp_path / "tok", drop)
    problems = layout.tokenizer_problems(folder)
    assert len(problems) == 1 and f"lacks the turn marker {marker}" in problems[0]


def test_a_tokenizer_larger_than_the_models_vocabulary(real_tokenizer):
    largest = largest_id(real_tokenizer)
    problems = layout.tokenizer_problems(real_tokenizer, vocab_size=largest)
    assert len(problems) == 1
    assert f"ids up to {largest}" in problems[0] and f"has {largest} logits" in problems[0]
    assert layout.tokenizer_problems(real_tokenizer, vocab_size=None) == []


def test_an_added_token_beyond_the_vocabulary_counts(real_tokenizer, tmp_path):
    size = largest_id(real_tokenizer) + 1

    def add(spec):
        spec["added_tokens"].append({**spec["added_tokens"][-1], "id": size, "content": "@@НОВЫЙ@@"})

    folder = edited(real_tokenizer, tmp_path / "tok", add)
    assert f"ids up to {size} " in layout.tokenizer_problems(folder, vocab_size=size)[0]


@pytest.mark.parametrize(
    "content",
    [None, "{not json", "[1, 2]", '{"model": null}', '{"added_tokens": [{"id": 1}]}', '{"added_tokens": 5}'],
    ids=["missing", "not-json", "a-list", "null-model", "token-without-content", "tokens-not-a-list"],
)
def test_a_broken_tokenizer_file_is_a_problem_not_an_exception(tmp_path, content):
    if content is not None:
        (tmp_path / "tokenizer.json").write_text(content)
    problems = layout.tokenizer_problems(tmp_path, vocab_size=100)
    assert len(problems) == 1 and str(tmp_path / "tokenizer.json") in problems[0]


def test_the_digest_covers_the_tokenizer_files_only(real_tokenizer, tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(real_tokenizer, folder)
    digest = layout.tokenizer_digest(folder)
    assert digest == layout.tokenizer_digest(real_tokenizer)  # the bytes, not the path

    (folder / "special_tokens_map.json").write_text("{}")  # not read by the bot
    (folder / "notes.txt").write_text("unrelated")
    assert layout.tokenizer_digest(folder) == digest

    path = folder / "tokenizer.json"
    path.write_bytes(path.read_bytes() + b" ")  # the same JSON, other bytes
    changed = layout.tokenizer_digest(folder)
    assert changed != digest

    config = folder / "tokenizer_config.json"
    config.write_bytes(config.read_bytes() + b" ")
    assert layout.tokenizer_digest(folder) not in (digest, changed)
