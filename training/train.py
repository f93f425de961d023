"""Fine-tuning with the transformers Trainer: base model in, fine-tuned model and settings out."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from contract.dialogue import FIRST, MARKERS
from training.config import TINY, ConfigError, TrainConfig
from training.data import Examples, build_dataset, collator, data_file, load_examples, split
from training.runs import CHECKPOINTS, CONFIG_FILE, EarlierRun, read_settings
from training.tiny import build_tiny

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 256
RESUME_MAY_CHANGE = ("output", "resume", "overwrite", "max_steps", "epochs", "logging_steps", "save_steps")


def load_base(cfg: TrainConfig, texts: list[str], source: str | None = None):
    """The model and tokenizer to start from: `source` (a checkpoint), cfg.base_model, or tiny."""
    source = source or cfg.base_model
    if source == TINY:
        model, tokenizer = build_tiny(texts, cfg.seed)
    else:
        model, tokenizer = load_pretrained(source)
    for marker in MARKERS:
        if len(tokenizer(marker, add_special_tokens=False)["input_ids"]) != 1:
            raise ConfigError(f"the tokenizer of {source!r} has no single token for {marker}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # the collator pads here: GPT-2's positions start at each row's start
    model.config.pad_token_id = tokenizer.pad_token_id
    gen = model.generation_config
    assert gen is not None  # a causal LM always has one
    gen.pad_token_id = tokenizer.pad_token_id
    gen.eos_token_id = [tokenizer.convert_tokens_to_ids(FIRST), tokenizer.eos_token_id]  # a reply stops here
    return model, tokenizer


def load_pretrained(source: str):
    """A saved model and its tokenizer (hub name or folder), or a ConfigError that names the fix."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source)
    except (OSError, ValueError) as e:
        cause = str(e).strip().splitlines()[0].split(". ")[0][:200]
        hint = (
            "the folder must hold a model saved with save_pretrained (config.json, weights, tokenizer)"
            if Path(source).is_dir()
            else "without access to the Hugging Face hub pass a local directory with the downloaded "
            "model (--base-model PATH), or --base-model tiny for an offline test model"
        )
        raise ConfigError(f"cannot load base model {source!r} ({cause}); {hint}") from None
    return model, tokenizer


class LogCallback(TrainerCallback):
    """The Trainer's log entries as `logging` lines from the main process, in place of its
    PrinterCallback's print()ed dicts. Adds what its entries lack: the step of max_steps, steps
    per second since the previous line (the Trainer only reports an average over the run, counted
    wrong after --resume), and the eval perplexity."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.mark = (time.perf_counter(), state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "eval_loss" in logs:
            loss = logs["eval_loss"]
            log.info("eval step %d | loss %.4f | perplexity %.2f", state.global_step, loss, math.exp(loss))
        elif "loss" in logs:
            now, step = time.perf_counter(), state.global_step
            speed = (step - self.mark[1]) / max(now - self.mark[0], 1e-9)
            self.mark = (now, step)
            log.info(
                "step %d/%d | loss %.4f | lr %.1e | %.1f it/s",
                step,
                state.max_steps,
                logs["loss"],
                logs.get("learning_rate", 0.0),
                speed,
            )
        elif "train_runtime" in logs:
            log.info("trained to step %d in %.1f s", state.global_step, logs["train_runtime"])


class CheckpointCallback(TrainerCallback):
    """Evaluates at the last step too, and writes training_config.json into every checkpoint."""

    def __init__(self, cfg: TrainConfig, metrics: dict, data_files: list[dict]):
        self.cfg, self.metrics, self.data_files = cfg, metrics, data_files

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps and args.eval_strategy != "no":
            control.should_evaluate = True

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            metrics = {**self.metrics, **last_eval(state.log_history)}
            write_settings(folder, self.cfg, metrics, self.data_files)


def write_settings(folder: Path, cfg: TrainConfig, metrics: dict, data_files: list[dict]) -> None:
    """training_config.json: the TrainConfig, the metrics so far and the data files trained on."""
    saved = {"config": cfg.to_json(), "metrics": metrics, "data_files": data_files}
    (folder / CONFIG_FILE).write_text(
        json.dumps(saved, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def trained_on(cfg: TrainConfig, examples: Examples, checkpoint: str | None) -> list[dict]:
    """The data files of the run (path, rows, sha256): a resumed run's earlier ones, then cfg.data
    (once, if it is the file the checkpoint was trained on last)."""
    earlier: list[dict] = read_settings(Path(checkpoint)).get("data_files", []) if checkpoint else []
    current = data_file(cfg.data, examples.rows)
    return earlier if earlier and earlier[-1]["sha256"] == current["sha256"] else [*earlier, current]


def last_eval(history: list[dict]) -> dict:
    """Step, eval loss and perplexity of the latest evaluation in the Trainer's log history."""
    evals = [h for h in history if "eval_loss" in h]
    if not evals:
        return {}
    loss = evals[-1]["eval_loss"]
    return {"eval_step": evals[-1]["step"], "eval_loss": loss, "perplexity": math.exp(loss)}


def resumed_metrics(cfg: TrainConfig, checkpoint: Path) -> dict:
    """The checkpoint's eval metrics from before training; warns if settings changed since."""
    saved = read_settings(checkpoint)
    old = saved.get("config", {})
    changed = [k for k, v in cfg.to_json().items() if k not in RESUME_MAY_CHANGE and old.get(k, v) != v]
    if changed:
        log.warning(
            "resuming %s with settings other than it was saved with: %s", checkpoint, ", ".join(changed)
        )
    return {k: v for k, v in saved.get("metrics", {}).items() if k.endswith("_before")}


def training_arguments(cfg: TrainConfig, checkpoints: Path, has_eval: bool) -> TrainingArguments:
    """The Trainer's settings; devices, DDP and mixed precision are left to the Trainer and launcher."""
    return TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.save_steps,
        seed=cfg.seed,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        prediction_loss_only=True,
        remove_unused_columns=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=True,
        report_to="none",
    )


def train(cfg: TrainConfig) -> Path:
    """Fine-tune as `cfg` says; returns the output folder with model, tokenizer and settings."""
    set_seed(cfg.seed)
    examples = load_examples(cfg.data)
    checkpoints = cfg.output / CHECKPOINTS
    earlier = EarlierRun.read(cfg.output)
    earlier.check(cfg)  # ConfigError, NothingToTrain
    last = str(earlier.last) if cfg.resume and earlier.last else None
    model, tokenizer = load_base(cfg, [p + t for p, t in examples.pairs], last)
    if cfg.resume and earlier.finished(cfg):  # stopped after its last checkpoint, before saving the model
        return save_checkpoint(cfg, earlier, model, tokenizer)
    model.loss_type = "ForCausalLM"  # the loss GPT-2 uses anyway; unset, transformers warns
    positions = model.config.max_position_embeddings
    max_length = cfg.max_length or min(DEFAULT_MAX_LENGTH, positions)
    if max_length > positions:
        raise ConfigError(f"--max-length {max_length} exceeds the model's {positions} positions")
    if cfg.overwrite:
        earlier.clear()  # only now: a bad base model or data left the earlier run in place
    dataset, dropped = build_dataset(examples.pairs, tokenizer, max_length, cfg.full_text_loss)
    train_set, eval_set = split(dataset, cfg.eval_fraction, cfg.seed)
    metrics: dict[str, float | None] = {
        "train_rows": len(train_set),
        "eval_rows": len(eval_set) if eval_set is not None else 0,
        "skipped_no_response": examples.no_response,
        "skipped_no_context": examples.no_context,
        "dropped_too_long": dropped,
    }
    log.info(
        "base %s | %d train rows | %d eval rows | max length %d",
        last or cfg.base_model,
        metrics["train_rows"],
        metrics["eval_rows"],
        max_length,
    )
    data_files = trained_on(cfg, examples, last)
    args = training_arguments(cfg, checkpoints, has_eval=eval_set is not None)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collator(tokenizer),
        processing_class=tokenizer,
        callbacks=[LogCallback(), CheckpointCallback(cfg, metrics, data_files)],
    )
    trainer.remove_callback(PrinterCallback)
    if last is not None:
        metrics.update(resumed_metrics(cfg, Path(last)))
    elif eval_set is not None:
        loss = trainer.evaluate()["eval_loss"]
        metrics.update(eval_loss_before=loss, perplexity_before=math.exp(loss))
    trainer.train(resume_from_checkpoint=last)
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    metrics.update(step=trainer.state.global_step, train_loss=losses[-1] if losses else None)
    metrics.update(last_eval(history))
    if "eval_loss_before" in metrics and "eval_loss" in metrics:
        log.info(
            "eval loss %.4f -> %.4f | perplexity %.2f -> %.2f",
            metrics["eval_loss_before"],
            metrics["eval_loss"],
            metrics["perplexity_before"],
            metrics["perplexity"],
        )
    trainer.save_model(str(cfg.output))
    if trainer.is_world_process_zero():
        write_settings(cfg.output, cfg, metrics, data_files)
        log.info("saved model, tokenizer and %s to %s", CONFIG_FILE, cfg.output)
    return cfg.output


def save_checkpoint(cfg: TrainConfig, earlier: EarlierRun, model, tokenizer) -> Path:
    """The finished run's last checkpoint (loaded as `model`, `tokenizer`) saved as the output's model."""
    assert earlier.last is not None
    state = json.loads((earlier.last / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state.get("log_history", []) if "loss" in h]
    metrics = {**read_settings(earlier.last).get("metrics", {}), "step": earlier.step}
    metrics["train_loss"] = losses[-1] if losses else None
    if int(os.environ.get("RANK", "0")) == 0:
        model.save_pretrained(cfg.output)
        tokenizer.save_pretrained(cfg.output)
        write_settings(cfg.output, cfg, metrics, read_settings(earlier.last).get("data_files", []))
        log.info("saved the model of %s (step %d) to %s", earlier.last, earlier.step, cfg.output)
    return cfg.output
