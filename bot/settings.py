"""Every setting of the bot: the environment variables of the README's table, under the command
line's flags, checked at start-up.

`Settings.from_env` is the only reader of the environment in bot/. A flag given on the command
line wins over its variable (`--timeout` over TRITON_TIMEOUT, `--tokenizer` over
BOT_TOKENIZER_DIR). A wrong value is a ValueError that names the variable (or the flag it came
from) and what it should be; `python -m bot` prints it as one `error: …` line and exits with 2.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bot.history.store import DATABASE_URL, DatabaseSettings
from client.transport import DEFAULT_TIMEOUT
from contract import triton_io as io

Mode = Literal["console", "polling", "webhook"]  # what `python -m bot` runs: the settings it needs

TELEGRAM_API = "https://api.telegram.org"
DEFAULT_TOKENIZER = Path("model_repository") / io.DEFAULT_MODEL_NAME  # the versions' tokenizers
FLAGS = {"TRITON_TIMEOUT": "--timeout", "BOT_TOKENIZER_DIR": "--tokenizer"}  # variable: its flag
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class TritonSettings:
    """Where the model is served and how long a call to it may take."""

    url: str = io.DEFAULT_URL  # TRITON_URL: Triton's HTTP host:port, without a scheme
    model: str = io.DEFAULT_MODEL_NAME  # TRITON_MODEL: the model's name in the repository
    timeout: float = (
        DEFAULT_TIMEOUT  # TRITON_TIMEOUT (--timeout): seconds per call; in Telegram also per reply
    )
    step_gate: bool = True  # TRITON_STEP_GATE: False (0) lets each conversation step on its own


@dataclass(frozen=True)
class Settings:
    """The bot's settings. Every value is checked in every mode; only the ones a mode needs must
    be set (the console needs no token, the webhook its URL and secret)."""

    token: str = field(default="", repr=False)  # TELEGRAM_BOT_TOKEN, from @BotFather (kept out of logs)
    base_url: str = TELEGRAM_API  # TELEGRAM_BASE_URL: another Bot API server (blank: Telegram's)
    data_dir: Path = Path("data")  # BOT_DATA_DIR: where history.sqlite3 lives
    allowed_chat_ids: frozenset[int] = frozenset()  # ALLOWED_CHAT_IDS: the chats answered (empty: all)
    metrics_port: int = 9100  # BOT_METRICS_PORT: Prometheus /metrics (0: off)
    webhook_url: str = ""  # BOT_WEBHOOK_URL: public https:// URL Telegram posts to (webhook mode)
    webhook_secret: str = field(default="", repr=False)  # BOT_WEBHOOK_SECRET: checked on every post
    webhook_port: int = 8443  # BOT_WEBHOOK_PORT: where the webhook listens
    draft_every: float = 1.0  # BOT_DRAFT_INTERVAL: seconds between drafts (0: no drafts)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)  # BOT_DATABASE_* (history.py)
    triton: TritonSettings = field(default_factory=TritonSettings)  # TRITON_*
    tokenizer_dir: Path = DEFAULT_TOKENIZER  # BOT_TOKENIZER_DIR (--tokenizer): model or tokenizer folder

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] = os.environ,
        flags: Mapping[str, str | None] | None = None,
        mode: Mode = "polling",
    ) -> Settings:
        """Read and check the variables, `flags` (by flag name, None: not given) over them; a
        ValueError names the variable or flag that is missing or wrong."""
        v = _Values(env, flags or {})
        settings = cls(
            v.text("TELEGRAM_BOT_TOKEN", ""),
            v.base_url("TELEGRAM_BASE_URL"),
            Path(v.text("BOT_DATA_DIR", str(cls.data_dir))),
            v.chat_ids("ALLOWED_CHAT_IDS"),
            v.port("BOT_METRICS_PORT", cls.metrics_port),
            v.text("BOT_WEBHOOK_URL", ""),
            v.text("BOT_WEBHOOK_SECRET", ""),
            v.port("BOT_WEBHOOK_PORT", cls.webhook_port, allow_zero=False),
            v.seconds("BOT_DRAFT_INTERVAL", cls.draft_every, allow_zero=True),
            DatabaseSettings(
                v.database_url(DATABASE_URL),
                v.seconds("BOT_DATABASE_CONNECT_SECONDS", DatabaseSettings.connect_seconds),
                v.seconds("BOT_DATABASE_RETRY_SECONDS", DatabaseSettings.retry_seconds),
                v.seconds("BOT_CHAT_LOCK_SECONDS", DatabaseSettings.lock_seconds),
            ),
            TritonSettings(
                v.triton_url("TRITON_URL", TritonSettings.url),
                v.text("TRITON_MODEL", TritonSettings.model),
                v.seconds("TRITON_TIMEOUT", TritonSettings.timeout),
                v.boolean("TRITON_STEP_GATE", TritonSettings.step_gate),
            ),
            Path(v.text("BOT_TOKENIZER_DIR", str(DEFAULT_TOKENIZER))),
        )
        if mode != "console" and not settings.token:
            raise ValueError(
                "TELEGRAM_BOT_TOKEN is not set: create a bot with @BotFather and export its token"
            )
        if mode == "webhook" and not settings.webhook_url.startswith("https://"):
            raise ValueError("--webhook needs BOT_WEBHOOK_URL, the public https:// URL Telegram posts to")
        if mode == "webhook" and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", settings.webhook_secret):
            raise ValueError("--webhook needs BOT_WEBHOOK_SECRET: 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return settings


class _Values:
    """Typed readers of the raw values: a flag given wins over its variable; blank means unset."""

    def __init__(self, env: Mapping[str, str], flags: Mapping[str, str | None]):
        unknown = set(flags) - set(FLAGS.values())
        if unknown:
            raise ValueError(
                f"no setting has the flag(s) {sorted(unknown)}: known are {sorted(FLAGS.values())}"
            )
        self.env, self.flags = env, flags

    def raw(self, var: str) -> tuple[str, str]:
        """(the name an error should blame, the value without surrounding blanks; '' when unset)."""
        flag = FLAGS.get(var, "")
        given = self.flags.get(flag)
        if given is not None:
            return flag, given.strip()
        return var, self.env.get(var, "").strip()

    def text(self, var: str, default: str) -> str:
        return self.raw(var)[1] or default

    def seconds(self, var: str, default: float, allow_zero: bool = False) -> float:
        """A finite number of seconds, > 0 (or >= 0 with `allow_zero`)."""
        name, raw = self.raw(var)
        try:
            value = float(raw) if raw else default
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise ValueError(
                f"{name} must be a number of seconds {'>= 0' if allow_zero else '> 0'}, got {raw!r}"
            )
        return value

    def port(self, var: str, default: int, allow_zero: bool = True) -> int:
        """A TCP port number (0, where allowed, turns the thing off)."""
        name, raw = self.raw(var)
        low = 0 if allow_zero else 1
        try:
            value = int(raw) if raw else default
        except ValueError:
            value = -1
        if not low <= value <= 65535:
            raise ValueError(f"{name} must be a port number, {low}-65535, got {raw!r}")
        return value

    def boolean(self, var: str, default: bool) -> bool:
        name, raw = self.raw(var)
        if not raw:
            return default
        if raw.lower() in _TRUE + _FALSE:
            return raw.lower() in _TRUE
        raise ValueError(f"{name} must be 1 or 0 (or true/false, yes/no, on/off), got {raw!r}")

    def chat_ids(self, var: str) -> frozenset[int]:
        name, raw = self.raw(var)
        try:
            return frozenset(int(i) for i in raw.split(",") if i.strip())
        except ValueError:
            raise ValueError(f"{name} must be comma-separated chat ids, got {raw!r}") from None

    def base_url(self, var: str) -> str:
        """An http(s):// URL without the trailing slash; blank (or a lone slash): Telegram's."""
        name, raw = self.raw(var)
        url = raw.rstrip("/") or TELEGRAM_API
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{name} must start with http:// or https://, got {raw!r}")
        return url

    def database_url(self, var: str) -> str:
        name, raw = self.raw(var)
        if raw and not raw.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"{name} must be a postgresql://user:password@host:port/database URL")
        return raw  # not in the message: it may hold the password

    def triton_url(self, var: str, default: str) -> str:
        name, raw = self.raw(var)
        if raw and not re.fullmatch(r"[^\s/:]+:\d{1,5}", raw):
            raise ValueError(
                f"{name} must be Triton's HTTP host:port without a scheme "
                f"(e.g. {io.DEFAULT_URL}), got {raw!r}"
            )
        return raw or default
