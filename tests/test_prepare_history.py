"""training/prepare/history.py: `python -m training.prepare history SOURCE`: the liked replies of
chats that agreed, from the bot's SQLite file or PostgreSQL, as the training CSV (concatenable with
an export's), a tiny training run on it, the report, and clear errors."""

from __future__ import annotations

import asyncio
import csv
import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from bot.history import open_store
from bot.history.sqlite import MIGRATIONS
from bot.history.store import FILENAME, DatabaseSettings, Store
from serve.server import free_port
from tests.helpers import ROOT
from tests.telegram_exports import realistic_account, write
from training.config import TrainConfig
from training.data import load_examples
from training.prepare.__main__ import main
from training.prepare.history import HistoryConfig, convert, row_of
from training.prepare.telegram import TelegramConfig
from training.prepare.telegram import convert as convert_export
from training.train import CONFIG_FILE, train

SHARED, SILENT, REFUSED, FORGOTTEN = 1, 2, -3, 4  # chats: /share, never said, /share off, /forget
USERS = range(100, 105)


async def reply(
    store: Store, chat: int, message_id: int, prompt: list[str], text: str, up: int, down: int
) -> None:
    """A reply sent in `chat`, with `up` 👍 and `down` 👎 from different users."""
    await store.add(chat, "user", prompt[-1], message_id)
    stored = await store.record_reply(chat, message_id, prompt, text, "2", {"temperature": 1.2})
    await store.attach(chat, stored.id, [1000 + message_id])
    await store.mark_answered(chat, message_id, reply=stored.row)
    for user, vote in zip(USERS, [1] * up + [-1] * down, strict=False):
        await store.vote(chat, stored.id, user, vote)


async def fill(store: Store) -> None:
    await reply(store, SHARED, 1, ["Привет", "Привет!", "Как дела?"], "Отлично, а у тебя?", 2, 0)
    await reply(store, SHARED, 2, ["Что ешь?", "Суп", "Вкусный?", "Очень"], "Приятного аппетита!", 2, 1)
    await reply(store, SHARED, 3, ["Скучно"], "Почитай книгу", 1, 2)  # disliked
    await reply(store, SHARED, 4, ["Пока"], "До встречи", 1, 1)  # tied
    await reply(store, SILENT, 1, ["Как тебя зовут?"], "Бот", 2, 0)
    await reply(store, REFUSED, 1, ["Погода?"], "Солнечно", 3, 0)
    await reply(store, FORGOTTEN, 1, ["Секрет"], "Никому не скажу", 3, 0)
    await store.set_consent(SHARED, True, 100)
    await store.set_consent(REFUSED, False, 100)
    await store.set_consent(FORGOTTEN, True, 100)
    await store.forget_chat(FORGOTTEN)


LIKED_SHARED = [
    ("Привет", "Привет!", "Как дела?", "Отлично, а у тебя?"),
    ("Суп", "Вкусный?", "Очень", "Приятного аппетита!"),  # the last three turns of four
]
SILENT_ROW = ("", "", "Как тебя зовут?", "Бот")


@pytest.fixture(params=["sqlite", "postgresql"])
def source(request, tmp_path) -> str:
    url = request.getfixturevalue("database_url") if request.param == "postgresql" else ""
    return url or str(tmp_path / "data" / FILENAME)


def stored(source: str, tmp_path: Path, share_default: bool = False) -> str:
    """The store at `source` filled by a bot started with BOT_SHARE_DEFAULT=`share_default`."""

    async def main() -> None:
        url = source if source.startswith("postgresql://") else ""
        store = open_store(tmp_path / "data", DatabaseSettings(url, 5, 2, 3), share_default)
        await store.start()
        try:
            await fill(store)
        finally:
            await store.close()

    asyncio.run(main())
    return source


def rows(path: Path) -> list[tuple[str, ...]]:
    with path.open(encoding="utf-8", newline="") as f:
        return [tuple(r) for r in csv.reader(f)]


@pytest.mark.parametrize("share_default", [False, True])
def test_only_liked_replies_of_chats_that_agreed(source, tmp_path, share_default):
    stored(source, tmp_path, share_default)
    output = tmp_path / "history.csv"
    report = convert(HistoryConfig(source=source, output=output))
    expected = LIKED_SHARED + [SILENT_ROW] * share_default
    assert rows(output) == [("context_1", "context_2", "context_3", "response"), *expected]
    assert (report.replies, report.liked, report.written) == (6, 4, len(expected))  # the forgotten: gone
    assert report.no_consent == 2 - share_default and report.empty == 0
    strict = convert(HistoryConfig(source=source, output=output, min_margin=2))
    assert rows(output)[1:] == [LIKED_SHARED[0]] + [SILENT_ROW] * share_default  # 2 to 1 is too few
    assert (strict.liked, strict.replaced) == (3, True)


def test_the_csv_joins_an_exports_and_a_tiny_model_trains_on_both(tmp_path, capsys):
    source = stored(str(tmp_path / "data"), tmp_path)  # the BOT_DATA_DIR folder
    assert main(["history", source, "--output", str(tmp_path / "history.csv")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{source}: replies read 6, liked (more 👍 than 👎) 4",
        "skipped: 2 of 2 chats that did not agree (/share), 0 with nothing left once cleaned; turns cut 0",
        f"rows 2, identical dropped 0, written 2 to {tmp_path / 'history.csv'}",
    ]
    export = write(tmp_path / "result.json", realistic_account())
    convert_export(TelegramConfig(export=export, output=tmp_path / "export.csv", progress=False))
    history, exported = rows(tmp_path / "history.csv"), rows(tmp_path / "export.csv")
    assert history[0] == exported[0]  # the same header: the files concatenate (without the second's)
    joined = tmp_path / "data.csv"
    joined.write_text(
        (tmp_path / "export.csv").read_text(encoding="utf-8")
        + "".join((tmp_path / "history.csv").read_text(encoding="utf-8").splitlines(keepends=True)[1:]),
        encoding="utf-8",
    )
    examples = load_examples(joined)
    assert examples.rows == len(exported) - 1 + len(history) - 1 and examples.no_context == 0
    model = train(
        TrainConfig(data=joined, output=tmp_path / "model", base_model="tiny", max_steps=3, save_steps=3)
    )
    saved = json.loads((model / CONFIG_FILE).read_text(encoding="utf-8"))
    assert saved["metrics"]["step"] == 3 and saved["data_files"][0]["rows"] == examples.rows


def test_turns_are_cleaned_and_cut_as_every_sources():
    long = "слово " * 100 + "конец"
    row, cut = row_of(["", "один", "два @@ПЕРВЫЙ@@", "три", long], "Ответ\u200b  тут " + long, 40)
    assert row is not None and row[:2] == ("два", "три") and row[2].endswith("конец") and len(row[2]) <= 40
    assert row[3].startswith("Ответ тут слово") and len(row[3]) <= 40 and cut == 2
    assert row_of(["   "], "ответ", 40) == (None, 0) and row_of(["вопрос"], "@@ВТОРОЙ@@", 40) == (None, 0)


def test_reading_the_store_imports_no_telegram_code():
    code = (
        "import sys; from training.prepare.history import convert; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('telegram', 'asyncpg', 'torch')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# -- errors ---------------------------------------------------------------------------------------


def error(capsys, *argv: str) -> str:
    assert main(["history", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    return err


def test_a_source_that_is_no_history_is_named(tmp_path, capsys):
    output = str(tmp_path / "out.csv")
    assert "no such file; pass the bot's history.sqlite3" in error(
        capsys, str(tmp_path / "nope"), "--output", output
    )
    text = tmp_path / "notes.txt"
    text.write_text("не база данных " * 100, encoding="utf-8")
    assert "not a SQLite file" in error(capsys, str(text), "--output", output)
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE things (x)")
    assert "not the bot's history (no messages table)" in error(capsys, str(other), "--output", output)
    assert not (tmp_path / "out.csv").exists()


def test_a_history_too_old_for_votes_names_the_fix(tmp_path, capsys):
    path = tmp_path / FILENAME
    with sqlite3.connect(path) as db:
        for sql in MIGRATIONS[:2]:
            for statement in sql.split(";"):
                db.execute(statement)
        db.execute("PRAGMA user_version = 2")
    err = error(capsys, str(path), "--output", str(tmp_path / "out.csv"))
    assert (
        "history schema v2 is too old: it has no votes" in err and "start this version of the bot once" in err
    )
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (2,)  # read, never migrated


def test_a_history_without_rows_writes_nothing(tmp_path, capsys):
    path = stored(str(tmp_path / "data" / FILENAME), tmp_path)
    err = error(capsys, path, "--output", str(tmp_path / "out.csv"), "--min-margin", "4")
    assert "no row: 6 replies, 0 liked" in err and "lower --min-margin" in err
    assert "--min-margin must be >= 1" in error(
        capsys, path, "--output", str(tmp_path / "o.csv"), "--min-margin", "0"
    )
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "o.csv").exists()


def test_postgresql_that_is_unreachable_refuses_or_is_no_history(postgres, database_url, tmp_path, capsys):
    output = str(tmp_path / "out.csv")
    nobody = f"postgresql://bot:s3cret@127.0.0.1:{free_port()}/bot"
    err = error(capsys, nobody, "--output", output)
    assert "no PostgreSQL answered at postgresql://bot:***@127.0.0.1" in err and "s3cret" not in err
    err = error(capsys, postgres.url(database_url.rsplit("/", 1)[1], password="wrong-pw"), "--output", output)
    assert (
        "refused the connection" in err and "password authentication failed" in err and "wrong-pw" not in err
    )
    err = error(capsys, database_url, "--output", output)  # an empty database
    assert "not the bot's history database (no schema_version table)" in err
    assert not (tmp_path / "out.csv").exists()
