"""training/prepare/output.py: the CSV every source writes is what training.data reads, identical
rows once, and never a partial file."""

from __future__ import annotations

import os
import stat

import pytest

from contract.dialogue import format_example
from training import data
from training.prepare.output import COLUMNS, RowWriter


def test_the_columns_are_trainings():
    assert COLUMNS == data.COLUMNS


def test_rows_round_trip_through_trainings_reader(tmp_path):
    rows = [
        ("", "", "Привет, друг", 'Он сказал: "да"'),
        ("строка 1\nстрока 2", "NA", "nan", "None"),
        ("=1+1", "a,b;c\td", "🐱 \u200d 🐶", "\r\nконец"),
    ]
    path = tmp_path / "data.csv"
    with RowWriter(path) as out:
        for row in rows:
            out.write(row)
    frame = data.read_csv(path)
    assert [
        tuple("" if isinstance(v, float) else v for v in r) for r in frame.itertuples(index=False)
    ] == rows
    assert data.load_examples(path).pairs == [format_example(r[:3], r[3]) for r in rows]


def test_identical_rows_are_written_once(tmp_path):
    path = tmp_path / "data.csv"
    with RowWriter(path) as out:
        for row in [("", "", "a", "b"), ("", "", "a", "b"), ("", "a", "", "b"), ("", "", "a", "b")]:
            out.write(row)
    assert (out.written, out.duplicates) == (2, 2)
    assert path.read_text(encoding="utf-8") == "context_1,context_2,context_3,response\n,,a,b\n,a,,b\n"


def test_text_that_is_no_unicode_does_not_break_the_file(tmp_path):
    path = tmp_path / "data.csv"
    with RowWriter(path) as out:
        out.write(("", "", "сломанный \ud83d эмодзи", "ответ"))
    assert data.load_examples(path).pairs == [format_example(["сломанный ? эмодзи"], "ответ")]


def test_the_file_appears_only_when_the_block_succeeds(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("earlier\n", encoding="utf-8")
    with pytest.raises(RuntimeError), RowWriter(path) as out:
        out.write(("", "", "a", "b"))
        assert out.partial.exists() and out.partial.parent == tmp_path and out.partial.name.startswith(".")
        raise RuntimeError("conversion failed")
    assert path.read_text(encoding="utf-8") == "earlier\n" and os.listdir(tmp_path) == ["data.csv"]
    with RowWriter(path) as out:
        out.write(("", "", "a", "b"))
    assert out.replaced and os.listdir(tmp_path) == ["data.csv"]
    assert path.read_text(encoding="utf-8").endswith(",,a,b\n")


def test_the_file_gets_the_usual_permissions(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    with RowWriter(tmp_path / "data.csv") as out:
        out.write(("", "", "a", "b"))
    assert stat.S_IMODE((tmp_path / "data.csv").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
