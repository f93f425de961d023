"""`python -m training.prepare telegram` on bad input: one `error: …` line that names the fix,
status 2, and no output file (an earlier one stays as it was), nor a partial one beside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.telegram_exports import account, chat, msg, realistic_account, write
from training.prepare.__main__ import main
from training.prepare.dialogues import DialogueRows

A, B = ("Аня", "user1"), ("Боря", "user2")
DIALOGUE = [msg(1, 0, B, "Привет"), msg(2, 1, A, "Привет!"), msg(3, 2, B, "Как ты?")]


def one_chat(messages: list[dict] = DIALOGUE) -> bytes:
    return json.dumps(chat("Боря", "personal_chat", 2, messages), ensure_ascii=False).encode()


def truncated() -> bytes:
    whole = json.dumps(realistic_account(), ensure_ascii=False, indent=1).encode()
    return whole[: len(whole) // 2]


def no_owner() -> bytes:
    export = account(A, [chat("Боря", "personal_chat", 2, DIALOGUE)])
    del export["personal_information"]
    return json.dumps(export, ensure_ascii=False).encode()


def namesakes() -> bytes:
    other = ("Аня", "user3")
    return one_chat([msg(1, 0, B, "Кто тут?"), msg(2, 1, A, "Я"), msg(3, 2, other, "И я")])


CASES = {  # name: (content of result.json or None for no file, extra flags, what the error says)
    "missing": (None, ["--speaker", "Аня"], "no such file; pass the result.json"),
    "empty": (b"", ["--speaker", "Аня"], "is empty"),
    "html": (
        b"<!DOCTYPE html>\n<html><body>messages.html</body></html>",
        [],
        "is HTML, not JSON: export again",
    ),
    "not json": (b'{"name": "x", "messages": [}', [], "is not valid JSON (parse error"),
    "not utf-8": ('{"name": "Боря", "messages": []}'.encode("cp1251"), [], "is not UTF-8 text"),
    "truncated": (truncated(), [], "ends in the middle of the JSON (truncated after"),
    "a list": (b"[1, 2, 3]", [], "not a Telegram Desktop export (it holds a list"),
    "a string": (b'"result"', [], "not a Telegram Desktop export (it holds a single value"),
    "foreign object": (
        b'{"users": [{"id": 1}]}',
        [],
        "not a Telegram Desktop export (top-level keys: users)",
    ),
    "no chats": (
        json.dumps({"about": "x", "personal_information": {"user_id": 1}}).encode(),
        [],
        "not a Telegram Desktop export (top-level keys: about, personal_information); export again",
    ),
    "one chat, no speaker": (
        one_chat(),
        [],
        "is one chat: pass --speaker with the author whose replies to learn (a name or an id). "
        "Authors and their text messages: Боря (user2): 2; Аня (user1): 1",
    ),
    "unknown speaker": (one_chat(), ["--speaker", "Гена"], "--speaker 'Гена' has no text messages"),
    "namesakes": (namesakes(), ["--speaker", "Аня"], "--speaker 'Аня' is the name of 2 authors"),
    "no rows": (
        one_chat(DIALOGUE[1:]),
        ["--speaker", "Аня"],
        "no rows for Аня (user1): none of their 1 turns",
    ),
    "no owner": (no_owner(), [], "has no personal_information, so its owner is unknown; pass --speaker"),
    "only skipped chats": (
        json.dumps(account(A, [chat("Группа", "private_group", 5, DIALOGUE)]), ensure_ascii=False).encode(),
        [],
        "no chat with text messages to convert (only skipped chat types; add --groups for groups)",
    ),
    "owner only in groups": (
        json.dumps(
            account(
                A,
                [
                    chat("Боря", "personal_chat", 2, DIALOGUE[:1]),
                    chat("Группа", "private_group", 5, DIALOGUE),
                ],
            ),
            ensure_ascii=False,
        ).encode(),
        [],
        "the account's owner (user1) has no text messages in the converted chats; add --groups to convert",
    ),
    "gap": (one_chat(), ["--speaker", "Аня", "--gap-minutes", "0"], "--gap-minutes must be > 0"),
    "max chars": (one_chat(), ["--speaker", "Аня", "--max-chars", "5"], "--max-chars must be >= 20"),
    "empty speaker": (one_chat(), ["--speaker", " "], "--speaker must not be empty"),
}


def run_main(capsys, export: Path, output: Path, flags: list[str]) -> tuple[int, str, str]:
    code = main(["telegram", str(export), "--output", str(output), "--no-progress", *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("earlier", [False, True], ids=["new", "earlier file"])
@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_error_line_status_2_and_no_file(tmp_path, capsys, name, earlier):
    content, flags, message = CASES[name]
    export = tmp_path / "result.json"
    if content is not None:
        export.write_bytes(content)
    output = tmp_path / "out" / "data.csv"
    output.parent.mkdir()
    if earlier:
        output.write_text("context_1,context_2,context_3,response\n,,старое,было\n", encoding="utf-8")
    code, out, err = run_main(capsys, export, output, flags)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err
    expected = ["data.csv"] if earlier else []
    assert sorted(p.name for p in output.parent.iterdir()) == expected  # nothing partial beside it
    if earlier:
        assert output.read_text(encoding="utf-8").endswith(",,старое,было\n")


@pytest.mark.parametrize(
    "output, message",
    [
        ("out", "--output {tmp}/out is a folder; pass a file name, e.g. {tmp}/out/data.csv"),
        ("missing/data.csv", "--output {tmp}/missing/data.csv: the folder {tmp}/missing does not exist"),
        ("result.json", "--output {tmp}/result.json is the input file"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_reading(tmp_path, capsys, output, message):
    export = write(tmp_path / "result.json", realistic_account())
    (tmp_path / "out").mkdir()
    before = export.read_bytes()
    code, _, err = run_main(capsys, export, tmp_path / output, [])
    assert code == 2 and message.format(tmp=tmp_path) in err
    assert export.read_bytes() == before


def test_an_interrupted_conversion_leaves_no_file(tmp_path, capsys, monkeypatch):
    def interrupt(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(DialogueRows, "add", interrupt)
    export = write(tmp_path / "result.json", realistic_account())
    code, _, err = run_main(capsys, export, tmp_path / "data.csv", [])
    assert code == 130 and err == "error: interrupted; no file was written\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_the_command_exits_2_without_a_traceback(tmp_path):
    export = tmp_path / "result.json"
    export.write_bytes(truncated())
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.prepare",
            "telegram",
            str(export),
            "--output",
            str(tmp_path / "d.csv"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.startswith("error: ") and "truncated" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "d.csv").exists()


def test_a_missing_source_or_output_flag_is_argparses_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["telegram", "result.json"])
    assert exit_.value.code == 2 and "--output" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
