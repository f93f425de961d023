"""`python -m demo`: the whole path on an embedded default, reusing what is already built.

1. train: output/ holds a checkpoint? reuse it; else fine-tune BASE_MODEL (default: the offline
   tiny GPT-2) on training/data.csv.  2. export: model_repository/rudialogpt is newer than the
   checkpoint? reuse it; else export.  3. start the real Triton on the CPU.  4. chat: Telegram when
   TELEGRAM_BOT_TOKEN is set, else the console. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from contract import repository as layout
from contract import triton_io as io

log = logging.getLogger("demo")
ROOT = Path(__file__).resolve().parent.parent


PORT_HINT = (
    "stop what holds it (another demo, `python -m serve`?), or move the demo's ports: "
    "DEMO_HTTP_PORT={port} make demo (or python -m demo --http-port {port}; "
    "Triton takes that port and the next two)"
)


def stage(n: int, text: str) -> None:
    print(f"[{n}/4] {text}", file=sys.stderr, flush=True)


def ensure_checkpoint(output: Path, data: Path, base_model: str, steps: int) -> Path:
    if (output / "config.json").exists():
        stage(1, f"train: reusing the checkpoint in {output} (delete it to retrain)")
        return output
    from training.config import TrainConfig
    from training.train import train

    resume = any((output / "checkpoints").glob("checkpoint-*"))  # an interrupted earlier run
    stage(
        1,
        f"train: {'resuming' if resume else 'fine-tuning'} {base_model} on {data} "
        f"for {steps} steps → {output}",
    )
    return train(
        TrainConfig(
            data=data,
            output=output,
            base_model=base_model,
            max_steps=steps,
            logging_steps=50,
            save_steps=100,
            resume=resume,
        )
    )


def ensure_export(checkpoint: Path, repository: Path) -> Path:
    model_dir = repository / io.DEFAULT_MODEL_NAME
    newest = max(layout.versions(model_dir), default=0)
    model = layout.version_dir(model_dir, newest) / io.ONNX_FILE
    weights = checkpoint / "model.safetensors"
    fresh = model.exists() and weights.exists() and model.stat().st_mtime >= weights.stat().st_mtime
    if fresh and layout.tokenizer_dir(model_dir, newest).is_dir():  # an export that writes versions
        stage(2, f"export: reusing {model.parent.parent} (newer than the checkpoint)")
        return repository
    from export import export

    stage(2, f"export: {checkpoint} → {repository} (ONNX with KV cache, checked against PyTorch)")
    result = export(checkpoint, repository)
    log.info("export: max |Δlogit| vs PyTorch %.1e in %.0f s", result.max_abs_diff, result.seconds)
    return repository


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    p.add_argument("--data", type=Path, default=ROOT / "training" / "data.csv")
    p.add_argument("--output", type=Path, default=ROOT / "output")
    p.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    p.add_argument(
        "--steps",
        type=int,
        default=int(os.environ.get("DEMO_TRAIN_STEPS", "600")),
        help="training steps when no checkpoint exists (env DEMO_TRAIN_STEPS)",
    )
    p.add_argument(
        "--http-port", type=int, default=int(os.environ.get("DEMO_HTTP_PORT", io.DEFAULT_HTTP_PORT))
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("demo", "training", "serve", "bot"):
        logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger("bot.console").setLevel(logging.WARNING)  # keep the chat screen clean

    from serve.server import PortInUse, TritonServer

    base_model = os.environ.get("BASE_MODEL", "tiny")
    server = TritonServer(
        args.repository,
        args.http_port,
        args.http_port + 1,
        args.http_port + 2,
        log_file=args.output / "tritonserver.log",
    )
    try:
        server.check_ports()  # before the training and the export: minutes
        checkpoint = ensure_checkpoint(args.output, args.data, base_model, args.steps)
        repository = ensure_export(checkpoint, args.repository)
        stage(3, f"serve: starting Triton on 127.0.0.1:{args.http_port} (metrics :{args.http_port + 2})")
        t0 = time.monotonic()
        server.start()
    except PortInUse as exc:
        print(f"error: {exc}: {PORT_HINT.format(port=args.http_port + 10)}", file=sys.stderr)
        return 2
    except (
        ValueError,
        RuntimeError,
        OSError,
    ) as exc:  # DataError, ConfigError, ExportError, TritonServerError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("Triton ready in %.1f s; its log: %s", time.monotonic() - t0, server.log_file)
    os.environ.setdefault("TRITON_URL", server.url)
    try:
        from bot.__main__ import main as bot_main

        tokenizer = ["--tokenizer", str(repository / io.DEFAULT_MODEL_NAME)]
        if os.environ.get("TELEGRAM_BOT_TOKEN"):
            stage(4, "chat: Telegram bot running (Ctrl-C to stop)")
            return bot_main(tokenizer)
        stage(4, "chat: type a message and press Enter; /reset forgets; Ctrl-D or Ctrl-C ends")
        return bot_main(["--console", *tokenizer])
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
        print("stopped Triton", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
