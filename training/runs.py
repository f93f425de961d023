"""The output folder of a run: what an earlier run left there, and what a new run may do with it.

A fresh run needs a folder without an earlier run (or --overwrite, which clears it); --resume needs
its checkpoints. --max-steps and --epochs count the whole run, so a resume that would stop where
the last checkpoint already is has nothing to train: NothingToTrain, and the folder stays as it is.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from training.config import ConfigError, TrainConfig

CONFIG_FILE = "training_config.json"  # settings and metrics, in the output and in each checkpoint
CHECKPOINTS = "checkpoints"  # subfolder of the output with the Trainer's checkpoints
# What a run writes into its output (save_model: model, tokenizer, settings); --overwrite removes these.
RUN_FILES = (
    CHECKPOINTS,
    CONFIG_FILE,
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "training_args.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
LEFT_ALONE = ("*.log", ".gitkeep")  # kept by --overwrite: the demo's tritonserver.log, git's placeholder


class NothingToTrain(Exception):
    """--resume where the run is already at --max-steps (or --epochs): nothing was changed."""


def read_settings(folder: Path) -> dict:
    """A folder's training_config.json, or {} when it has none."""
    path = folder / CONFIG_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


@dataclass
class EarlierRun:
    """What an earlier run left in an output folder."""

    output: Path
    last: Path | None  # its last checkpoint (None: no checkpoint)
    step: int  # the last checkpoint's step (0: none)
    epoch: float  # the last checkpoint's epoch (0.0: none)
    saved_step: int | None  # the step of the model saved in the output (None: no model saved there)

    @classmethod
    def read(cls, output: Path) -> EarlierRun:
        from transformers.trainer_utils import get_last_checkpoint

        checkpoints = output / CHECKPOINTS
        found = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
        last = Path(found) if found else None
        state = json.loads((last / "trainer_state.json").read_text()) if last else {}
        saved = None
        if (output / "config.json").is_file() or (output / CONFIG_FILE).is_file():
            saved = int(read_settings(output).get("metrics", {}).get("step", -1))
        return cls(output, last, int(state.get("global_step", 0)), float(state.get("epoch", 0.0)), saved)

    def finished(self, cfg: TrainConfig) -> bool:
        """The last checkpoint is where `cfg`'s run would stop."""
        if self.last is None:
            return False
        return self.step >= cfg.max_steps if cfg.max_steps > 0 else self.epoch >= cfg.epochs - 1e-6

    def check(self, cfg: TrainConfig) -> None:
        """A ConfigError naming the fix when `cfg` cannot run on this folder; NothingToTrain."""
        out, checkpoints = self.output, self.output / CHECKPOINTS
        if cfg.resume:
            if self.last is None:
                raise ConfigError(f"--resume: no checkpoint in {checkpoints}; start once without --resume")
            if self.finished(cfg) and self.saved_step == self.step:
                more = (
                    f"--max-steps {cfg.max_steps} counts the whole run: pass one above {self.step}"
                    if cfg.max_steps > 0
                    else f"--epochs {cfg.epochs:g} counts the whole run: pass more than {self.epoch:g}"
                )
                raise NothingToTrain(
                    f"nothing to train: the run in {out} is at step {self.step} (epoch {self.epoch:.3g}) "
                    f"already; {more} to train further. {out} is unchanged."
                )
            return
        if cfg.overwrite:
            self.removable()
            return
        if self.last is not None and self.saved_step is None:
            raise ConfigError(
                f"{checkpoints} holds an unfinished run (last checkpoint: step {self.step}): add --resume "
                "to finish it, --overwrite to start again, or pass another --output"
            )
        if self.last is not None or self.saved_step is not None:
            trained = f" (trained to step {self.step})" if self.last is not None else ""
            further = (
                f", or --resume --max-steps N (N > {self.step}) to train it further" if self.last else ""
            )
            raise ConfigError(
                f"{out} holds an earlier run{trained}: pass another --output for a new run, "
                f"--overwrite to replace it{further}"
            )

    def removable(self) -> list[Path]:
        """What --overwrite removes; a ConfigError if the folder holds anything a run does not write."""
        if not self.output.is_dir():
            return []
        entries = sorted(self.output.iterdir())
        unknown = [p.name for p in entries if not _matches(p.name, RUN_FILES + LEFT_ALONE)]
        if unknown:
            raise ConfigError(
                f"--overwrite: {self.output} holds what no training run writes ({', '.join(unknown[:5])}"
                f"{', …' if len(unknown) > 5 else ''}): pass another --output, or move those away"
            )
        return [p for p in entries if _matches(p.name, RUN_FILES)]

    def clear(self) -> None:
        """--overwrite: remove the earlier run's checkpoints, model and settings."""
        for path in self.removable():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
