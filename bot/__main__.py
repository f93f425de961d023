"""`python -m bot` (Telegram) or `python -m bot --console`; settings from flags, env vars and .env."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Mapping

from bot import texts
from bot.settings import FLAGS, Mode, Settings
from client.chat import ChatBot
from client.rounds import TritonClient
from client.sampling import SamplingConfig
from client.tokenizer import ModelVersions, TokenizerRefused
from client.transport import TritonError

log = logging.getLogger("bot")


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
        FLAGS["BOT_TOKENIZER_DIR"],
        help="the model's folder in the repository, whose versions' tokenizers are followed, or a "
        "folder with tokenizer.json (default: env BOT_TOKENIZER_DIR, else model_repository/rudialogpt)",
    )
    p.add_argument(
        FLAGS["TRITON_TIMEOUT"],
        help="seconds per Triton call; in Telegram also per whole reply "
        "(default: env TRITON_TIMEOUT, else 10)",
    )
    return p.parse_args(argv)


def load_settings(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """The settings from `env` (None: the process's environment and .env), the flags given over
    them; a ValueError names what is wrong."""
    mode: Mode = "console" if args.console else "webhook" if args.webhook else "polling"
    flags = {FLAGS["BOT_TOKENIZER_DIR"]: args.tokenizer, FLAGS["TRITON_TIMEOUT"]: args.timeout}
    return Settings.from_env(env, flags, mode)


def build_bot(args: argparse.Namespace, settings: Settings) -> ChatBot:
    """The dialogue core from the settings (Triton, tokenizer) and the sampling flags."""
    triton = settings.triton
    client = TritonClient(triton.url, triton.model, timeout=triton.timeout)
    sampling = (SamplingConfig.greedy if args.greedy else SamplingConfig)(max_new_tokens=args.max_new_tokens)
    versions = ModelVersions.open(settings.tokenizer_dir)
    return ChatBot(client, versions, sampling, seed=args.seed, fallback=texts.FALLBACK)


async def check(bot: ChatBot, close: bool = False) -> None:
    """At start: the served model's tokenizer is the bot's (TokenizerRefused stops the bot, naming
    the folder that matches) and --max-new-tokens fits its positions (a ValueError naming the
    limit); only a warning while Triton does not answer (both are checked at the first reply
    then). `close`: close the client after (it is used again in another event loop)."""
    try:
        async with asyncio.timeout(bot.client.timeout):
            await bot.check("--max-new-tokens")
    except TokenizerRefused:
        raise
    except (TritonError, TimeoutError) as exc:
        log.warning("the served model is not checked at start: %s", exc or "no answer")
    finally:
        if close:
            await bot.client.close()


async def console(bot: ChatBot) -> None:
    from bot.console import run_console

    try:
        await check(bot)
        await run_console(bot)
    finally:
        await bot.client.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.max_new_tokens < 1:
        print(f"error: --max-new-tokens must be >= 1, got {args.max_new_tokens}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its request lines carry the bot token
    try:
        settings = load_settings(args)
        if args.console:
            asyncio.run(console(build_bot(args, settings)))
        else:
            from bot.telegram import run_telegram

            bot = build_bot(args, settings)
            asyncio.run(check(bot, close=True))
            run_telegram(bot, settings, webhook=args.webhook)
    except (FileNotFoundError, ValueError, TokenizerRefused) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
