"""Console chat: one user message per stdin line, exactly one reply per stdout line.

`/reset` forgets the dialogue; `/good` and `/bad` rate the last reply: the console stores nothing,
so the rating is a log line (stderr) with the reply's model version and text, for whoever tries a
model version by hand (votes that train a model come from Telegram: docs/bot.md).

On a terminal the reply appears as it is generated (the line grows); piped, each reply is written
whole, once it is complete. stdin is read by a daemon thread with os.read, so Ctrl-C ends the chat
at once, also while that thread waits for a line.
"""

from __future__ import annotations

import asyncio
import codecs
import io
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable
from typing import TextIO

from bot.history.votes import DOWN, UP
from bot.texts import NOTHING_TO_RATE, RATED, RESET_DONE, UNAVAILABLE
from client.chat import ChatBot, Reply
from client.transport import TritonError
from contract.dialogue import CONTEXT_TURNS, clean_turn

log = logging.getLogger(__name__)

CLEAR_LINE = "\r\033[K"  # back to the line's start and erase it (a terminal's ANSI codes)
RATINGS = {"/good": UP, "/bad": DOWN}


def _reader(stdin: TextIO) -> Callable[[], str]:
    """A blocking call that returns the next text from `stdin` ("" at EOF)."""
    try:
        fd = stdin.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return stdin.readline  # an in-memory stream: never blocks
    decoder = codecs.getincrementaldecoder(getattr(stdin, "encoding", None) or "utf-8")(errors="replace")

    def read() -> str:
        while True:
            data = os.read(fd, 65536)  # holds no lock of Python's stdin objects while it waits
            text = decoder.decode(data, final=not data)
            if text or not data:
                return text

    return read


async def read_lines(stdin: TextIO) -> AsyncIterator[str]:
    """`stdin`'s lines (the last one may lack its newline), read in a daemon thread."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[str] = asyncio.Queue()
    read = _reader(stdin)

    def pump() -> None:
        chunk = "-"
        while chunk:
            chunk = read()
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, chunk)
            except RuntimeError:  # the loop is closed: the chat is over
                return

    threading.Thread(target=pump, name="stdin", daemon=True).start()
    pending = ""
    while chunk := await chunks.get():
        *lines, pending = (pending + chunk).split("\n")
        for line in lines:
            yield line
    if pending:
        yield pending


class ReplyLine:
    """One reply's stdout line: on a terminal it grows with the visible text, else it is written once."""

    def __init__(self, stdout: TextIO):
        self.stdout, self.live, self.shown = stdout, stdout.isatty(), ""

    def grow(self, text: str) -> None:
        """Show `text` (which starts with what is shown) at once."""
        self.stdout.write(text[len(self.shown) :])
        self.stdout.flush()
        self.shown = text

    def finish(self, text: str) -> None:
        """End the line with the whole reply (one line: newlines become spaces)."""
        text = text.replace("\n", " ")
        self.stdout.write(text[len(self.shown) :] if text.startswith(self.shown) else CLEAR_LINE + text)
        self.stdout.write("\n")
        self.stdout.flush()


async def run_console(bot: ChatBot, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    """Chat until EOF; `/reset` forgets the dialogue, `/good` and `/bad` rate the last reply (a
    log line); blank lines are ignored."""
    history: list[str] = []
    last: Reply | None = None
    async for line in read_lines(stdin):
        message = clean_turn(line)
        if not message:
            continue
        out = ReplyLine(stdout)
        if message == "/reset":
            history.clear()
            last = None
            out.finish(RESET_DONE)
            continue
        if message in RATINGS:
            emoji = RATINGS[message]
            if last is not None:
                log.info("rated %s: the reply of model version %s: %r", emoji, last.version, last.text)
            out.finish(RATED.format(emoji=emoji) if last else NOTHING_TO_RATE)
            continue
        try:
            reply = await bot.reply([*history, message], on_text=out.grow if out.live else None)
        except TritonError as exc:
            log.error("no reply: %s", exc)
            out.finish(UNAVAILABLE)
            continue
        history.extend([message, reply.text])
        last = reply
        del history[: -2 * CONTEXT_TURNS]
        out.finish(reply.text)
        log.info("reply: %d tokens in %.0f ms", len(reply.generation.tokens), reply.seconds * 1000)
