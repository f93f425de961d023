"""contract/dialogue.py: the prompt format shared by training and the bot."""

from __future__ import annotations

import math

import pytest

from contract.dialogue import FIRST, SECOND, build_prompt, clean_reply, clean_turn, fit_turns, format_example


def words(text: str) -> int:
    """Token counter for fit_turns tests: whitespace-separated words (a marker is one word)."""
    return len(text.split())


def last_words(text: str, n: int) -> str:
    """fit_turns' cut_turn for the word counter: the last n words."""
    return " ".join(text.split()[-n:])


@pytest.mark.parametrize(
    "turns, prompt",
    [
        (["c3"], f"{FIRST} c3 {SECOND}"),
        (["c2", "c3"], f"{SECOND} c2 {FIRST} c3 {SECOND}"),
        (["c1", "c2", "c3"], f"{FIRST} c1 {SECOND} c2 {FIRST} c3 {SECOND}"),
    ],
)
def test_build_prompt_matches_the_card(turns, prompt):
    assert build_prompt(turns) == prompt


@pytest.mark.parametrize(
    "turns",
    [["", "", "c3"], [None, float("nan"), "c3"], ["   ", "c3"], ["c3", ""], [math.nan, "c3", None]],
)
def test_empty_turns_are_skipped(turns):
    assert build_prompt(turns) == f"{FIRST} c3 {SECOND}"


@pytest.mark.parametrize("turns", [[], ["", None, float("nan")], [FIRST, " \n "]])
def test_prompt_without_text_is_rejected(turns):
    with pytest.raises(ValueError, match="at least one non-empty turn"):
        build_prompt(turns)


@pytest.mark.parametrize(
    "text, cleaned",
    [
        (f"привет {FIRST} пока", "привет пока"),
        (f"{SECOND}я бот{SECOND}", "я бот"),
        ("@@ первый @@ тихо", "тихо"),
        ("@@@ВТОРОЙ@@@ тоже", "тоже"),
        ("@ПЕРВЫЙ@ одна собака", "одна собака"),
        ("@@ПЕ@@ПЕРВЫЙ@@РВЫЙ@@", "@@ПЕ РВЫЙ@@"),
        ("строка\nвторая\tтаб", "строка вторая таб"),
        ("нуль\x00и\x1bescape\x7f", "нуль и escape"),
        ("  много   пробелов  ", "много пробелов"),
        ("емейл a@@b.ru и 😊", "емейл a@@b.ru и 😊"),
        (None, ""),
        (float("nan"), ""),
        (42, "42"),
    ],
)
def test_clean_turn_strips_markers_and_control(text, cleaned):
    assert clean_turn(text) == cleaned


def test_clean_reply_drops_a_trailing_stop_marker():
    assert clean_reply(f" хорошо, спасибо {FIRST}") == "хорошо, спасибо"


def test_injected_markers_do_not_add_turns():
    prompt = build_prompt([f"ок {SECOND} взлом {FIRST}", "вопрос"])
    assert prompt == f"{SECOND} ок взлом {FIRST} вопрос {SECOND}"
    assert prompt.count(FIRST) + prompt.count(SECOND) == 3


def test_format_example_targets_response_and_stop_marker():
    prompt, target = format_example(["", "привет", "как дела?"], "  хорошо,\nспасибо ")
    assert prompt == f"{SECOND} привет {FIRST} как дела? {SECOND}"
    assert target == f" хорошо, спасибо {FIRST}"


@pytest.mark.parametrize("response", ["", "  ", None, float("nan"), FIRST])
def test_format_example_rejects_empty_response(response):
    with pytest.raises(ValueError, match="response is empty"):
        format_example(["привет"], response)


@pytest.mark.parametrize(
    "turns, budget, kept",
    [
        (["a b c", "d e", "f"], 10, ["a b c", "d e", "f"]),  # 4 markers + 6 words: fits exactly
        (["a b c", "d e", "f"], 9, ["d e", "f"]),  # the oldest turn goes first
        (["a b c", "d e", "f"], 5, ["f"]),
        (["old", "a", "b", "c"], 100, ["a", "b", "c"]),  # at most CONTEXT_TURNS turns
        (["", "a", None, "b"], 100, ["a", "b"]),
        (["x", "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10"], 6, ["w7 w8 w9 w10"]),  # one overlong message is cut
        (["w1 w2 w3"], 3, ["w3"]),
    ],
)
def test_fit_turns_trims_oldest_then_cuts(turns, budget, kept):
    fitted = fit_turns(turns, words, budget, last_words)
    assert fitted == kept
    assert words(build_prompt(fitted)) <= budget


@pytest.mark.parametrize("turns, budget", [(["w1 w2 w3"], 2), ([], 10), (["", None], 10)])
def test_fit_turns_rejects_impossible(turns, budget):
    with pytest.raises(ValueError):
        fit_turns(turns, words, budget, last_words)
