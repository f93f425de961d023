"""Keeping the bot token out of the logs: a filter on the root logger's handlers."""

from __future__ import annotations

import logging
import re


class RedactToken(logging.Filter):
    """Replaces the bot token (in any case: error texts get capitalised) in a record's message and
    traceback before a handler writes it."""

    def __init__(self, token: str):
        super().__init__()
        self.token = token
        self._pattern = re.compile(re.escape(token), re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self._pattern.search(message):
            record.msg, record.args = self._pattern.sub("<TOKEN>", message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._pattern.sub("<TOKEN>", record.exc_text)
        return True


def hide_token_in_logs(token: str) -> None:
    """Add RedactToken to every handler of the root logger (once per token)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactToken) and f.token == token for f in handler.filters):
            handler.addFilter(RedactToken(token))
