"""The ruDialoGPT dialogue format, shared by training and the bot (one source of truth).

A dialogue alternates two speakers. ruDialoGPT marks each turn with `@@ПЕРВЫЙ@@` (first speaker)
or `@@ВТОРОЙ@@` (second speaker) and is asked to answer by ending the prompt with the marker of
the speaker who answers. The card's prompt for three turns of context:

    @@ПЕРВЫЙ@@ c1 @@ВТОРОЙ@@ c2 @@ПЕРВЫЙ@@ c3 @@ВТОРОЙ@@

The user is always the first speaker of their last message, the bot the second; markers are
assigned counting back from the end, so fewer turns of context give `@@ПЕРВЫЙ@@ c3 @@ВТОРОЙ@@`.
A training example is that prompt, the response and the next `@@ПЕРВЫЙ@@`, which is where a reply
stops at generation time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

FIRST = "@@ПЕРВЫЙ@@"  # id 50257 in ruDialoGPT: the user's turns, and the stop token
SECOND = "@@ВТОРОЙ@@"  # id 50258 in ruDialoGPT: the bot's turns
MARKERS = (FIRST, SECOND)
CONTEXT_TURNS = 3  # ruDialoGPT was trained with three turns of context

# Anything that looks like a turn marker (also with odd spacing or case) is removed from user
# text, so a user cannot inject turns into the prompt.
_MARKER_RE = re.compile(r"@+\s*(?:ПЕРВЫЙ|ВТОРОЙ)\s*@+", re.IGNORECASE)
_SPACE_RE = re.compile(r"\s+")
# ASCII controls, and invisible format characters (zero-width space, bidi overrides, BOM) that
# would make an "empty" message or reorder the prompt; the zero-width joiner stays (emoji).
_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f\u200b\u200c\u200e\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def clean_turn(text: object) -> str:
    """One turn as it enters a prompt: no markers, no control characters, single spaces.

    None, NaN and blank strings become "" (an absent turn)."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    text = _MARKER_RE.sub(" ", str(text))
    text = _CONTROL_RE.sub(" ", text)
    return _SPACE_RE.sub(" ", text).strip()


def build_prompt(turns: Sequence[object]) -> str:
    """The prompt for the next reply, from the dialogue's turns, oldest first.

    The last turn is the user's (`@@ПЕРВЫЙ@@`); the prompt ends with `@@ВТОРОЙ@@`, the answering
    speaker. Empty turns are dropped. Raises ValueError when no turn has text."""
    kept = [t for t in (clean_turn(t) for t in turns) if t]
    if not kept:
        raise ValueError("a prompt needs at least one non-empty turn")
    parts = []
    for back, turn in enumerate(reversed(kept)):
        parts.append(f"{MARKERS[back % 2]} {turn}")
    return " ".join(reversed(parts)) + f" {SECOND}"


def format_example(contexts: Sequence[object], response: object) -> tuple[str, str]:
    """A training example as (prompt, target): the model learns `target` after `prompt`.

    The target is the response followed by the next `@@ПЕРВЫЙ@@`, so the model learns to stop."""
    reply = clean_turn(response)
    if not reply:
        raise ValueError("the response is empty")
    return build_prompt(contexts), f" {reply} {FIRST}"


def clean_reply(text: str) -> str:
    """A generated reply as shown to the user: no markers, trimmed."""
    return clean_turn(text)


def fit_turns(
    turns: Sequence[str],
    count_tokens: Callable[[str], int],
    budget: int,
    cut_turn: Callable[[str, int], str],
) -> list[str]:
    """The last CONTEXT_TURNS turns, trimmed from the oldest so the prompt fits `budget` tokens.

    `count_tokens(prompt)` counts a prompt's tokens; `cut_turn(text, n)` keeps the last `n` tokens
    of one turn. A single overlong message is cut, not rejected. Raises ValueError when even an
    empty message would not fit."""
    kept = [t for t in (clean_turn(t) for t in turns) if t][-CONTEXT_TURNS:]
    if not kept:
        raise ValueError("a prompt needs at least one non-empty turn")
    while len(kept) > 1 and count_tokens(build_prompt(kept)) > budget:
        kept.pop(0)
    room = count_tokens(kept[0])
    while count_tokens(build_prompt(kept)) > budget:
        room -= max(1, count_tokens(build_prompt(kept)) - budget)
        if room < 1:
            raise ValueError(f"a budget of {budget} tokens leaves no room for the message")
        kept[0] = cut_turn(kept[0], room)
    return kept
