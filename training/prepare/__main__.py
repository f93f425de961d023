"""CLI: `python -m training.prepare <source> ... --output data.csv`, one subcommand per source
(telegram: a Telegram Desktop export; history: the bot's own history, its liked replies).

A new source adds a `add_<source>(subparsers)` here that sets `run` (Namespace -> report with
format()) and an entry in SOURCES; bad input raises PrepareError: `error: …` and status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from training.prepare.dialogues import DEFAULT_GAP_MINUTES, DEFAULT_MAX_CHARS, MIN_MAX_CHARS
from training.prepare.output import PrepareError


def add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--output", required=True, metavar="CSV", help="the CSV to write; replaced only when all went well"
    )


def add_max_chars(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-chars",
        type=int,
        default=DEFAULT_MAX_CHARS,
        metavar="N",
        help=f"turns longer than N characters are cut, a response keeping its start and a context its "
        f"end (default: %(default)s, at least {MIN_MAX_CHARS})",
    )


def add_common(p: argparse.ArgumentParser) -> None:
    """The flags of every source of chat exports: the output and the turn rules
    (training/prepare/dialogues.py)."""
    add_output(p)
    p.add_argument(
        "--gap-minutes",
        type=float,
        default=DEFAULT_GAP_MINUTES,
        metavar="N",
        help="a pause longer than N minutes between two messages ends a dialogue (default: %(default)g)",
    )
    add_max_chars(p)


def add_telegram(sources: argparse._SubParsersAction) -> None:
    p = sources.add_parser(
        "telegram",
        help="Telegram Desktop's JSON export: one chat or the whole account",
        description="Rows from Telegram Desktop's machine-readable export (result.json): each turn of "
        "the speaker that answers another turn, with up to three turns before it as context.",
    )
    p.add_argument("export", metavar="EXPORT.json", help="the export's result.json (one chat or the account)")
    p.add_argument(
        "--speaker",
        metavar="WHO",
        help="whose replies to learn: a name as in the messages' `from`, or an id as in `from_id` "
        "(user123 or 123); default: the owner of a whole-account export (required for one chat)",
    )
    add_common(p)
    p.add_argument(
        "--groups", action="store_true", help="whole-account export: groups too, not only personal chats"
    )
    p.add_argument(
        "--keep-forwarded",
        action="store_true",
        help="keep forwarded messages, as turns of who forwarded them",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(run=run_telegram)


def run_telegram(args: argparse.Namespace):
    from training.prepare.telegram import TelegramConfig, convert

    return convert(
        TelegramConfig(
            export=args.export,
            output=args.output,
            speaker=args.speaker,
            gap_minutes=args.gap_minutes,
            max_chars=args.max_chars,
            groups=args.groups,
            keep_forwarded=args.keep_forwarded,
            progress=not args.no_progress,
        )
    )


def add_history(sources: argparse._SubParsersAction) -> None:
    p = sources.add_parser(
        "history",
        help="the bot's history: the replies users liked (👍), from chats that agreed (/share)",
        description="Rows from the bot's own history: each stored reply with more 👍 than 👎 (at least "
        "--min-margin more) from a chat that agreed that its dialogues train the next model (/share, or "
        "BOT_SHARE_DEFAULT=1); the prompt's last three turns are the context, the reply the response.",
    )
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="the bot's history.sqlite3 (or its BOT_DATA_DIR folder), or its postgresql:// URL "
        "(BOT_DATABASE_URL; leave the password out and set PGPASSWORD)",
    )
    add_output(p)
    p.add_argument(
        "--min-margin",
        type=int,
        default=1,
        metavar="N",
        help="a reply needs at least N more 👍 than 👎 (default: %(default)s, i.e. more 👍 than 👎)",
    )
    add_max_chars(p)
    p.set_defaults(run=run_history)


def run_history(args: argparse.Namespace):
    from training.prepare.history import HistoryConfig, convert

    return convert(
        HistoryConfig(
            source=args.source, output=args.output, min_margin=args.min_margin, max_chars=args.max_chars
        )
    )


SOURCES: list[Callable[[argparse._SubParsersAction], None]] = [
    add_telegram,
    add_history,
]  # one per subcommand


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        "python -m training.prepare",
        description="Build the training CSV (context_1,context_2,context_3,response) that "
        "`python -m training --data` reads, from a chat export or the bot's own history. "
        "See docs/prepare.md.",
    )
    sources = p.add_subparsers(title="sources", metavar="SOURCE", required=True)
    for add in SOURCES:
        add(sources)
    return p


def main(argv: list[str] | None = None) -> int:
    """Convert; print the report to stdout. Bad input: `error: …` on stderr, status 2, no file."""
    args = parser().parse_args(argv)
    try:
        report = args.run(args)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no file was written", file=sys.stderr)
        return 130
    print(report.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
