"""Console chat: one user message per stdin line, exactly one reply per stdout line."""
from __future__ import annotations

import asyncio
import logging
import sys
from typing import TextIO

from bot.chat import ChatBot
from bot.triton_client import TritonError
from contract.dialogue import CONTEXT_TURNS, clean_turn

log = logging.getLogger(__name__)

UNAVAILABLE = "Модель временно недоступна, попробуйте чуть позже."
RESET_DONE = "Начнём сначала."


async def run_console(bot: ChatBot, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    """Chat until EOF; `/reset` forgets the dialogue; blank lines are ignored."""
    history: list[str] = []
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, stdin.readline)
        if not line:
            return
        message = clean_turn(line)
        if not message:
            continue
        if message == "/reset":
            history.clear()
            answer = RESET_DONE
        else:
            try:
                reply = await bot.reply(history + [message])
            except TritonError as exc:
                log.error("no reply: %s", exc)
                answer = UNAVAILABLE
            else:
                history.extend([message, reply.text])
                del history[:-2 * CONTEXT_TURNS]
                answer = reply.text
                log.info("reply: %d tokens in %.0f ms", len(reply.generation.tokens), reply.seconds * 1000)
        stdout.write(answer.replace("\n", " ") + "\n")
        stdout.flush()
