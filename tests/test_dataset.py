"""training/data.py: CSV loading with clear errors, the label mask, padding and the eval split."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from contract.dialogue import FIRST, SECOND, format_example
from training.config import ConfigError
from training.data import IGNORE, DataError, build_dataset, collator, load_examples, read_csv, split
from training.tiny import train_tokenizer

HEADER = "context_1,context_2,context_3,response\n"
ROW = ",Привет,Как дела?,Хорошо\n"
SAMPLE = Path(__file__).parents[1] / "training" / "data.csv"


def write_rows(path: Path, rows: list[list[str]], header: list[str] | None = None) -> Path:
    """A CSV written the standard way (quoting what needs it)."""
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header or ["context_1", "context_2", "context_3", "response"])
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def bpe():
    """A tiny byte-level BPE trained on the sample's texts."""
    return train_tokenizer(p + t for p, t in load_examples(SAMPLE).pairs)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        (b"", "the file is empty"),
        (b" \n\r\n", "the file is empty"),
        ("\ufeff\n".encode(), "the file is empty"),
        ((HEADER + ROW).encode("utf-16"), "UTF-16"),
        (HEADER.encode(), "header but no rows"),
        (
            b"context_1,context_2,reply\na,b,c\n",
            "missing column(s) context_3, response; found context_1, context_2, reply",
        ),
        (b"context_1;context_2;context_3;response\n;;a;b\n", "use commas as delimiter"),
        (",,Привет,Здравствуй\n,,Как дела?,Хорошо\n".encode(), "the header must be context_1,context_2"),
        (b"context_1\tcontext_2\tcontext_3\tresponse\n\t\ta\tb\n", "use commas as delimiter"),
        ((HEADER.strip() + ",response\n" + ROW.strip() + ",x\n").encode(), "duplicate column names response"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "binary file"),
        (bytes(range(256)) * 8, "binary file"),
        ((HEADER + ",,Привет,Здравствуй\n").encode("cp1251"), "not UTF-8"),
        ((HEADER + ',,"незакрытая кавычка,ответ\n').encode(), "double quotes"),
        ((HEADER + ",,a,b,лишнее поле\n").encode(), "as many fields as the header"),
        ((HEADER + "1,2,3,4\n,,a,b,лишнее\n").encode(), "Expected 4 fields in line 3, saw 5"),
        ((HEADER + ",,Привет,\n,,Привет,  \n").encode(), "none of its 2 rows is usable"),
        ((HEADER + ",,,ответ без контекста\n").encode(), "none of its 1 rows is usable"),
    ],
)
def test_bad_csv_gets_a_clear_error(tmp_path, content, message):
    path = tmp_path / "data.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as error:
        load_examples(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "content",
    [
        ("\ufeff" + HEADER + ROW).encode(),  # UTF-8 with BOM
        (HEADER + ROW).replace("\n", "\r\n").encode(),  # Windows line ends
        (HEADER.replace(",", " , ") + ROW).encode(),  # spaces around names
        ("response,extra,context_3,context_2,context_1\nХорошо,x,Как дела?,Привет,\n").encode(),  # any order
        ("\n\n" + HEADER + ROW + "\n").encode(),  # blank lines
    ],
)
def test_accepted_variants_give_the_same_example(tmp_path, content):
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    assert load_examples(path).pairs == [format_example(["", "Привет", "Как дела?"], "Хорошо")]


def test_special_characters_round_trip(tmp_path):
    rows = [
        ["Привет, друг", 'Он сказал: "да"', "строка 1\nстрока 2", "Ответ, с запятой и 😊"],
        ["", "", "🐱🐶", '"Кавычки" в начале'],
        ["NA", "None", "null", "nan"],  # text that pandas would read as missing by default
    ]
    examples = load_examples(write_rows(tmp_path / "data.csv", rows))
    assert examples.pairs == [format_example(r[:3], r[3]) for r in rows]
    assert examples.pairs[0][1] == f" Ответ, с запятой и 😊 {FIRST}"
    assert examples.pairs[0][0].endswith(f"{FIRST} строка 1 строка 2 {SECOND}")


def test_rows_without_response_or_context_are_skipped_and_counted(tmp_path):
    rows = [
        ["", "", "a", ""],
        ["", "", "b", "  "],
        ["", "", "c", FIRST],
        ["", "", "", "d"],
        ["x", "", "y", "z"],
    ]
    examples = load_examples(write_rows(tmp_path / "data.csv", rows))
    assert (examples.no_response, examples.no_context) == (3, 1)
    assert examples.pairs == [format_example(["x", "", "y"], "z")]


def test_one_row_and_extra_columns_are_fine(tmp_path):
    path = write_rows(
        tmp_path / "data.csv",
        [["id1", "", "", "Привет", "Здравствуй"]],
        header=["id", "context_1", "context_2", "context_3", "response"],
    )
    assert read_csv(path)["id"].tolist() == ["id1"]
    assert load_examples(path).pairs == [format_example(["Привет"], "Здравствуй")]


def test_sample_loads_without_skipping():
    examples = load_examples(SAMPLE)
    assert len(examples.pairs) >= 300
    assert (examples.no_response, examples.no_context) == (0, 0)


def test_labels_mask_exactly_the_prompt(bpe):
    pairs = load_examples(SAMPLE).pairs[:50]
    dataset, dropped = build_dataset(pairs, bpe, max_length=256)
    assert dropped == 0 and len(dataset) == len(pairs)
    first = bpe.convert_tokens_to_ids(FIRST)
    for (prompt, _), row in zip(pairs, dataset, strict=True):
        n_prompt = len(bpe(prompt)["input_ids"])
        assert row["labels"][:n_prompt] == [IGNORE] * n_prompt
        assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]
        assert IGNORE not in row["labels"][n_prompt:]
        assert row["input_ids"][n_prompt - 1] == bpe.convert_tokens_to_ids(SECOND)
        assert row["labels"][-1] == first


def test_full_text_loss_labels_everything(bpe):
    dataset, _ = build_dataset(load_examples(SAMPLE).pairs[:5], bpe, 256, full_text_loss=True)
    assert all(row["labels"] == row["input_ids"] for row in dataset)


def test_long_prompt_is_cut_from_the_left_and_long_response_dropped(bpe):
    long_prompt = format_example(["раз " * 40, "два " * 40, "три"], "ответ")
    long_reply = format_example(["привет"], "очень длинный ответ " * 20)
    dataset, dropped = build_dataset([long_prompt, long_reply], bpe, max_length=24)
    assert dropped == 1 and len(dataset) == 1
    ids, labels = dataset[0]["input_ids"], dataset[0]["labels"]
    full = bpe(long_prompt[0] + long_prompt[1])["input_ids"]
    n_target = len(full) - len(bpe(long_prompt[0])["input_ids"])
    assert ids == full[-24:]
    assert labels == [IGNORE] * (24 - n_target) + full[-n_target:]
    with pytest.raises(DataError, match="raise --max-length"):
        build_dataset([long_reply], bpe, max_length=24)


def test_prompt_must_tokenize_as_prefix():
    def merging_tokenizer(texts):  # one token per text: the prompt's ids are no prefix
        return {"input_ids": [[len(t)] for t in texts]}

    with pytest.raises(ConfigError, match="special tokens"):
        build_dataset([format_example(["a"], "b")], merging_tokenizer, 64)


def test_collator_pads_on_the_right_with_the_pad_id_no_attention_and_ignored_labels(bpe):
    pad = bpe.pad_token_id
    batch = collator(bpe)(
        [
            {"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]},
            {"input_ids": [8], "labels": [8]},
        ]
    )
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, pad, pad]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert all(t.dtype == torch.int64 for t in batch.values())


@pytest.mark.parametrize(
    "n, fraction, n_eval", [(1, 0.1, 0), (2, 0.1, 1), (5, 0.1, 1), (100, 0.1, 10), (100, 0.0, 0), (3, 0.9, 2)]
)
def test_split_holds_out_a_fraction(n, fraction, n_eval):
    dataset = Dataset.from_dict({"input_ids": [[i] for i in range(n)]})
    train, held_out = split(dataset, fraction, seed=0)
    assert (len(held_out) if held_out is not None else 0) == n_eval
    assert len(train) == n - n_eval
    if held_out is not None:
        again = split(dataset, fraction, seed=0)[1]
        assert held_out["input_ids"] == again["input_ids"]
        assert not {i[0] for i in held_out["input_ids"]} & {i[0] for i in train["input_ids"]}
