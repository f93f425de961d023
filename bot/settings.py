"""The bot's settings from environment variables (the README lists them), checked at start-up.

A wrong value is a ValueError that names the variable and what it should be; `python -m bot`
prints it as one `error: …` line and exits with status 2.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bot.history import DatabaseSettings

TELEGRAM_API = "https://api.telegram.org"


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    """`env[name]` as an integer; unset or blank gives `default`."""
    try:
        return int(env.get(name, "").strip() or default)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {env[name]!r}") from None


def seconds(name: str, raw: str | None, default: float, allow_zero: bool = False) -> float:
    """`raw` as a finite number of seconds, > 0 (or >= 0 with `allow_zero`); None or blank gives `default`."""
    try:
        value = float(raw) if raw and raw.strip() else default
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a number of seconds {'>= 0' if allow_zero else '> 0'}, got {raw!r}")
    return value


def env_seconds(env: Mapping[str, str], name: str, default: float, allow_zero: bool = False) -> float:
    """`env[name]` as seconds (see `seconds`)."""
    return seconds(name, env.get(name), default, allow_zero)


def triton_timeout(env: Mapping[str, str] = os.environ) -> float:
    """TRITON_TIMEOUT: seconds per Triton call (in Telegram also per whole reply); 10 by default."""
    return env_seconds(env, "TRITON_TIMEOUT", 10.0)


@dataclass(frozen=True)
class Settings:
    """The Telegram bot's environment variables."""

    token: str = field(repr=False)  # TELEGRAM_BOT_TOKEN, from @BotFather (kept out of repr and logs)
    base_url: str = TELEGRAM_API  # TELEGRAM_BASE_URL: another Bot API server (blank: Telegram's)
    data_dir: Path = Path("data")  # BOT_DATA_DIR: where history.sqlite3 lives
    allowed_chat_ids: frozenset[int] = frozenset()  # ALLOWED_CHAT_IDS: the chats answered (empty: all)
    metrics_port: int = 9100  # BOT_METRICS_PORT: Prometheus /metrics (0: off)
    webhook_url: str = ""  # BOT_WEBHOOK_URL: public https:// URL Telegram posts to (webhook mode)
    webhook_secret: str = field(default="", repr=False)  # BOT_WEBHOOK_SECRET: checked on every post
    webhook_port: int = 8443  # BOT_WEBHOOK_PORT: where the webhook listens
    draft_every: float = 1.0  # BOT_DRAFT_INTERVAL: seconds between drafts (0: no drafts)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)  # BOT_DATABASE_URL etc.

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, webhook: bool = False) -> Settings:
        """Read and check the variables; a ValueError names the one that is missing or wrong."""
        token = env.get("TELEGRAM_BOT_TOKEN", "").strip()
        if not token:
            raise ValueError(
                "TELEGRAM_BOT_TOKEN is not set: create a bot with @BotFather and export its token"
            )
        ids = env.get("ALLOWED_CHAT_IDS", "")
        try:
            allowed = frozenset(int(i) for i in ids.split(",") if i.strip())
        except ValueError:
            raise ValueError(f"ALLOWED_CHAT_IDS must be comma-separated chat ids, got {ids!r}") from None
        base_url = env.get("TELEGRAM_BASE_URL", "").strip().rstrip("/") or cls.base_url
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"TELEGRAM_BASE_URL must start with http:// or https://, got {base_url!r}")
        settings = cls(
            token,
            base_url,
            Path(env.get("BOT_DATA_DIR") or cls.data_dir),
            allowed,
            env_int(env, "BOT_METRICS_PORT", cls.metrics_port),
            env.get("BOT_WEBHOOK_URL", ""),
            env.get("BOT_WEBHOOK_SECRET", ""),
            env_int(env, "BOT_WEBHOOK_PORT", cls.webhook_port),
            env_seconds(env, "BOT_DRAFT_INTERVAL", cls.draft_every, allow_zero=True),
            DatabaseSettings.from_env(env),
        )
        if webhook and not settings.webhook_url.startswith("https://"):
            raise ValueError("--webhook needs BOT_WEBHOOK_URL, the public https:// URL Telegram posts to")
        if webhook and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", settings.webhook_secret):
            raise ValueError("--webhook needs BOT_WEBHOOK_SECRET: 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return settings
