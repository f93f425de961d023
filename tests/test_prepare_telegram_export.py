"""training/prepare/telegram_export.py: the export read as a stream of ijson events with the C
backend, in bounded chunks and bounded memory; the shapes of old and odd exports."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from tests.telegram_exports import account, chat, msg, realistic_account, write
from training.prepare import telegram_export
from training.prepare.telegram import TelegramConfig, convert
from training.prepare.telegram_export import CHAT_END, Chat, Export, Message

A, B = ("Аня", "user1"), ("Боря", "user2")


def items(tmp_path: Path, export: dict) -> list:
    path = write(tmp_path / "result.json", export)
    with path.open("rb") as f:
        return list(Export(path, f))


def test_the_fast_ijson_backend_reads_the_file_in_chunks(tmp_path, monkeypatch):
    assert telegram_export.backend.backend_name == "yajl2_c"
    monkeypatch.setattr(telegram_export, "CHUNK", 4096)
    reads: list[int] = []
    export = write(tmp_path / "result.json", realistic_account())
    with export.open("rb") as f:
        items = list(telegram_export.Export(export, f, on_read=reads.append))
    assert len(reads) > 3 and max(reads) <= 4096 and sum(reads) == export.stat().st_size
    assert sum(isinstance(i, telegram_export.Message) for i in items) == 40


def monologue(n: int) -> dict:
    """An account whose chat holds `n` messages of long, distinct text, one row per 50."""
    messages = []
    for i in range(n):
        who = A if i % 50 == 49 else B
        messages.append(msg(i, i * 0.1, who, f"сообщение {i} " + "текст " * 40))
    return account(("Аня Иванова", "user1"), [chat("Боря", "personal_chat", 2, messages)])


def peak_bytes(tmp_path: Path, export: dict) -> tuple[int, int]:
    """(peak Python memory of a conversion, size of the file)."""
    path = write(tmp_path / "result.json", export)
    tracemalloc.start()
    try:
        convert(TelegramConfig(export=path, output=tmp_path / "data.csv", progress=False))
        return tracemalloc.get_traced_memory()[1], path.stat().st_size
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_file(tmp_path):
    small_peak, small_size = peak_bytes(tmp_path, monologue(1_000))
    big_peak, big_size = peak_bytes(tmp_path, monologue(8_000))
    assert big_size > 7 * small_size > 7 * 2**20
    assert big_peak - small_peak < (big_size - small_size) / 20, (small_peak, big_peak)
    assert big_peak < 4 * 2**20


def test_chats_and_messages_in_file_order(tmp_path):
    got = items(tmp_path, realistic_account())
    chats = [i for i in got if isinstance(i, Chat)]
    assert [(c.name, c.type, c.id, c.section) for c in chats][:2] == [
        ("Мама", "personal_chat", 222, "chats"),
        ("Дима Петров", "personal_chat", 333, "chats"),
    ]
    assert chats[3].name is None and chats[3].type == "saved_messages"
    assert (chats[-1].name, chats[-1].section) == ("Барахолка", "left_chats")
    assert sum(i is CHAT_END for i in got) == len(chats) == 7
    first = got[1]
    assert first == Message("service", None, None, None, "", False)
    assert got[2] == Message("message", "user222", "Мама", 1_700_000_060.0, "Аня, ты дома?", False)


def test_old_and_odd_messages(tmp_path):
    numeric = msg(1, 0, B, "старый формат")
    numeric["from_id"] = 2
    del numeric["text_entities"], numeric["date_unixtime"]
    deleted = msg(2, 1, A, "от удалённого")
    deleted["from"], deleted["from_id"] = None, None
    nested = msg(3, 2, A, "с опросом", poll={"question": "Да?", "answers": [{"text": "да", "voters": 1}]})
    export = chat("Боря", "personal_chat", 2, [numeric, deleted, nested])
    export["other_data"] = {"messages": [{"type": "message", "text": "не сообщение чата"}]}
    got = [i for i in items(tmp_path, export) if isinstance(i, Message)]
    assert [(m.author, m.name, m.text) for m in got] == [
        ("user2", "Боря", "старый формат"),
        (None, None, "от удалённого"),
        ("user1", "Аня", "с опросом"),
    ]
    assert got[0].time == 1_700_000_000.0


def test_keys_after_a_chats_messages_do_not_leak_into_the_next_chat(tmp_path):
    first = {"type": "personal_chat", "id": 1, "messages": [msg(1, 0, A, "a")], "name": "Поздно"}
    second = {"type": "personal_chat", "messages": [msg(1, 0, A, "b")]}
    got = [i for i in items(tmp_path, account(A, [first, second])) if isinstance(i, Chat)]
    assert [(c.name, c.id) for c in got] == [(None, 1), (None, None)]  # a chat's name comes first


def test_a_byte_order_mark_is_skipped(tmp_path):
    path = write(tmp_path / "result.json", realistic_account())
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    with path.open("rb") as f:
        assert sum(isinstance(i, Message) for i in Export(path, f)) == 40
