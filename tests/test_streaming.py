"""client/streaming.py: the visible text of a reply being generated, with the real (tiny) tokenizer."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.streaming import VisibleText, on_tokens, visible
from contract.dialogue import clean_reply

# Pieces a reply is made of: words, emoji (several byte-level tokens each), turn markers spelt in
# odd ways (many small tokens: not the special tokens), stray @, spaces and newlines.
PIECES = [
    "Привет",
    " как",
    " дела",
    "?",
    " 😀",
    "👍🏽",
    " ",
    "\n",
    "@",
    "@@",
    " @@ПЕРВЫЙ@@",
    "@@ вторОЙ @@",
    "ПЕР",
    "ВЫЙ",
    " почта a@b.ru",
    "\u200b",
    "!",
]


@pytest.mark.parametrize(
    "decoded, shown",
    [
        ("", ""),
        ("  Привет", "Привет"),
        ("Привет \ufffd", "Привет"),  # half of a UTF-8 character
        ("Привет @", "Привет"),
        ("Привет @@ПЕР", "Привет"),
        ("Привет @@ пер", "Привет"),
        ("Привет @@ПЕРВЫЙ", "Привет"),
        ("Привет @@ПЕРВЫЙ ", "Привет"),
        ("Привет @@ПЕРВЫЙ@", "Привет"),  # a complete marker, however many @ follow
        ("Привет @@ПЕРВЫЙ@@ как", "Привет как"),
        ("Привет @@ВТОРОЙ@@", "Привет"),
        ("a@b.ru", "a@b.ru"),
        ("@@ПЕРЕЦ", "@@ПЕРЕЦ"),  # not a marker after all
        ("x@@ВТ", "x"),
    ],
)
def test_visible(decoded, shown):
    assert visible(decoded) == shown


def test_half_characters_and_markers_never_show_with_the_real_tokenizer(tokenizer):
    text = "Привет 😀👍🏽 как @@ ПЕРВЫЙ @@ дела @@ВТОРОЙ@@ ок @"
    ids = tokenizer.encode(text)
    final = clean_reply(tokenizer.decode(ids))
    stream = VisibleText(tokenizer.decode)
    shown = [s for n in range(1, len(ids) + 1) if (s := stream.update(ids[:n])) is not None]
    assert any("\ufffd" in tokenizer.decode(ids[:n]) for n in range(len(ids)))  # half characters do occur
    assert shown[-1] == "Привет 😀👍🏽 как дела ок" and final == "Привет 😀👍🏽 как дела ок @"
    assert len(shown) >= 5
    for before, after in itertools.pairwise(shown):
        assert after.startswith(before) and len(after) > len(before)
    assert not any("\ufffd" in s or "@" in s or "ПЕРВ" in s for s in shown)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12))
def test_each_shown_text_starts_the_next_and_the_final_reply(tokenizer, pieces):
    ids = tokenizer.encode("".join(pieces))
    final = clean_reply(tokenizer.decode(ids))
    stream = VisibleText(tokenizer.decode)
    shown = [s for n in range(1, len(ids) + 1) if (s := stream.update(ids[:n])) is not None]
    assert all(final.startswith(s) and "\ufffd" not in s for s in shown)
    assert all(b.startswith(a) and len(b) > len(a) for a, b in itertools.pairwise(shown))


@pytest.mark.parametrize("awaited", [False, True])
def test_on_tokens_calls_back_only_when_the_text_grows(tokenizer, awaited):
    """A plain on_text is called as the text grows (the callback returns None: the generation goes
    on at once); an async one's awaitable is handed back, for the rounds to wait for."""
    seen: list[str] = []

    async def record_async(text: str) -> None:
        await asyncio.sleep(0)
        seen.append(text)

    ids = tokenizer.encode("Да 😀 @@ первый @@")
    callback = on_tokens(tokenizer.decode, record_async if awaited else seen.append)

    async def feed() -> None:
        for n in range(1, len(ids) + 1):
            if (pending := callback(ids[:n])) is not None:
                assert awaited
                await pending

    asyncio.run(feed())
    assert seen[-1] == "Да 😀" and all(b.startswith(a) and b != a for a, b in itertools.pairwise(seen))
    assert len(seen) <= len(tokenizer.encode("Да 😀")) < len(ids)  # the marker's tokens showed nothing
