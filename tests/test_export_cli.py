"""`python -m export`'s refusals before any work: a repository that is a file, a rollback to the newest."""

from __future__ import annotations

import pytest

from contract import repository as layout
from export import export, versions
from export.__main__ import main
from export.versions import VersionError
from tests.helpers import MODEL
from tests.test_versions import add_version


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "model_repository"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize("mode", [[], ["--list"], ["--rollback"]])
def test_a_repository_that_is_a_file_is_refused_first(a_file, tmp_path, capsys, mode):
    # --checkpoint names no model: an export that got that far would fail on it instead
    assert main(["--checkpoint", str(tmp_path / "none"), "--repository", str(a_file), *mode]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == (
        f"error: --repository {a_file}: {a_file} is a file, not a folder; pass the model repository's "
        "folder (e.g. model_repository; created if missing)\n"
    )


def test_a_file_in_the_repositorys_path_or_as_the_models_folder(a_file, tmp_path):
    with pytest.raises(VersionError, match=f"{a_file} is a file, not a folder"):
        versions.check_repository(a_file / "deeper", MODEL)
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / MODEL).write_text("")
    with pytest.raises(VersionError, match=f"{tmp_path / 'repo' / MODEL} is a file"):
        versions.check_repository(tmp_path / "repo", MODEL)
    versions.check_repository(tmp_path / "new" / "repo", MODEL)  # missing: export creates it


def test_export_itself_refuses_a_file_before_the_work(a_file, tmp_path):
    with pytest.raises(VersionError, match="is a file, not a folder"):
        export(tmp_path / "no-checkpoint", a_file)


def test_rollback_to_the_newest_publishes_nothing(tmp_path, real_tokenizer, capsys):
    model_dir = tmp_path / "repo" / MODEL
    for n in (1, 2):
        add_version(model_dir, n, real_tokenizer)
    (model_dir / "config.pbtxt").write_text('name: "rudialogpt"\n')
    assert main(["--repository", str(tmp_path / "repo"), "--rollback", "2"]) == 0
    assert capsys.readouterr().out == (
        f"version 2 of {model_dir} is the newest already: nothing published (--list shows the versions)\n"
    )
    assert layout.versions(model_dir) == [1, 2]
    assert versions.rollback(model_dir) == 3  # version 1 again, as 3
    with pytest.raises(versions.AlreadyNewest, match=r"version 1 of .* is what the newest, 3, holds"):
        versions.rollback(model_dir, 1)
    assert layout.versions(model_dir) == [1, 2, 3]
