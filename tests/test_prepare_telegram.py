"""training/prepare/telegram.py and telegram_export.py: Telegram Desktop's export into the training
CSV: which messages and chats count, turns, dialogues, rows, the speaker, the report, and a tiny
training run on the result. Reading the export: test_prepare_telegram_export.py; bad input:
test_prepare_errors.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from contract.dialogue import format_example
from tests.telegram_exports import (
    MAMA,
    chat,
    msg,
    realistic_account,
    service,
    sticker,
    write,
)
from training.config import TrainConfig
from training.data import load_examples
from training.prepare.__main__ import main
from training.prepare.report import TelegramReport
from training.prepare.telegram import TelegramConfig, convert
from training.train import CONFIG_FILE, train

A, B, C = ("Аня", "user1"), ("Боря", "user2"), ("Вика", "user3")


def read_rows(path: Path) -> list[tuple[str, ...]]:
    """The CSV's rows after the header."""
    with path.open(encoding="utf-8", newline="") as f:
        return [tuple(r) for r in list(csv.reader(f))[1:]]


def run_chat(tmp_path: Path, messages: list[dict], speaker: str | None = "user1", **settings):
    """Rows and report of a one-chat export of `messages`."""
    export = write(tmp_path / "result.json", chat("Чат", "personal_chat", 7, messages))
    cfg = TelegramConfig(
        export=export, output=tmp_path / "data.csv", speaker=speaker, progress=False, **settings
    )
    report = convert(cfg)
    return read_rows(cfg.output), report


def run_account(tmp_path: Path, export: dict, **settings) -> tuple[list[tuple[str, ...]], TelegramReport]:
    path = write(tmp_path / "result.json", export)
    report = convert(TelegramConfig(export=path, output=tmp_path / "data.csv", progress=False, **settings))
    return read_rows(tmp_path / "data.csv"), report


# -- messages ----------------------------------------------------------------------------------


def test_text_comes_from_entities_else_from_text(tmp_path):
    parts = [
        "Смотри ",
        {"type": "link", "text": "https://example.org"},
        " и ",
        {"type": "bold", "text": "это"},
    ]
    only_text = msg(4, 3, A, ["строкой ", {"type": "italic", "text": "и частью"}])
    del only_text["text_entities"]
    entities_win = msg(6, 5, A, "устаревший text")
    entities_win["text_entities"] = [{"type": "plain", "text": "из "}, {"type": "bold", "text": "entities"}]
    rows, _ = run_chat(
        tmp_path,
        [
            msg(1, 0, B, "Привет"),
            msg(2, 1, A, parts),
            msg(3, 2, B, "Ага"),
            only_text,
            msg(5, 4, B, "Ещё"),
            entities_win,
        ],
    )
    assert [r[3] for r in rows] == ["Смотри https://example.org и это", "строкой и частью", "из entities"]


def test_service_unsupported_media_and_forwards_are_skipped_before_turns(tmp_path):
    messages = [
        msg(1, 0, B, "Как дела?"),
        service(2, 0.5, B, "phone_call"),
        msg(3, 1, A, "Хорошо"),
        sticker(4, 1.1, B),  # skipped: A's turn goes on
        {"id": 5, "type": "unsupported"},
        msg(6, 1.2, A, "А у тебя?"),
        msg(7, 2, B, "", photo="(File not included.)"),
        msg(8, 3, B, "Смотри", forwarded_from="Новости"),
        msg(9, 4, B, "Фото с дачи", photo="(File not included.)"),  # a caption is the text
        msg(10, 5, A, "Красиво!"),
    ]
    rows, report = run_chat(tmp_path, messages)
    first = ("", "", "Как дела?", "Хорошо\nА у тебя?")
    assert rows == [first, ("Как дела?", "Хорошо\nА у тебя?", "Фото с дачи", "Красиво!")]
    forwarded = ("Как дела?", "Хорошо\nА у тебя?", "Смотри\nФото с дачи", "Красиво!")
    assert run_chat(tmp_path, messages, keep_forwarded=True)[0] == [first, forwarded]
    (c,) = report.chats
    assert (c.messages, c.kept) == (10, 5)
    assert dict(c.skipped) == {"service": 1, "unsupported": 1, "no_text": 2, "forwarded": 1}


def test_messages_without_author_time_or_visible_text_are_skipped(tmp_path):
    no_author = msg(2, 1, A, "ничей")
    del no_author["from_id"]
    no_time = msg(3, 2, A, "когда?")
    del no_time["date"], no_time["date_unixtime"]
    invisible = msg(4, 3, A, "\u200b @@ПЕРВЫЙ@@ \u2060")  # nothing left once cleaned as training cleans
    rows, report = run_chat(
        tmp_path, [msg(1, 0, B, "Эй"), no_author, no_time, invisible, msg(5, 4, A, "Тут")]
    )
    assert rows == [("", "", "Эй", "Тут")]
    assert dict(report.chats[0].skipped) == {"no_author": 1, "no_time": 1, "no_text": 1}


def test_date_is_the_fallback_of_date_unixtime(tmp_path):
    late = msg(2, 90, A, "Через полтора часа")
    del late["date_unixtime"]
    rows, report = run_chat(
        tmp_path, [msg(1, 0, B, "Привет"), late, msg(3, 91, B, "Ну"), msg(4, 92, A, "Да")]
    )
    assert rows == [("", "Через полтора часа", "Ну", "Да")] and report.chats[0].dialogues == 2


# -- turns, dialogues, rows ----------------------------------------------------------------------


def test_turns_dialogues_and_the_three_turns_of_context(tmp_path):
    messages = [
        msg(1, 0, A, "Я первая"),  # the speaker's first turn follows nothing: no row
        msg(2, 1, B, "Раз"),
        msg(3, 2, B, "и два"),
        msg(4, 3, A, "Ответ 1"),
        msg(5, 4, C, "Вика"),
        msg(6, 5, B, "Боря"),
        msg(7, 6, A, "Ответ 2"),
        msg(8, 66, B, "Ровно час спустя"),  # 60 minutes: the same dialogue
        msg(9, 127, A, "Через 61 минуту"),  # more than 60: a new dialogue, and no row
        msg(10, 128, B, "Снова"),
        msg(11, 129, A, "Ответ 3"),
    ]
    rows, report = run_chat(tmp_path, messages)
    assert rows == [
        ("", "Я первая", "Раз\nи два", "Ответ 1"),
        ("Ответ 1", "Вика", "Боря", "Ответ 2"),
        ("", "Через 61 минуту", "Снова", "Ответ 3"),
    ]
    c = report.chats[0]
    assert (c.dialogues, c.turns, c.speaker_turns, c.rows) == (2, 10, 5, 3)


def test_gap_minutes_decides_where_a_dialogue_ends(tmp_path):
    messages = [
        msg(1, 0, B, "Привет"),
        msg(2, 20, A, "Привет!"),
        msg(3, 40, B, "Как ты?"),
        msg(4, 41, A, "Норм"),
    ]
    assert len(run_chat(tmp_path, messages)[0]) == 2
    rows, report = run_chat(tmp_path, messages, gap_minutes=15)
    assert rows == [("", "", "Как ты?", "Норм")] and report.chats[0].dialogues == 3


def test_identical_rows_are_written_once(tmp_path):
    hello = [msg(1, 0, B, "Привет"), msg(2, 1, A, "Привет!")]
    again = [
        msg(3, 200, B, "Привет"),
        msg(4, 201, A, "Привет!"),
        msg(5, 202, B, "Пока"),
        msg(6, 203, A, "Пока!"),
    ]
    rows, report = run_chat(tmp_path, hello + again)
    assert rows == [("", "", "Привет", "Привет!"), ("Привет", "Привет!", "Пока", "Пока!")]
    assert (report.written, report.duplicates, report.total("rows")) == (2, 1, 3)


def test_long_turns_keep_a_responses_start_and_a_contexts_end(tmp_path):
    long_question = "начало " + "слово " * 100 + "конец вопроса?"
    long_answer = "Первое предложение ответа. " + "дальше " * 100 + "хвост"
    messages = [
        msg(1, 0, B, long_question),
        msg(2, 1, A, long_answer),
        msg(3, 2, B, "Ок"),
        msg(4, 3, A, "Да"),
    ]
    rows, report = run_chat(tmp_path, messages, max_chars=40)
    (_, _, context, response), (question, answer, short, last) = rows
    assert context.endswith("конец вопроса?") and len(context) <= 40 and context.startswith("слово ")
    assert response == "Первое предложение ответа. дальше дальше"  # cut at a space, not in a word
    assert question == context and answer.endswith("дальше хвост") and len(answer) <= 40
    assert answer.startswith("дальше") and (short, last) == ("Ок", "Да") and report.total("cut") == 2


# -- whose replies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("speaker", ["Аня", "user1", "1", "  Аня  "])
def test_speaker_by_name_or_id(tmp_path, speaker):
    rows, report = run_chat(tmp_path, [msg(1, 0, B, "Вопрос"), msg(2, 1, A, "Ответ")], speaker=speaker)
    assert rows == [("", "", "Вопрос", "Ответ")] and report.speaker == "Аня (user1)"


def test_the_other_author_as_speaker(tmp_path):
    messages = [msg(1, 0, B, "Вопрос"), msg(2, 1, A, "Ответ"), msg(3, 2, B, "Спасибо")]
    rows, report = run_chat(tmp_path, messages, speaker="Боря")
    assert rows == [("", "Вопрос", "Ответ", "Спасибо")] and report.speaker == "Боря (user2)"


def test_whole_account_defaults_to_the_owner_and_personal_chats(tmp_path):
    rows, report = run_account(tmp_path, realistic_account())
    assert report.kind == "whole account" and report.speaker == "Анна Смирнова (user111)"
    assert [(c.name, c.type) for c in report.chats] == [
        ("Мама", "personal_chat"),
        ("Дима Петров", "personal_chat"),
    ]
    assert dict(report.skipped_chats) == {
        "private_supergroup": 1,
        "saved_messages": 1,
        "public_channel": 1,
        "bot_chat": 1,
        "public_supergroup": 1,
    }
    assert ("", "", "Как прошёл день?", "Отлично! Вот фото с работы") in rows
    assert all("Продам велосипед" not in r for r in rows) and len(rows) == 9


def test_groups_adds_groups_and_left_supergroups_never_channels_bots_or_saved(tmp_path):
    rows, report = run_account(tmp_path, realistic_account(), groups=True)
    names = [c.name for c in report.chats]
    assert names == ["Мама", "Дима Петров", "Поход 🏕", "Барахолка"]
    assert dict(report.skipped_chats) == {"saved_messages": 1, "public_channel": 1, "bot_chat": 1}
    assert ("", "Кто что берёт в поход?", "Я палатку", "Я котелок и еду на всех") in rows
    assert ("", "", "Продам велосипед", "Какой размер рамы?") in rows


def test_whole_account_with_another_speaker(tmp_path):
    rows, report = run_account(tmp_path, realistic_account(), speaker=MAMA[1])
    assert report.speaker == "Мама (user222)"
    mama_first = "Аня, ты дома?\nПозвони, как сможешь"
    assert rows[0] == ("", mama_first, "Привет, мам! Да, только пришла", "Купи хлеба по дороге завтра")


def test_report_counts_and_cli_prints_it(tmp_path, capsys):
    path = write(tmp_path / "result.json", realistic_account())
    assert main(["telegram", str(path), "--output", str(tmp_path / "data.csv"), "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        f"{path} (whole account), speaker Анна Смирнова (user111), gap 60 min, turns cut at 500 characters"
    )
    assert out[2].split() == ["Мама", "personal_chat", "16", "12", "2", "5"]
    assert out[3].split() == ["Дима", "Петров", "personal_chat", "11", "8", "1", "4"]
    assert out[4].startswith("chats not converted: 5 (1 bot_chat, 1 private_supergroup, 1 public_channel")
    assert out[5].startswith("messages read 27, kept 20, skipped 7: 2 service")
    assert "1 unsupported, 3 no text" in out[5] and "1 forwarded" in out[5]
    assert out[-1] == f"rows 9, identical dropped 0, written 9 to {tmp_path / 'data.csv'}"


# -- what training reads ---------------------------------------------------------------------------


def test_the_csv_is_what_training_reads_and_a_tiny_model_trains_on_it(tmp_path):
    rows, report = run_account(tmp_path, realistic_account(), groups=True)
    data = tmp_path / "data.csv"
    examples = load_examples(data)
    assert (examples.no_response, examples.no_context) == (0, 0)
    assert examples.pairs == [format_example(r[:3], r[3]) for r in rows]
    output = train(
        TrainConfig(data=data, output=tmp_path / "model", base_model="tiny", max_steps=3, save_steps=3)
    )
    metrics = json.loads((output / CONFIG_FILE).read_text(encoding="utf-8"))["metrics"]
    assert metrics["step"] == 3 and metrics["train_rows"] + metrics["eval_rows"] == report.written == len(
        rows
    )
    assert metrics["dropped_too_long"] == 0
