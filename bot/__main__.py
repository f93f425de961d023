"""`python -m bot` (Telegram) or `python -m bot --console`; settings from flags and env vars."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from bot.chat import DEFAULT_TOKENIZER, ChatBot, DialogueTokenizer
from bot.sampling import SamplingConfig
from bot.settings import seconds, triton_timeout
from bot.step_gate import GateConfig
from bot.triton_client import TritonClient
from contract import triton_io as io


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bot", description=__doc__)
    p.add_argument("--console", action="store_true", help="chat on stdin/stdout instead of Telegram")
    p.add_argument("--webhook", action="store_true", help="Telegram webhook mode (BOT_WEBHOOK_URL, ...)")
    p.add_argument(
        "--greedy", action="store_true", help="plain argmax: no sampling, penalties or n-gram blocking"
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=SamplingConfig.max_new_tokens, help="reply length limit"
    )
    p.add_argument("--seed", type=int, help="seed sampling for reproducible replies")
    p.add_argument(
        "--tokenizer",
        type=Path,
        default=Path(os.environ.get("BOT_TOKENIZER_DIR") or DEFAULT_TOKENIZER),
        help="folder with tokenizer.json (default: what export wrote; env BOT_TOKENIZER_DIR)",
    )
    p.add_argument(
        "--timeout",
        type=str,
        help="seconds per Triton call; in Telegram also per whole reply "
        "(default: env TRITON_TIMEOUT, else 10)",
    )
    args = p.parse_args(argv)
    try:
        args.timeout = triton_timeout() if args.timeout is None else seconds("--timeout", args.timeout, 0.0)
    except ValueError as exc:
        p.error(str(exc))
    return args


def build_bot(args: argparse.Namespace) -> ChatBot:
    """The dialogue core from flags and TRITON_URL / TRITON_MODEL."""
    client = TritonClient(
        os.environ.get("TRITON_URL") or "127.0.0.1:8000",
        os.environ.get("TRITON_MODEL") or io.DEFAULT_MODEL_NAME,
        timeout=args.timeout,
        gate=GateConfig(enabled=os.environ.get("TRITON_STEP_GATE", "1") != "0"),
    )
    sampling = (SamplingConfig.greedy if args.greedy else SamplingConfig)(max_new_tokens=args.max_new_tokens)
    return ChatBot(client, DialogueTokenizer(args.tokenizer), sampling, seed=args.seed)


async def console(args: argparse.Namespace) -> None:
    from bot.console import run_console

    bot = build_bot(args)
    try:
        await run_console(bot)
    finally:
        await bot.client.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its request lines carry the bot token
    try:
        if args.console:
            asyncio.run(console(args))
        else:
            from bot.telegram import run_telegram

            run_telegram(build_bot(args), webhook=args.webhook)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
