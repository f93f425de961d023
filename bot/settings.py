"""Every setting of the bot: the environment variables of docs/bot.md's table, under the command
line's flags, checked at start-up (pydantic-settings).

Each field of `Settings` names its variable (its alias) and has a type that checks the value and
says what a wrong one must be instead. `Settings.from_env` is the only reader of the environment in
bot/: the process's variables over a `.env` file in the working directory (one set in the
environment wins, even blank), or only a mapping it is given (the tests'). A blank value is unset:
the default. A flag given on the command line wins over its
variable (`--timeout` over TRITON_TIMEOUT, `--tokenizer` over BOT_TOKENIZER_DIR). A wrong value is
a ValueError that names the variable (or the flag it came from) and what it should be, and shows
the value unless it may be a secret; `python -m bot` prints it as one `error: …` line and exits
with 2.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails, PydanticUseDefault
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from bot.history.store import DATABASE_URL, DatabaseSettings
from client.transport import DEFAULT_TIMEOUT
from contract import triton_io as io

Mode = Literal["console", "polling", "webhook"]  # what `python -m bot` runs: the settings it needs

TELEGRAM_API = "https://api.telegram.org"
DEFAULT_TOKENIZER = Path("model_repository") / io.DEFAULT_MODEL_NAME  # the versions' tokenizers
FLAGS = {"TRITON_TIMEOUT": "--timeout", "BOT_TOKENIZER_DIR": "--tokenizer"}  # variable: its flag
ENV_FILE = Path(".env")  # read by `python -m bot` under the process's environment (compose's too)


def _telegrams_if_blank(url: str) -> str:
    """A lone slash is blank too: Telegram's server."""
    if not url.rstrip("/"):
        raise PydanticUseDefault
    return url


def _comma_separated(value: Any) -> Any:
    if isinstance(value, str):
        return frozenset(int(item) for item in value.split(",") if item.strip())
    return value


# The values' types; each description is what the error says a wrong value must be.
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False, description="must be a number of seconds > 0")]
SecondsOrOff = Annotated[
    float, Field(ge=0, allow_inf_nan=False, description="must be a number of seconds >= 0")
]
Port = Annotated[int, Field(ge=1, le=65535, description="must be a port number, 1-65535")]
PortOrOff = Annotated[int, Field(ge=0, le=65535, description="must be a port number, 0-65535")]
Switch = Annotated[bool, Field(description="must be 1 or 0 (or true/false, yes/no, on/off)")]
ChatIds = Annotated[
    frozenset[int],
    NoDecode,  # not JSON: "1,-100200"
    BeforeValidator(_comma_separated),
    Field(description="must be comma-separated chat ids"),
]
BotApiURL = Annotated[
    str,
    BeforeValidator(_telegrams_if_blank),
    Field(pattern=r"^https?://[^/]", description="must start with http:// or https://"),
    AfterValidator(lambda url: url.rstrip("/")),
]
TritonURL = Annotated[
    str,
    Field(
        pattern=r"^[^\s/:]+:\d{1,5}$",
        description=f"must be Triton's HTTP host:port without a scheme (e.g. {io.DEFAULT_URL})",
    ),
]
DatabaseURL = Annotated[
    str,
    Field(
        pattern=r"^postgres(ql)?://",
        description="must be a postgresql://user:password@host:port/database URL",
    ),
]


def var(name: str, default: Any, secret: bool = False) -> Any:
    """A field read from the variable `name`; a secret's value is kept out of repr and errors."""
    return Field(default, validation_alias=name, repr=not secret)


@dataclass(frozen=True)
class TritonSettings:
    """The TRITON_* settings, as `python -m bot` builds its Triton client from them."""

    url: str
    model: str
    timeout: float


class Settings(BaseSettings):
    """The bot's settings. Every value is checked in every mode; only the ones a mode needs must
    be set (the console needs no token, the webhook its URL and secret). `Settings(field=...)`
    holds what it is given and the defaults; `from_env` reads the variables."""

    model_config = SettingsConfigDict(
        case_sensitive=True,
        extra="ignore",  # .env holds compose's variables too
        frozen=True,
        validate_by_name=True,
        validate_default=False,  # a blank value falls back to its default, taken as it is
    )

    token: str = var("TELEGRAM_BOT_TOKEN", "", secret=True)  # from @BotFather (kept out of logs)
    base_url: BotApiURL = var("TELEGRAM_BASE_URL", TELEGRAM_API)  # another Bot API server (blank: Telegram's)
    data_dir: Path = var("BOT_DATA_DIR", Path("data"))  # where history.sqlite3 lives
    allowed_chat_ids: ChatIds = var("ALLOWED_CHAT_IDS", frozenset())  # the chats answered (empty: all)
    metrics_port: PortOrOff = var("BOT_METRICS_PORT", 9100)  # Prometheus /metrics (0: off)
    webhook_url: str = var("BOT_WEBHOOK_URL", "")  # public https:// URL Telegram posts to (webhook mode)
    webhook_secret: str = var("BOT_WEBHOOK_SECRET", "", secret=True)  # checked on every post
    webhook_port: Port = var("BOT_WEBHOOK_PORT", 8443)  # where the webhook listens
    draft_every: SecondsOrOff = var("BOT_DRAFT_INTERVAL", 1.0)  # seconds between drafts (0: no drafts)
    feedback_buttons: Switch = var("BOT_FEEDBACK_BUTTONS", True)  # 👍/👎 under each reply (0: none)
    feedback_groups: Switch = var("BOT_FEEDBACK_GROUPS", False)  # the buttons in groups too (0: private only)
    # chats that never said /share agree that their dialogues train the next model (a private bot)
    share_default: Switch = var("BOT_SHARE_DEFAULT", False)
    database_url: DatabaseURL = var(DATABASE_URL, "", secret=True)  # PostgreSQL history (blank: SQLite)
    # how long the first connection to PostgreSQL is retried before the bot exits
    connect_seconds: Seconds = var("BOT_DATABASE_CONNECT_SECONDS", DatabaseSettings.connect_seconds)
    # how long a call retries a lost connection before the user gets "unavailable"
    retry_seconds: Seconds = var("BOT_DATABASE_RETRY_SECONDS", DatabaseSettings.retry_seconds)
    # how long a hung replica can hold a chat's turn (a killed one's goes at once)
    lock_seconds: Seconds = var("BOT_CHAT_LOCK_SECONDS", DatabaseSettings.lock_seconds)
    triton_url: TritonURL = var("TRITON_URL", io.DEFAULT_URL)  # Triton's HTTP host:port, without a scheme
    triton_model: str = var("TRITON_MODEL", io.DEFAULT_MODEL_NAME)  # the model's name in the repository
    triton_timeout: Seconds = var("TRITON_TIMEOUT", DEFAULT_TIMEOUT)  # per call; in Telegram also per reply
    step_gate: str = var("TRITON_STEP_GATE", "")  # retired: refused with the reason (rounds are the only way)
    tokenizer_dir: Path = var("BOT_TOKENIZER_DIR", DEFAULT_TOKENIZER)  # model or tokenizer folder

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        """The value without its surrounding blanks; a blank one leaves the field at its default."""
        if isinstance(value, str):
            value = value.strip()
            if not value:
                raise PydanticUseDefault
        return value

    @property
    def database(self) -> DatabaseSettings:
        """The history's settings: PostgreSQL with a URL, else SQLite in data_dir."""
        return DatabaseSettings(
            self.database_url, self.connect_seconds, self.retry_seconds, self.lock_seconds
        )

    @property
    def triton(self) -> TritonSettings:
        return TritonSettings(self.triton_url, self.triton_model, self.triton_timeout)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """`Settings(...)` takes only its arguments: the environment is read by `from_env`."""
        return (init_settings,)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        flags: Mapping[str, str | None] | None = None,
        mode: Mode = "polling",
    ) -> Settings:
        """The settings from `env` (None: the process's environment over ENV_FILE), `flags` (by
        flag name, None: not given) over them; a ValueError names the variable or flag that is
        missing or wrong."""
        flags = flags or {}
        unknown = set(flags) - set(FLAGS.values())
        if unknown:
            raise ValueError(
                f"no setting has the flag(s) {sorted(unknown)}: known are {sorted(FLAGS.values())}"
            )
        sources = (
            (EnvSettingsSource(cls), DotEnvSettingsSource(cls, env_file=ENV_FILE))
            if env is None
            else (_Variables(cls, env),)
        )
        values: dict[str, Any] = {}
        for source in sources:  # the first one that has a variable wins
            values = {**source(), **values}
        values.update((name, flags[flag]) for name, flag in FLAGS.items() if flags.get(flag) is not None)
        try:
            settings = cls(**values)
        except ValidationError as exc:
            raise ValueError(_error_line(exc.errors()[0], flags)) from None
        if settings.step_gate:
            raise ValueError(
                "TRITON_STEP_GATE is no longer a setting: every generation of a bot process steps "
                "in one request per round (client/rounds.py); remove it"
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


class _Variables(EnvSettingsSource):
    """pydantic-settings' source of environment variables, reading a given mapping instead."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]):
        super().__init__(settings_cls)
        self.env_vars = dict(env)


def _error_line(error: ErrorDetails, flags: Mapping[str, str | None]) -> str:
    """One line for pydantic's first error: the variable (or its flag, if given), what it must be,
    and the value it got unless the field is a secret."""
    variable = str(error["loc"][0])
    field = next(f for f in Settings.model_fields.values() if f.validation_alias == variable)
    name = FLAGS[variable] if flags.get(FLAGS.get(variable, "")) is not None else variable
    got = f", got {error['input']!r}" if field.repr else ""
    return f"{name} {field.description or 'is wrong: ' + error['msg']}{got}"
