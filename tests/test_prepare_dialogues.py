"""training/prepare/dialogues.py: message text as training cleans it, cutting long turns, and the
turn/dialogue/row rules that every source shares."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from contract.dialogue import FIRST, SECOND, clean_turn
from training.prepare.dialogues import DialogueRows, Rules, clean_text, cut_end, cut_start

TRICKY = st.sampled_from(
    [
        " ",
        "  ",
        "\t",
        "\n",
        "\r",
        "\x00",
        "\u200b",
        "\u2060",
        "\ufeff",
        "\u00a0",
        "\u2028",
        "@",
        "@@",
        FIRST,
        SECOND,
    ]
)
TEXTS = st.lists(st.one_of(st.text(max_size=8), TRICKY), max_size=12).map("".join)


@given(TEXTS)
@example("Привет,  мир ")
@example("@@ ВТОРОЙ @@ ответ")
def test_clean_text_is_clean_turn_line_by_line(text):
    cleaned = clean_text(text)
    lines = [clean_turn(line) for line in text.split("\n")]
    assert cleaned == "\n".join(line for line in lines if line)
    assert clean_turn(cleaned) == clean_turn("\n".join(lines))  # what training reads of it
    assert cleaned == cleaned.strip() and "\n\n" not in cleaned


def test_cut_start_and_end_prefer_a_word_boundary():
    text = "один два три четыре пять"
    assert cut_start(text, 100) == text and cut_end(text, 100) == text
    assert cut_start(text, 12) == "один два три"  # the next character is a space
    assert cut_start(text, 14) == "один два три"  # the space at 12 lies in the second half
    assert cut_end(text, 11) == "четыре пять"
    assert cut_end(text, 13) == "четыре пять"
    assert cut_start("абвгдежзийклмн опр", 10) == "абвгдежзий"  # no space in the second half: a hard cut
    assert cut_end("абв гдежзийклмнопр", 10) == "зийклмнопр"
    assert cut_start("строка один\nстрока два", 15) == "строка один"


@given(
    st.lists(st.text(alphabet="аб \n", min_size=1, max_size=12), min_size=1, max_size=20), st.integers(20, 60)
)
def test_cuts_are_non_empty_clean_and_within_the_limit(pieces, limit):
    text = clean_text("".join(pieces) + "я")
    for cut, keeps in ((cut_start(text, limit), str.startswith), (cut_end(text, limit), str.endswith)):
        assert 0 < len(cut) <= limit and cut == cut.strip()
        assert keeps(text, cut)
        assert len(cut) >= limit // 2 - 1 or len(text) <= limit


def rows_of(messages: list[tuple[str, float, str]], speaker: str = "a", gap: float = 60, limit: int = 500):
    rows: list[tuple[str, ...]] = []
    dialogue = DialogueRows(Rules(gap_seconds=gap, max_chars=limit), rows.append)
    for author, time, text in messages:
        dialogue.add(author, time, text, author == speaker)
    dialogue.close()
    return rows, dialogue


def test_rows_take_up_to_three_turns_of_context():
    turns = [("b", 1, "1"), ("a", 2, "2"), ("b", 3, "3"), ("a", 4, "4"), ("b", 5, "5"), ("a", 6, "6")]
    rows, d = rows_of(turns)
    assert rows == [("", "", "1", "2"), ("1", "2", "3", "4"), ("3", "4", "5", "6")]
    assert (d.dialogues, d.turns, d.speaker_turns, d.rows, d.cut) == (1, 6, 3, 3, 0)


def test_a_pause_longer_than_the_gap_starts_a_new_dialogue_and_time_going_back_does_not():
    rows, d = rows_of([("b", 0, "x"), ("a", 60, "y"), ("b", 121, "z"), ("a", 100, "w")])
    assert rows == [("", "", "x", "y"), ("", "", "z", "w")] and d.dialogues == 2


def test_a_huge_turn_is_kept_as_head_and_tail_only():
    rows: list[tuple[str, ...]] = []
    dialogue = DialogueRows(Rules(gap_seconds=60, max_chars=50), rows.append)
    words = [f"слово{i}" for i in range(5000)]
    dialogue.add("b", 0, "вопрос", False)
    for i, word in enumerate(words):
        dialogue.add("a", i / 100, word, True)
        assert len(dialogue._texts) <= 50  # the open turn holds its head and tail, not all of it
    dialogue.add("b", 55, "ещё", False)
    dialogue.add("a", 56, "ответ", True)
    dialogue.close()
    whole = "\n".join(words)
    assert rows == [
        ("", "", "вопрос", cut_start(whole, 50)),
        ("вопрос", cut_end(whole, 50), "ещё", "ответ"),
    ]
    assert dialogue.cut == 1 and rows[0][3].startswith("слово0\nслово1")
