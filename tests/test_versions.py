"""export/versions.py: version folders staged, published, pruned, rolled back and listed, and its CLI.
Fake version folders (a few files each) with a copy of the real export's tokenizer where one is
needed; no export, no server."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from contract import repository as layout
from export import versions
from export.__main__ import main
from export.versions import VersionError
from tests.helpers import MODEL

CONFIG = 'name: "rudialogpt"\nbackend: "python"\n'


def fill(folder: Path, tokenizer: Path | None = None) -> Path:
    """A version's files in miniature: Python modules in two package folders, a data folder without
    any, a weights file; with `tokenizer`, a copy of it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text("# the python backend's model\n")
    (folder / "model.onnx").write_bytes(b"onnx" * 64)
    (folder / "engine").mkdir(exist_ok=True)
    (folder / "engine" / "core.py").write_text("# engine\n")
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data" / "weights.bin").write_bytes(b"\0" * 16)
    if tokenizer is not None:
        shutil.copytree(tokenizer, folder / layout.TOKENIZER_DIR)
    return folder


def add_version(model_dir: Path, number: int, tokenizer: Path | None = None, **info) -> Path:
    """Version folder `number` as a past export left it (sealed, with its version.json)."""
    folder = fill(model_dir / str(number), tokenizer)
    versions.seal(folder)
    record = {"version": number, "written": f"2025-01-{number:02d}T00:00:00+0000", **info}
    (folder / layout.VERSION_INFO).write_text(json.dumps(record))
    return folder


@pytest.fixture
def repo(tmp_path, real_tokenizer) -> Path:
    """A model folder with config.pbtxt and versions 1, 2, 3, each with a tokenizer."""
    model_dir = tmp_path / "repo" / MODEL
    for n in (1, 2, 3):
        add_version(model_dir, n, real_tokenizer, checkpoint=f"ckpt-{n}")
    (model_dir / "config.pbtxt").write_text(CONFIG)
    return model_dir


def leftovers(model_dir: Path) -> list[str]:
    """Staging folders left in the model's folder or beside its repository."""
    beside = model_dir.parent.parent
    return sorted(
        p.name for p in [*model_dir.iterdir(), *beside.iterdir()] if layout.STAGING_PREFIX in p.name
    )


# -- publish ---------------------------------------------------------------------------------------


def test_publish_renames_the_staged_folder_to_the_next_number(repo, real_tokenizer, monkeypatch):
    staged = fill(versions.staging(repo), real_tokenizer)
    # Beside the repository (Triton polls it: a folder appearing in the model's folder reloads
    # the serving version), on its filesystem (the version is renamed from there).
    assert staged.parent == repo.parent.parent and layout.STAGING_PREFIX in staged.name
    assert os.stat(staged).st_dev == os.stat(repo).st_dev
    (staged / "engine" / "__pycache__").mkdir()  # what an import would have written
    (staged / "engine" / "__pycache__" / "core.cpython-311.pyc").write_bytes(b"pyc")
    seen_at_rename = []
    rename = os.rename

    def watched(src, dst):  # the version must be complete when it appears under its number
        src, dst = Path(src), Path(dst)
        seen_at_rename.append(
            (
                dst.exists(),
                json.loads((src / layout.VERSION_INFO).read_text())["version"],
                (src / "__pycache__").is_file(),
                (src / layout.TOKENIZER_DIR / "tokenizer.json").is_file(),
            )
        )
        rename(src, dst)

    monkeypatch.setattr(os, "rename", watched)

    number = versions.publish(staged, repo, CONFIG, {"checkpoint": "ckpt-new", "top1": 1.0}, keep=10)

    assert number == 4 and seen_at_rename == [(False, 4, True, True)]
    assert not staged.exists() and leftovers(repo) == []
    assert layout.versions(repo) == [1, 2, 3, 4]
    info = layout.version_info(repo, 4)
    assert info["version"] == 4 and info["checkpoint"] == "ckpt-new" and info["top1"] == 1.0
    assert info["written"]
    new = repo / "4"
    # sealed: a __pycache__ FILE where there are .py files (a directory there is replaced), none elsewhere
    assert (new / "__pycache__").is_file() and (new / "engine" / "__pycache__").is_file()
    assert not (new / "data" / "__pycache__").exists()
    assert not (new / layout.TOKENIZER_DIR / "__pycache__").exists()
    assert (new / "model.onnx").read_bytes() == b"onnx" * 64


def test_seal_makes_python_unable_to_write_bytecode(tmp_path):
    import py_compile

    fill(tmp_path)
    versions.seal(tmp_path)
    with pytest.raises((FileExistsError, NotADirectoryError)):
        py_compile.compile(str(tmp_path / "engine" / "core.py"), doraise=True)
    assert (tmp_path / "engine" / "__pycache__").read_bytes() == b""


def test_publish_writes_config_only_when_missing_or_changed(tmp_path):
    model_dir = tmp_path / "repo" / MODEL
    config = model_dir / "config.pbtxt"

    versions.publish(fill(versions.staging(model_dir)), model_dir, CONFIG, {})
    assert config.read_text() == CONFIG  # missing: written

    before = config.stat()
    versions.publish(fill(versions.staging(model_dir)), model_dir, CONFIG, {})
    after = config.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # equal: untouched

    versions.publish(fill(versions.staging(model_dir)), model_dir, CONFIG + "# changed\n", {})
    assert config.read_text() == CONFIG + "# changed\n"  # different: replaced
    assert layout.versions(model_dir) == [1, 2, 3] and leftovers(model_dir) == []


def test_publish_removes_the_legacy_tokenizer_folder(tmp_path, real_tokenizer):
    model_dir = tmp_path / "repo" / MODEL
    shutil.copytree(real_tokenizer, model_dir / layout.TOKENIZER_DIR)  # an export before versions
    number = versions.publish(fill(versions.staging(model_dir), real_tokenizer), model_dir, CONFIG, {})
    assert number == 1
    assert not (model_dir / layout.TOKENIZER_DIR).exists()
    assert (layout.tokenizer_dir(model_dir, 1) / "tokenizer.json").is_file()


def test_publish_takes_the_next_free_number_when_another_export_took_it(repo, monkeypatch):
    """Another export renames its version to 4 between this one's count and rename: this one is 5."""
    real = layout.versions
    calls = []

    def stale(model_dir):
        numbers = real(model_dir)
        if not calls:
            add_version(repo, 4, checkpoint="the other export")
        calls.append(numbers)
        return numbers

    monkeypatch.setattr(layout, "versions", stale)
    number = versions.publish(fill(versions.staging(repo)), repo, CONFIG, {"checkpoint": "mine"}, keep=10)
    assert calls[0] == [1, 2, 3]  # it counted before version 4 appeared
    assert number == 5
    assert layout.version_info(repo, 5)["version"] == 5
    assert layout.version_info(repo, 5)["checkpoint"] == "mine"
    assert layout.version_info(repo, 4)["checkpoint"] == "the other export"  # untouched
    assert leftovers(repo) == []


def test_publish_prunes_to_keep(repo):
    number = versions.publish(fill(versions.staging(repo)), repo, CONFIG, {}, keep=2)
    assert number == 4 and layout.versions(repo) == [3, 4]


# -- prune -----------------------------------------------------------------------------------------


def test_prune_keeps_the_highest_versions(tmp_path):
    for n in (1, 2, 3, 9, 10):
        add_version(tmp_path, n)
    assert versions.prune(tmp_path, 2) == [1, 2, 3]
    assert layout.versions(tmp_path) == [9, 10]
    assert versions.prune(tmp_path, 5) == []
    assert versions.prune(tmp_path, 1) == [9]
    assert layout.versions(tmp_path) == [10]


@pytest.mark.parametrize("keep", [0, -1])
def test_prune_refuses_to_keep_no_version(repo, keep):
    with pytest.raises(VersionError, match="--keep must be at least 1"):
        versions.prune(repo, keep)
    assert layout.versions(repo) == [1, 2, 3]


# -- rollback --------------------------------------------------------------------------------------


def test_rollback_publishes_the_second_highest_again_as_hard_links(repo):
    source_info = (repo / "2" / layout.VERSION_INFO).read_text()

    assert versions.rollback(repo) == 4

    copy, source = repo / "4", repo / "2"
    assert layout.versions(repo) == [2, 3, 4]  # pruned to DEFAULT_KEEP
    for name in ("model.onnx", "model.py", "engine/core.py", "data/weights.bin", "tokenizer/tokenizer.json"):
        assert (copy / name).stat().st_ino == (source / name).stat().st_ino, name
    assert (copy / "__pycache__").is_file() and (copy / "engine" / "__pycache__").is_file()
    # its own version.json: a new file; the source's is unchanged
    assert (copy / layout.VERSION_INFO).stat().st_ino != (source / layout.VERSION_INFO).stat().st_ino
    assert (source / layout.VERSION_INFO).read_text() == source_info
    info = layout.version_info(repo, 4)
    assert info["copy_of"] == 2 and info["rolled_back_from"] == 3
    assert info["checkpoint"] == "ckpt-2"  # what the source recorded comes along
    assert info["written"] != json.loads(source_info)["written"]
    assert leftovers(repo) == []


def test_a_rollbacks_version_json_holds_its_own_number(repo):
    assert versions.rollback(repo) == 4
    assert layout.version_info(repo, 4)["version"] == 4


def test_a_new_models_folder_appears_whole(tmp_path, real_tokenizer, monkeypatch):
    """The first export: config.pbtxt and version 1 appear in one rename of the model's folder."""
    model_dir = tmp_path / "repo" / MODEL
    seen = []
    rename = os.rename

    def watched(src, dst):
        if Path(dst) == model_dir:
            seen.append(sorted(p.name for p in Path(src).iterdir()))
        rename(src, dst)

    monkeypatch.setattr(os, "rename", watched)
    assert versions.publish(fill(versions.staging(model_dir)), model_dir, CONFIG, {}) == 1
    assert seen == [["1", "config.pbtxt"]] and leftovers(model_dir) == []


def test_staging_falls_back_inside_the_model_folder_on_another_filesystem(repo, monkeypatch, caplog):
    """Beside the repository is another filesystem (the repository is a mount): staged inside the
    model's folder instead, with a warning that the serving version is loaded once more."""
    real = os.stat
    beside = repo.parent.parent.resolve()
    monkeypatch.setattr(
        os, "stat", lambda p, *a, **k: os.stat_result((0,) * 10) if Path(p) == beside else real(p, *a, **k)
    )
    staged = versions.staging(repo)
    assert staged.parent == repo and "loads the serving version once more" in caplog.text
    assert versions.publish(fill(staged), repo, CONFIG, {}, keep=10) == 4


def test_rollback_to_an_explicit_version_and_keep(repo):
    assert versions.rollback(repo, 1, keep=2) == 4
    assert layout.versions(repo) == [3, 4]
    assert layout.version_info(repo, 4)["copy_of"] == 1
    assert (repo / "4" / "model.onnx").read_bytes() == b"onnx" * 64


def test_rollback_copies_where_hard_links_fail(repo, monkeypatch):
    def no_links(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    assert versions.rollback(repo) == 4
    copy, source = repo / "4" / "model.onnx", repo / "2" / "model.onnx"
    assert copy.read_bytes() == source.read_bytes() and copy.stat().st_ino != source.stat().st_ino


def remove_tokenizer(repo: Path) -> None:
    shutil.rmtree(layout.tokenizer_dir(repo, 2))


def keep_only_version_3(repo: Path) -> None:
    for n in (1, 2):
        shutil.rmtree(repo / str(n))


@pytest.mark.parametrize(
    "damage, to, message",
    [
        (keep_only_version_3, None, r"holds 1 version\(s\): nothing to roll back to .*--rollback N"),
        (None, 9, r"has no version 9: it holds \[1, 2, 3\]"),
        (remove_tokenizer, None, "version 2 holds no tokenizer .*export its checkpoint again"),
        (lambda repo: (repo / "config.pbtxt").unlink(), None, "no config.pbtxt: export a checkpoint into it"),
    ],
    ids=["one-version", "unknown-version", "no-tokenizer", "no-config"],
)
def test_rollback_errors_name_the_fix(repo, damage, to, message):
    if damage:
        damage(repo)
    before = layout.versions(repo)
    with pytest.raises(VersionError, match=message):
        versions.rollback(repo, to)
    assert layout.versions(repo) == before and leftovers(repo) == []


def test_rollback_of_an_empty_folder(tmp_path):
    with pytest.raises(VersionError, match="holds 0 version"):
        versions.rollback(tmp_path / "repo" / MODEL)


# -- describe and the CLI --------------------------------------------------------------------------


def test_describe_lists_versions_newest_first(repo):
    versions.rollback(repo, keep=10)
    (repo / "1" / layout.VERSION_INFO).unlink()
    lines = versions.describe(repo)
    assert [line.split()[0] for line in lines] == ["4", "3", "2", "1"]
    assert "copy of version 2 (ckpt-2)" in lines[0]
    assert "ckpt-3" in lines[1] and "copy of" not in lines[1]
    assert "?" in lines[3]  # no version.json: unknown, not an error


def cli(tmp_path: Path, *args: str) -> int:
    return main(["--repository", str(tmp_path / "repo"), *args])


def test_cli_list(tmp_path, real_tokenizer, capsys):
    assert cli(tmp_path, "--list") == 0
    assert "holds no versions: export a checkpoint first" in capsys.readouterr().out

    for n in (1, 2):
        add_version(tmp_path / "repo" / MODEL, n, real_tokenizer, checkpoint=f"ckpt-{n}")
    assert cli(tmp_path, "--list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["2", "1"] and "ckpt-2" in lines[0]


def test_cli_rollback(tmp_path, repo, capsys):
    assert cli(tmp_path, "--rollback") == 0
    assert capsys.readouterr().out.strip() == f"published {repo / '4'}: a copy of version 2"
    assert cli(tmp_path, "--rollback", "3", "--keep", "2") == 0
    assert capsys.readouterr().out.strip() == f"published {repo / '5'}: a copy of version 3"
    assert layout.versions(repo) == [4, 5]


def test_cli_rollback_error_is_rc_2_on_stderr(tmp_path, repo, capsys):
    assert cli(tmp_path, "--rollback", "9") == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("error: ") and "has no version 9" in out.err
    assert layout.versions(repo) == [1, 2, 3]


def test_cli_keep_0_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(tmp_path, "--keep", "0")
    assert exit_.value.code == 2
    assert "--keep must be at least 1, got 0" in capsys.readouterr().err


def test_cli_rollback_with_keep_0_publishes_nothing(tmp_path, repo, capsys):
    assert cli(tmp_path, "--rollback", "--keep", "0") == 2
    assert "--keep" in capsys.readouterr().err
    assert layout.versions(repo) == [1, 2, 3]
