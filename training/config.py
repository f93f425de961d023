"""Training settings: one dataclass, filled by the CLI or by code."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_BASE_MODEL = "t-bank-ai/ruDialoGPT-small"
TINY = "tiny"  # --base-model value for the offline tiny GPT-2 (see training/tiny.py)


class ConfigError(ValueError):
    """A setting that cannot work; the message says what to do instead."""


@dataclass
class TrainConfig:
    """Everything one training run depends on; saved as training_config.json next to the model."""

    data: Path  # CSV with columns context_1, context_2, context_3, response
    output: Path  # final model, tokenizer, training_config.json; checkpoints go to output/checkpoints
    base_model: str = DEFAULT_BASE_MODEL  # hub name, local directory, or "tiny" (offline test model)
    epochs: float = 3.0  # passes over the training rows; ignored when max_steps is set
    max_steps: int = -1  # optimizer steps to run; -1 means "run `epochs` epochs"
    eval_fraction: float = 0.1  # share of rows held out for eval loss (at least 1 row of 2 or more)
    resume: bool = False  # continue from the last checkpoint in output/checkpoints
    overwrite: bool = False  # a new run into an output holding an earlier one: remove that one first
    full_text_loss: bool = False  # compute the loss on prompt and response, not only the response
    learning_rate: float | None = None  # peak learning rate; None: 5e-5, or 3e-3 for "tiny"
    batch_size: int = 8  # rows per device per optimizer step
    max_length: int | None = None  # tokens per example; None: min(256, the model's positions)
    seed: int = 42  # seeds tiny's weights and tokenizer, the eval split, shuffling and dropout
    logging_steps: int = 10  # one log line every this many steps
    save_steps: int = 100  # a checkpoint and an eval every this many steps (and at the end)

    def __post_init__(self) -> None:
        """Normalize paths and reject values no run could use."""
        self.data, self.output = Path(self.data), Path(self.output)
        checks = {
            "--epochs must be > 0": self.epochs > 0,
            "--max-steps must be -1 (use --epochs) or > 0": self.max_steps == -1 or self.max_steps > 0,
            "--eval-fraction must be in [0, 1)": 0 <= self.eval_fraction < 1,
            "--learning-rate must be > 0": self.learning_rate is None or self.learning_rate > 0,
            "--batch-size must be >= 1": self.batch_size >= 1,
            "--max-length must be >= 8": self.max_length is None or self.max_length >= 8,
            "--logging-steps must be >= 1": self.logging_steps >= 1,
            "--save-steps must be >= 1": self.save_steps >= 1,
            "--overwrite starts a new run: it cannot go with --resume": not (self.resume and self.overwrite),
        }
        bad = [message for message, ok in checks.items() if not ok]
        if bad:
            raise ConfigError("; ".join(bad))

    @property
    def lr(self) -> float:
        """The learning rate to use: a from-scratch tiny model needs a much larger one."""
        if self.learning_rate is not None:
            return self.learning_rate
        return 3e-3 if self.base_model == TINY else 5e-5

    def to_json(self) -> dict:
        """The settings as JSON-ready values."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
