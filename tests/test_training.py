"""training/: a tiny offline run end to end, reloading, resuming and the CLI's errors."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from contract.dialogue import FIRST, MARKERS, SECOND, build_prompt
from tests.helpers import ROOT
from training.__main__ import main, parse_args
from training.config import TINY, ConfigError, TrainConfig
from training.data import collator, load_examples
from training.tiny import build_tiny
from training.train import CHECKPOINTS, CONFIG_FILE, load_base, train, trained_on

SAMPLE = ROOT / "training" / "data.csv"
PROMPTS = [
    build_prompt(["Привет!"]),
    build_prompt(["", "Какая сегодня погода?", "Солнечно ☀️, а у тебя?"]),
    build_prompt(['Он сказал: "да"', "ну и ну\nвот так", f"взлом {FIRST} {SECOND}"]),
]


def settings(folder: Path) -> dict:
    """A folder's training_config.json."""
    return json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))


# `tiny_checkpoint` (session fixture in tests/conftest.py): a tiny model trained on the sample.


def test_training_lowers_eval_loss(tiny_checkpoint):
    saved = settings(tiny_checkpoint)
    metrics, steps = saved["metrics"], saved["config"]["max_steps"]
    assert metrics["step"] == steps and metrics["eval_step"] == steps
    assert metrics["eval_loss"] < metrics["eval_loss_before"] - 0.5
    assert metrics["perplexity"] < metrics["perplexity_before"]
    assert metrics["train_rows"] + metrics["eval_rows"] == len(load_examples(SAMPLE).pairs)
    assert metrics["eval_rows"] == round(0.1 * len(load_examples(SAMPLE).pairs))


def test_output_and_checkpoints_carry_their_settings(tiny_checkpoint):
    saved = settings(tiny_checkpoint)["config"]
    assert saved["base_model"] == TINY and saved["data"] == str(SAMPLE)
    assert TrainConfig(**saved).to_json() == saved
    checkpoints = sorted((tiny_checkpoint / CHECKPOINTS).iterdir(), key=lambda p: int(p.name.split("-")[1]))
    assert 1 <= len(checkpoints) <= 2 and checkpoints[-1].name == f"checkpoint-{saved['max_steps']}"
    for checkpoint in checkpoints:
        carried = settings(checkpoint)
        assert carried["config"] == saved
        assert f"checkpoint-{carried['metrics']['eval_step']}" == checkpoint.name
        assert (checkpoint / "tokenizer.json").is_file() and (checkpoint / "model.safetensors").is_file()


def test_saved_model_reloads_and_generates(tiny_checkpoint):
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    inputs = tokenizer(PROMPTS[1], return_tensors="pt")
    assert set(inputs) == {"input_ids", "attention_mask"}
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    n_prompt = inputs["input_ids"].shape[1]
    assert out.shape[0] == 1 and n_prompt < out.shape[1] <= n_prompt + 5
    assert model.generation_config.eos_token_id[0] == tokenizer.convert_tokens_to_ids(FIRST)
    assert model.config.pad_token_id == tokenizer.pad_token_id


def test_tokenizer_json_matches_transformers(tiny_checkpoint):
    plain = Tokenizer.from_file(str(tiny_checkpoint / "tokenizer.json"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    for prompt in PROMPTS:
        assert plain.encode(prompt).ids == tokenizer(prompt)["input_ids"]
    for marker in MARKERS:
        assert plain.encode(marker).ids == [plain.token_to_id(marker)] == tokenizer(marker)["input_ids"]
    assert plain.decode(plain.encode(PROMPTS[1]).ids, skip_special_tokens=False) == PROMPTS[1]


def test_build_tiny_is_small_and_deterministic():
    texts = ["@@ПЕРВЫЙ@@ привет @@ВТОРОЙ@@ привет, как дела? @@ПЕРВЫЙ@@"] * 20
    (model, tokenizer), (again, tokenizer2) = build_tiny(texts, seed=1), build_tiny(texts, seed=1)
    assert tokenizer.get_vocab() == tokenizer2.get_vocab()
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    other = build_tiny(texts, seed=2)[0]
    assert not torch.equal(model.transformer.wte.weight, other.transformer.wte.weight)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_resume_continues_from_the_last_checkpoint(tiny_checkpoint, tmp_path, caplog):
    output = shutil.copytree(tiny_checkpoint, tmp_path / "model")
    before = settings(tiny_checkpoint)
    steps = before["config"]["max_steps"]
    cfg = TrainConfig(
        **{**before["config"], "output": output, "max_steps": steps + 10, "resume": True, "batch_size": 4}
    )
    with caplog.at_level(logging.WARNING, logger="training.train"):
        train(cfg)
    changed = [r.getMessage() for r in caplog.records if "settings other than" in r.getMessage()]
    assert len(changed) == 1 and changed[0].endswith("saved with: batch_size")
    metrics = settings(output)["metrics"]
    assert metrics["step"] == steps + 10
    assert metrics["eval_loss_before"] == before["metrics"]["eval_loss_before"]
    assert metrics["eval_loss"] < before["metrics"]["eval_loss_before"]
    names = sorted(p.name for p in (output / CHECKPOINTS).iterdir())
    assert names == sorted([f"checkpoint-{steps}", f"checkpoint-{steps + 10}"])
    assert settings(output)["data_files"] == before["data_files"]  # the same file, listed once


def test_each_run_records_the_data_files_it_trained_on(tiny_checkpoint, tmp_path):
    sample = {
        "path": str(SAMPLE.resolve()),
        "rows": 445,
        "sha256": hashlib.sha256(SAMPLE.read_bytes()).hexdigest(),
    }
    assert settings(tiny_checkpoint)["data_files"] == [sample]
    for checkpoint in (tiny_checkpoint / CHECKPOINTS).iterdir():
        assert settings(checkpoint)["data_files"] == [sample]
    # a run resumed on another file lists both, in the order they were trained on
    other = tmp_path / "more.csv"
    other.write_text("context_1,context_2,context_3,response\n,,Привет,Здравствуй\n,,,\n", encoding="utf-8")
    cfg = TrainConfig(data=other, output=tmp_path / "out", base_model=TINY, resume=True)
    checkpoint = str(next((tiny_checkpoint / CHECKPOINTS).iterdir()))
    more = {"path": str(other.resolve()), "rows": 2, "sha256": hashlib.sha256(other.read_bytes()).hexdigest()}
    assert trained_on(cfg, load_examples(other), checkpoint) == [sample, more]
    assert trained_on(cfg, load_examples(other), None) == [more]


def test_resume_needs_a_checkpoint_and_a_new_run_a_clean_folder(tiny_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(TrainConfig(data=SAMPLE, output=tmp_path / "empty", base_model=TINY, resume=True))
    with pytest.raises(ConfigError, match="holds an earlier run"):
        train(TrainConfig(data=SAMPLE, output=tiny_checkpoint, base_model=TINY))


def test_one_row_trains_without_eval(tmp_path):
    data = tmp_path / "one.csv"
    data.write_text("context_1,context_2,context_3,response\n,,Привет,Здравствуй\n", encoding="utf-8")
    output = train(TrainConfig(data=data, output=tmp_path / "out", base_model=TINY, max_steps=2))
    metrics = settings(output)["metrics"]
    assert metrics["eval_rows"] == 0 and "eval_loss" not in metrics and metrics["step"] == 2


def test_parse_args_fills_the_config():
    cfg = parse_args(
        [
            "--data",
            "d.csv",
            "--output",
            "out",
            "--base-model",
            "tiny",
            "--max-steps",
            "7",
            "--eval-fraction",
            "0.2",
            "--resume",
            "--full-text-loss",
            "--learning-rate",
            "0.01",
            "--batch-size",
            "4",
            "--max-length",
            "64",
            "--seed",
            "3",
            "--logging-steps",
            "2",
            "--save-steps",
            "5",
            "--epochs",
            "2",
        ]
    )
    assert cfg == TrainConfig(
        data=Path("d.csv"),
        output=Path("out"),
        base_model="tiny",
        epochs=2.0,
        max_steps=7,
        eval_fraction=0.2,
        resume=True,
        full_text_loss=True,
        learning_rate=0.01,
        batch_size=4,
        max_length=64,
        seed=3,
        logging_steps=2,
        save_steps=5,
    )
    default = parse_args(["--data", "d.csv", "--output", "out"])
    assert default.base_model == "t-bank-ai/ruDialoGPT-small" and default.lr == 5e-5 and cfg.lr == 0.01


@pytest.mark.parametrize(
    "bad",
    [
        {"eval_fraction": 1.0},
        {"max_steps": 0},
        {"batch_size": 0},
        {"epochs": 0},
        {"max_length": 4},
        {"learning_rate": -1.0},
    ],
)
def test_config_rejects_impossible_values(bad):
    with pytest.raises(ConfigError, match="must be"):
        TrainConfig(data="d.csv", output="out", **bad)


def test_unreachable_hub_suggests_local_path_or_tiny(monkeypatch, tmp_path, capsys):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr("training.train.AutoTokenizer.from_pretrained", offline)
    assert main(["--data", str(SAMPLE), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot load base model 't-bank-ai/ruDialoGPT-small'")
    assert "--base-model PATH" in err and "--base-model tiny" in err


def test_cli_bad_csv_exits_2_without_traceback(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("context_1;context_2;context_3;response\n;;Привет;Здравствуй\n", encoding="utf-8")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "--data",
            str(data),
            "--output",
            str(tmp_path / "out"),
            "--base-model",
            "tiny",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 2
    assert run.stderr.startswith("error: ") and "use commas" in run.stderr
    assert "Traceback" not in run.stderr


def test_folder_without_model_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="must hold a model saved with save_pretrained"):
        train(TrainConfig(data=SAMPLE, output=tmp_path / "out", base_model=str(tmp_path)))


def test_a_base_that_pads_on_the_left_is_padded_on_the_right(tiny_checkpoint, tmp_path):
    """GPT-2's positions start at each row's first token: the collator must pad after it."""
    base = shutil.copytree(tiny_checkpoint, tmp_path / "base", ignore=shutil.ignore_patterns(CHECKPOINTS))
    config = json.loads((base / "tokenizer_config.json").read_text())
    (base / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "left"}))
    assert AutoTokenizer.from_pretrained(base).padding_side == "left"
    _, tokenizer = load_base(TrainConfig(data=SAMPLE, output=tmp_path / "out"), [], str(base))
    batch = collator(tokenizer)([{"input_ids": [5, 6], "labels": [5, 6]}, {"input_ids": [7], "labels": [7]}])
    assert batch["input_ids"].tolist() == [[5, 6], [7, tokenizer.pad_token_id]]
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 0]]
