"""The bot's history into the training CSV: `convert(HistoryConfig(...))`, `python -m training.prepare
history SOURCE` (docs/prepare.md).

SOURCE is the bot's SQLite file (history.sqlite3, or the BOT_DATA_DIR folder that holds it) or its
PostgreSQL database (a postgresql:// URL). A row is written for each stored reply with at least
`min_margin` more 👍 than 👎 (default 1: more 👍 than 👎) whose chat agreed that its dialogues train
the next model: it said /share, or it never said /share off and the bot runs with BOT_SHARE_DEFAULT=1
(as the bot last started: it records the setting in the store). The prompt's last three turns are
the contexts, the reply is the response, cleaned and cut as every source's rows
(training/prepare/dialogues.py). A forgotten chat (/forget) has nothing left in the store to read.

The store is read, never written or migrated: SQLite read-only, PostgreSQL in one read-only
transaction. It imports bot.history's plain modules (no Telegram code); asyncpg only for a URL.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from bot.history.schema import FEEDBACK_VERSION
from bot.history.store import FILENAME
from bot.history.votes import Harvest, read_liked
from contract.dialogue import CONTEXT_TURNS
from training.prepare.dialogues import DEFAULT_MAX_CHARS, MIN_MAX_CHARS, clean_text, cut_end, cut_start
from training.prepare.output import PrepareError, Row, RowWriter, check_output

URL_SCHEMES = ("postgresql://", "postgres://")
CONNECT_SECONDS = 10.0


@dataclass
class HistoryConfig:
    """One conversion of the bot's history into the training CSV."""

    source: str  # the SQLite file or its folder, or a postgresql:// URL
    output: Path  # the CSV to write; replaced only once everything was read without error
    min_margin: int = 1  # a reply needs at least this many more 👍 than 👎
    max_chars: int = DEFAULT_MAX_CHARS  # longer turns are cut: a response keeps its start, a context its end

    def __post_init__(self) -> None:
        self.source, self.output = str(self.source), Path(self.output)
        checks = {
            "--min-margin must be >= 1 (a reply needs more 👍 than 👎)": self.min_margin >= 1,
            f"--max-chars must be >= {MIN_MAX_CHARS}": self.max_chars >= MIN_MAX_CHARS,
        }
        bad = [message for message, ok in checks.items() if not ok]
        if bad:
            raise PrepareError("; ".join(bad))

    @property
    def is_url(self) -> bool:
        return self.source.startswith(URL_SCHEMES)


@dataclass
class HistoryReport:
    """What `python -m training.prepare history` read, skipped and wrote."""

    source: str  # the file, or the URL without its password
    output: Path
    min_margin: int
    replies: int = 0  # replies stored
    liked: int = 0  # with at least min_margin more 👍 than 👎
    no_consent: int = 0  # liked, of chats that did not agree
    no_consent_chats: set[int] = field(default_factory=set)
    empty: int = 0  # liked and agreed, but no row: no turn or reply left once cleaned
    cut: int = 0  # turns longer than max_chars, cut
    written: int = 0  # distinct rows in the CSV
    duplicates: int = 0  # rows dropped as identical to a row written before
    replaced: bool = False  # the CSV replaced an existing file

    def format(self) -> str:
        rule = "more 👍 than 👎" if self.min_margin == 1 else f"at least {self.min_margin} more 👍 than 👎"
        return "\n".join(
            [
                f"{self.source}: replies read {self.replies}, liked ({rule}) {self.liked}",
                f"skipped: {self.no_consent} of {len(self.no_consent_chats)} chats that did not agree "
                f"(/share), {self.empty} with nothing left once cleaned; turns cut {self.cut}",
                f"rows {self.liked - self.no_consent - self.empty}, identical dropped {self.duplicates}, "
                f"written {self.written} to {self.output}"
                + (" (replaced the earlier file)" if self.replaced else ""),
            ]
        )


def row_of(prompt: list[str], reply: str, max_chars: int) -> tuple[Row | None, int]:
    """The CSV row of a reply and the turns it answered (None: nothing left once cleaned), and how
    many of its turns were cut."""
    turns = [t for t in map(clean_text, prompt) if t][-CONTEXT_TURNS:]
    response = clean_text(reply)
    cut = sum(len(t) > max_chars for t in [*turns, response])
    if not turns or not response:
        return None, cut
    contexts = ("", "", *(cut_end(t, max_chars) for t in turns))[-CONTEXT_TURNS:]
    return (contexts[0], contexts[1], contexts[2], cut_start(response, max_chars)), cut


def read_sqlite(source: Path, min_margin: int) -> Harvest:
    """The liked replies of the bot's SQLite file (or of the folder holding it), read-only."""
    from bot.history.sqlite import SQLiteConnection

    path = source / FILENAME if source.is_dir() else source
    if not path.is_file():
        raise PrepareError(
            f"{path}: no such file; pass the bot's {FILENAME} (in its BOT_DATA_DIR) or a postgresql:// URL"
        )
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as e:
            raise PrepareError(f"{path}: not a SQLite file ({e}); pass the bot's {FILENAME}") from None
        if "messages" not in tables:
            raise PrepareError(f"{path}: a SQLite file, but not the bot's history (no messages table)")
        check_version(str(path), version)
        db.row_factory = sqlite3.Row
        return asyncio.run(read_liked(SQLiteConnection(db), min_margin))
    finally:
        db.close()


def check_version(where: str, version: int) -> None:
    if version < FEEDBACK_VERSION:
        raise PrepareError(
            f"{where}: history schema v{version} is too old: it has no votes (v{FEEDBACK_VERSION} on); "
            "start this version of the bot once on it (it migrates the history at start), then run again"
        )


async def read_postgres(url: str, min_margin: int) -> Harvest:
    """The liked replies of the bot's PostgreSQL database, in one read-only transaction."""
    try:
        import asyncpg

        from bot.history.postgres import redact
    except ImportError:
        raise PrepareError("reading PostgreSQL needs asyncpg: pip install -r requirements/bot.txt") from None
    where = redact(url)
    try:
        conn = await asyncpg.connect(url, timeout=CONNECT_SECONDS)
    except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError) as e:
        raise PrepareError(
            f"{where} refused the connection: {e}; fix the user, password or database"
        ) from None
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        raise PrepareError(
            f"no PostgreSQL answered at {where} ({e or type(e).__name__}); start the database or fix the URL"
        ) from None
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            try:
                version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            except asyncpg.UndefinedTableError:
                raise PrepareError(
                    f"{where}: not the bot's history database (no schema_version table)"
                ) from None
            check_version(where, version)
            return await read_liked(conn, min_margin)
    finally:
        await conn.close()


def convert(cfg: HistoryConfig) -> HistoryReport:
    """Write cfg.output from the liked replies of chats that agreed; the report says what was read,
    skipped and written. PrepareError (nothing written): an unusable source, or no row."""
    if cfg.is_url:
        check_output(cfg.output)
        from bot.history.postgres import redact

        harvest = asyncio.run(read_postgres(cfg.source, cfg.min_margin))
        where = redact(cfg.source)
    else:
        check_output(cfg.output, Path(cfg.source))
        harvest = read_sqlite(Path(cfg.source), cfg.min_margin)
        where = cfg.source
    report = HistoryReport(
        where, cfg.output, cfg.min_margin, replies=harvest.replies, liked=len(harvest.liked)
    )
    with RowWriter(cfg.output) as writer:
        for liked in harvest.liked:
            if not liked.shared:
                report.no_consent += 1
                report.no_consent_chats.add(liked.chat_id)
                continue
            row, cut = row_of(liked.prompt, liked.text, cfg.max_chars)
            report.cut += cut
            if row is None:
                report.empty += 1
            else:
                writer.write(row)
        if not writer.written:
            raise PrepareError(
                f"{where}: no row: {report.replies} replies, {report.liked} liked, {report.no_consent} "
                "of them of chats that did not agree (/share); wait for more votes, or lower --min-margin"
            )
    report.written, report.duplicates, report.replaced = writer.written, writer.duplicates, writer.replaced
    return report
