"""bot/history.py: the SQLite dialogue store of the Telegram bot."""
from __future__ import annotations

import sqlite3
import threading

import pytest

from bot.history import FILENAME, History

CHAT, OTHER = 42, -100777


@pytest.fixture
def history(tmp_path):
    with History.in_dir(tmp_path) as store:
        yield store


def fill(store: History, messages: list[tuple[str, str]], chat: int = CHAT) -> None:
    for role, text in messages:
        store.add(chat, role, text)


DIALOGUE = [("user", "Привет"), ("bot", "Привет!"), ("user", "Как дела?"), ("bot", "Хорошо."),
            ("user", "Что делаешь?")]


@pytest.mark.parametrize("n, expected", [
    (0, []),
    (1, ["Что делаешь?"]),
    (3, ["Как дела?", "Хорошо.", "Что делаешь?"]),
    (5, [text for _, text in DIALOGUE]),
    (50, [text for _, text in DIALOGUE]),
])
def test_last_n_turns_oldest_first(history, n, expected):
    fill(history, DIALOGUE)
    assert history.turns(CHAT, n) == expected


@pytest.mark.parametrize("messages, expected", [
    ([("user", "а"), ("user", "б")], ["а\nб"]),  # the model failed after "а": one user turn
    ([("user", "x"), ("bot", "y"), ("user", "а"), ("user", "б"), ("user", "в")], ["x", "y", "а\nб\nв"]),
    ([("bot", "y"), ("user", "а"), ("user", "б")], ["y", "а\nб"]),
], ids=["two", "three-after-a-reply", "after-bot"])
def test_consecutive_messages_of_one_speaker_are_one_turn(history, messages, expected):
    fill(history, messages)
    assert history.turns(CHAT, 3) == expected


def test_merged_turn_counts_once_towards_n(history):
    fill(history, [("user", "1"), ("bot", "2"), ("user", "3"), ("user", "4"), ("bot", "5"), ("user", "6")])
    assert history.turns(CHAT, 3) == ["3\n4", "5", "6"]


@pytest.mark.parametrize("text", ["Привет 👋🏽 как дела? 🇷🇺", "emoji only 😀😃😄", "tab\tand\nnewline",
                                  "'; DROP TABLE messages; --", "x" * 10_000, "中文 עברית العربية"])
def test_text_comes_back_unchanged(history, text):
    history.add(CHAT, "user", text)
    assert history.turns(CHAT, 3) == [text]


def test_reset_forgets_only_that_chat(history):
    fill(history, DIALOGUE)
    fill(history, [("user", "чужой"), ("bot", "разговор")], chat=OTHER)
    assert history.reset(CHAT) == len(DIALOGUE)
    assert history.turns(CHAT, 3) == []
    assert history.turns(OTHER, 3) == ["чужой", "разговор"]
    history.add(CHAT, "user", "Начнём сначала")
    assert history.turns(CHAT, 3) == ["Начнём сначала"]
    assert history.reset(12345) == 0  # an unknown chat is fine


def test_history_survives_reopening(tmp_path):
    with History.in_dir(tmp_path) as store:
        fill(store, DIALOGUE)
        store.reset(OTHER)
    with History.in_dir(tmp_path) as store:
        assert store.turns(CHAT, 3) == ["Как дела?", "Хорошо.", "Что делаешь?"]


def test_every_message_is_committed_at_once_in_wal_mode(tmp_path):
    """A second connection (another process after a crash) sees each message as soon as it is added."""
    with History.in_dir(tmp_path) as store:
        store.add(CHAT, "user", "сохранено")
        other = sqlite3.connect(tmp_path / FILENAME)
        try:
            assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert other.execute("SELECT text FROM messages").fetchall() == [("сохранено",)]
        finally:
            other.close()


def test_old_rows_are_pruned_per_chat(tmp_path):
    with History(tmp_path / "h.sqlite3", keep=4) as store:
        for i in range(10):
            store.add(CHAT, "user" if i % 2 == 0 else "bot", str(i))
        store.add(OTHER, "user", "x")
        rows = store._db.execute("SELECT chat_id, text FROM messages ORDER BY id").fetchall()
    assert rows == [(CHAT, "6"), (CHAT, "7"), (CHAT, "8"), (CHAT, "9"), (OTHER, "x")]


def test_unknown_role_is_refused(history):
    with pytest.raises(sqlite3.IntegrityError):
        history.add(CHAT, "system", "x")  # type: ignore[arg-type]


def test_shared_between_threads(history):
    def writer(chat: int) -> None:
        for i in range(50):
            history.add(chat, "user" if i % 2 == 0 else "bot", f"{chat}-{i}")

    threads = [threading.Thread(target=writer, args=(chat,)) for chat in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for chat in range(4):
        assert history.turns(chat, 50) == [f"{chat}-{i}" for i in range(50)]
