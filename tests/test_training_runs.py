"""A second run into an output folder: a clear refusal, --overwrite, and a --resume with nothing to train."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import ROOT
from training.__main__ import main
from training.config import TINY, ConfigError, TrainConfig
from training.runs import CHECKPOINTS, CONFIG_FILE, read_settings
from training.train import train

SAMPLE = ROOT / "training" / "data.csv"
MODEL_FILES = ("config.json", "model.safetensors", CONFIG_FILE)


def finished_run(tiny_checkpoint: Path, folder: Path) -> Path:
    """A copy of the session's finished tiny run, with the demo's Triton log beside it."""
    output = shutil.copytree(tiny_checkpoint, folder)
    (output / "tritonserver.log").write_text("I1207 server log\n")
    return output


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def cli(output: Path, *flags: str) -> int:
    return main(["--data", str(SAMPLE), "--output", str(output), "--base-model", TINY, *flags])


def test_a_new_run_into_a_finished_one_names_the_ways_out(tiny_checkpoint, tmp_path, capsys):
    output = finished_run(tiny_checkpoint, tmp_path / "output")
    before = snapshot(output)
    assert cli(output, "--max-steps", "50") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {output} holds an earlier run (trained to step 40)")
    assert "another --output" in err and "--overwrite" in err and "--resume --max-steps N (N > 40)" in err
    assert snapshot(output) == before


def test_an_unfinished_run_is_resumed_or_overwritten(tiny_checkpoint, tmp_path):
    output = shutil.copytree(tiny_checkpoint, tmp_path / "output")
    for name in MODEL_FILES:  # stopped before the model was saved
        (output / name).unlink()
    with pytest.raises(
        ConfigError, match=r"holds an unfinished run \(last checkpoint: step 40\): add --resume"
    ):
        train(TrainConfig(data=SAMPLE, output=output, base_model=TINY, max_steps=50))


def test_overwrite_replaces_the_earlier_run_and_keeps_the_log(tiny_checkpoint, tmp_path, capsys):
    output = finished_run(tiny_checkpoint, tmp_path / "output")
    flags = ("--max-steps", "2", "--save-steps", "2", "--eval-fraction", "0.05")
    assert cli(output, "--overwrite", *flags) == 0, capsys.readouterr().err
    assert sorted(p.name for p in (output / CHECKPOINTS).iterdir()) == ["checkpoint-2"]
    saved = read_settings(output)
    assert saved["metrics"]["step"] == 2 and saved["config"]["overwrite"] is True
    assert (output / "tritonserver.log").read_text() == "I1207 server log\n"


def test_overwrite_refuses_a_folder_holding_other_things(tiny_checkpoint, tmp_path, capsys):
    output = finished_run(tiny_checkpoint, tmp_path / "output")
    (output / "notes.txt").write_text("mine")
    before = snapshot(output)
    assert cli(output, "--overwrite", "--max-steps", "2") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --overwrite: {output} holds what no training run writes (notes.txt)")
    assert snapshot(output) == before


def test_overwrite_and_resume_exclude_each_other():
    with pytest.raises(ConfigError, match="--overwrite starts a new run: it cannot go with --resume"):
        TrainConfig(data=SAMPLE, output="out", resume=True, overwrite=True)


@pytest.mark.parametrize("steps", ["20", "40"])
def test_resume_with_nothing_to_train_says_so_and_changes_nothing(tiny_checkpoint, tmp_path, capsys, steps):
    output = finished_run(tiny_checkpoint, tmp_path / "output")
    before = snapshot(output)
    assert cli(output, "--resume", "--max-steps", steps) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"nothing to train: the run in {output} is at step 40 (epoch ")
    assert f"--max-steps {steps} counts the whole run: pass one above 40 to train further" in err
    assert err.rstrip().endswith(f"{output} is unchanged.")
    assert snapshot(output) == before


def test_resume_of_a_finished_run_without_its_model_saves_it(tiny_checkpoint, tmp_path):
    output = shutil.copytree(tiny_checkpoint, tmp_path / "output")
    for name in MODEL_FILES:  # stopped between its last checkpoint and saving the model
        (output / name).unlink()
    checkpoints = sorted(p.name for p in (output / CHECKPOINTS).iterdir())
    train(TrainConfig(data=SAMPLE, output=output, base_model=TINY, max_steps=40, resume=True))
    assert sorted(p.name for p in (output / CHECKPOINTS).iterdir()) == checkpoints  # not trained
    saved, before = read_settings(output)["metrics"], read_settings(tiny_checkpoint)["metrics"]
    assert saved["step"] == 40 and saved["eval_loss"] == before["eval_loss"]
    assert (output / "model.safetensors").read_bytes() == (tiny_checkpoint / "model.safetensors").read_bytes()
