"""export.replace.replace_dir: the old or the new directory is complete at every step, also on failure."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from export import replace


def tree(path: Path, marker: str) -> Path:
    (path / "1").mkdir(parents=True)
    (path / "config.pbtxt").write_text(marker)
    (path / "1" / "model.onnx").write_text(marker)
    return path


def contents(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


def test_replaces_an_existing_directory(tmp_path):
    final, new = tree(tmp_path / "m", "old"), tree(tmp_path / "staging" / "m", "new")
    replace.replace_dir(new, final)
    assert contents(final) == {"config.pbtxt": "new", "1/model.onnx": "new"}
    assert not new.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m", "staging"]


def test_first_export_is_a_plain_rename(tmp_path):
    new = tree(tmp_path / "staging" / "m", "new")
    replace.replace_dir(new, tmp_path / "m")
    assert contents(tmp_path / "m")["config.pbtxt"] == "new"


def test_a_failed_swap_leaves_the_old_model_whole(tmp_path, monkeypatch):
    final, new = tree(tmp_path / "m", "old"), tree(tmp_path / "staging" / "m", "new")

    def fail(a, b):
        raise OSError(errno.EIO, "disk error")

    monkeypatch.setattr(replace, "exchange", fail)
    with pytest.raises(OSError, match="disk error"):
        replace.replace_dir(new, final)
    assert contents(final) == {"config.pbtxt": "old", "1/model.onnx": "old"}


def test_fallback_puts_the_old_model_back_when_the_second_rename_fails(tmp_path, monkeypatch):
    # Where RENAME_EXCHANGE is missing: rename aside, then the new one in. The old code lost the
    # previous model when that second rename failed.
    final, new = tree(tmp_path / "m", "old"), tree(tmp_path / "staging" / "m", "new")
    monkeypatch.setattr(replace, "exchange", lambda a, b: (_ for _ in ()).throw(OSError(errno.EINVAL, "no")))
    real_rename = os.rename

    def rename(src, dst):
        if Path(src) == new:
            raise OSError(errno.EXDEV, "cross-device")
        real_rename(src, dst)

    monkeypatch.setattr(replace.os, "rename", rename)
    with pytest.raises(OSError, match="cross-device"):
        replace.replace_dir(new, final)
    assert contents(final) == {"config.pbtxt": "old", "1/model.onnx": "old"}


def test_fallback_replaces_when_nothing_fails(tmp_path, monkeypatch):
    final, new = tree(tmp_path / "m", "old"), tree(tmp_path / "staging" / "m", "new")
    monkeypatch.setattr(replace, "exchange", lambda a, b: (_ for _ in ()).throw(OSError(errno.ENOSYS, "no")))
    replace.replace_dir(new, final)
    assert contents(final)["config.pbtxt"] == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "staging"]
