"""CLI: `python -m training --data data.csv --output out/ [--base-model NAME|PATH|tiny] ...`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from training.config import ConfigError, TrainConfig
from training.data import DataError
from training.runs import NothingToTrain
from training.train import train


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The TrainConfig the command line asks for."""
    c = TrainConfig
    p = argparse.ArgumentParser(
        "python -m training",
        description="Fine-tune ruDialoGPT on a dialogue CSV.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", required=True, help="CSV with columns context_1,context_2,context_3,response")
    p.add_argument("--output", required=True, help="folder for the model, tokenizer and checkpoints")
    p.add_argument("--base-model", default=c.base_model, help="hub name, local folder, or 'tiny' (offline)")
    p.add_argument("--epochs", type=float, default=c.epochs, help="passes over the data")
    p.add_argument(
        "--max-steps", type=int, default=c.max_steps, help="steps of the whole run; -1: use --epochs"
    )
    p.add_argument("--eval-fraction", type=float, default=c.eval_fraction, help="share held out for eval")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT/checkpoints up to --max-steps (or --epochs): they count the whole run, "
        "not more steps; a run already there is left unchanged and exits 0",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="a new run into an OUTPUT that holds an earlier one: remove that run's checkpoints, model "
        "and settings first (refused if OUTPUT holds anything else)",
    )
    p.add_argument("--full-text-loss", action="store_true", help="loss on the prompt too")
    p.add_argument("--learning-rate", type=float, default=None, help="None: 5e-5, or 3e-3 for tiny")
    p.add_argument("--batch-size", type=int, default=c.batch_size, help="rows per device per step")
    p.add_argument("--max-length", type=int, default=None, help="None: min(256, model positions)")
    p.add_argument("--seed", type=int, default=c.seed, help="seed of everything random")
    p.add_argument("--logging-steps", type=int, default=c.logging_steps, help="steps per log line")
    p.add_argument("--save-steps", type=int, default=c.save_steps, help="steps per checkpoint and eval")
    return TrainConfig(**vars(p.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    """Run training; bad data or settings print `error: ...` to stderr and return 2; a --resume
    with nothing left to train says so and returns 0."""
    logging.basicConfig(
        level=logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING,  # one rank logs
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        train(parse_args(argv))
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NothingToTrain as e:
        print(e, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
