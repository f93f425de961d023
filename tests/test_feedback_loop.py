"""The loop end to end, on the real parts: a Telegram export → `prepare telegram` → a tiny training
run → `python -m export` (version 2) → the real Triton (polling its repository) loads it live while
the real bot chats on the fake Bot API → users vote with the buttons, one chat /shares, one does
not → `prepare history` yields exactly the liked replies of the chat that agreed → /forget → they
are gone. (The steps' own tests: test_prepare_*.py, test_rollout.py, test_telegram_feedback.py.)"""

from __future__ import annotations

import asyncio
import csv
import re
from pathlib import Path

import pytest

from bot.history.store import FILENAME
from bot.telegram import build_application
from bot.texts import FALLBACK, FORGOTTEN, SHARE_ON, VOTED
from client.chat import ChatBot, Reply
from client.rounds import TritonClient
from client.sampling import SamplingConfig
from client.streaming import OnText
from client.tokenizer import ModelVersions
from export.__main__ import main as export_main
from tests.fake_interactions import OTHER_USER, USER
from tests.helpers import MODEL, start_triton
from tests.telegram_exports import realistic_account, write
from tests.telegram_harness import run_bot, say
from training.__main__ import main as train_main
from training.prepare.__main__ import main as prepare_main
from training.prepare.history import row_of

# Bounds setup too: the session's tiny checkpoint may be trained first (~10 s); then two exports,
# a Triton start, a training run of two steps and the chats (about 1-2 min on 2 cores).
pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("no_leaked_threads")]
POLL_S = 1  # Triton looks for new versions every second
SHARED, SILENT = 7001, 7002  # the chat that says /share, the one that never does


class Versions(ChatBot):
    """The real ChatBot; records the model version of each reply."""

    said: list[str | None]  # the versions, reply after reply

    async def reply(self, turns: list[str], on_text: OnText | None = None) -> Reply:
        reply = await super().reply(turns, on_text)
        self.said.append(reply.version)
        return reply


def csv_rows(path: Path) -> list[tuple[str, ...]]:
    with path.open(encoding="utf-8", newline="") as f:
        return [tuple(row) for row in csv.reader(f)][1:]


def test_chats_in_verdicts_out(tiny_checkpoint, tmp_path, tg, settings, capsys):
    repo = tmp_path / "repo"
    published = ["--repository", str(repo), "--skip-reference"]
    assert export_main(["--checkpoint", str(tiny_checkpoint), *published]) == 0  # version 1 serves
    server = start_triton(repo, tmp_path / "triton.log", poll_seconds=POLL_S)
    try:
        # An export of someone's chats into training rows, and the next model trained on them.
        export = write(tmp_path / "result.json", realistic_account())
        exported = tmp_path / "export.csv"
        assert prepare_main(["telegram", str(export), "--output", str(exported), "--no-progress"]) == 0
        run2 = tmp_path / "run2"
        steps = ["--max-steps", "2", "--save-steps", "2", "--logging-steps", "1", "--batch-size", "2"]
        base = ["--base-model", str(tiny_checkpoint)]  # the served model, trained on further
        assert train_main(["--data", str(exported), "--output", str(run2), *base, *steps]) == 0
        bot = Versions(
            TritonClient(server.url, MODEL, timeout=30),
            ModelVersions.open(repo / MODEL),
            SamplingConfig(max_new_tokens=8),
            seed=0,
            fallback=FALLBACK,
        )
        bot.said = []
        history = settings.data_dir / FILENAME

        async def vote(chat_id: int, reply: dict, *votes: tuple[dict, int]) -> None:
            (_, up), (_, down) = tg.keyboard(chat_id, reply["message_id"])
            buttons = {1: up, -1: down}
            for user, choice in votes:
                tg.press(chat_id, reply["message_id"], buttons[choice], user=user)

        async def scenario(dialogues) -> tuple[list[tuple[str, ...]], str, int, str]:
            await say(tg, SILENT, "Привет! Как дела?")  # answered by version 1
            assert bot.said == ["1"]
            # The new model published while the bot runs: Triton loads it, the bot follows.
            assert await asyncio.to_thread(export_main, ["--checkpoint", str(run2), *published]) == 0
            while bot.said[-1] != "2":
                await asyncio.sleep(0.2)
                await say(tg, SILENT, "А что нового?")
            await say(tg, SHARED, "/share")
            await say(tg, SHARED, "Привет! Что делаешь вечером?")
            await say(tg, SHARED, "А завтра?")
            _, liked, tied = tg.replies(SHARED)  # after SHARE_ON
            silent = tg.replies(SILENT)[-1]
            await vote(SHARED, liked, (USER, 1), (OTHER_USER, 1))  # 2 to 0: liked
            await vote(SHARED, tied, (USER, 1), (OTHER_USER, -1))  # 1 to 1: not liked
            await vote(SILENT, silent, (USER, 1))  # liked, but the chat never agreed
            await tg.wait_for(lambda: len(tg.of("answerCallbackQuery")) == 5)
            harvested = tmp_path / "history.csv"
            code = await asyncio.to_thread(
                prepare_main, ["history", str(history), "--output", str(harvested)]
            )
            assert code == 0
            prompt = (await dialogues.history.liked()).rows[0].prompt
            await say(tg, SHARED, "/forget")
            again = [str(history), "--output", str(tmp_path / "after.csv")]
            after = await asyncio.to_thread(prepare_main, ["history", *again])
            return csv_rows(harvested), prompt, after, liked["text"]

        exported_rows = csv_rows(exported)
        harvest, prompt, after, liked_text = run_bot(build_application(bot, settings), scenario)
    finally:
        server.stop()
    assert bot.said[0] == "1" and bot.said[-3:] == ["2", "2", "2"]  # the SHARED chat's: version 2
    assert sorted(p["text"] for p in tg.of("answerCallbackQuery")) == sorted([VOTED[1]] * 4 + [VOTED[-1]])
    # Exactly the liked reply of the chat that agreed, with the turns it answered.
    assert prompt == ["Привет! Что делаешь вечером?"]
    assert harvest == [row_of(prompt, liked_text, 500)[0]]
    texts = tg.texts(SHARED)
    assert texts[0] == SHARE_ON
    assert texts[-1] == FORGOTTEN.format(messages=4, replies=2, votes=4, consent=1, inbox=0)
    # After /forget nothing of it is left to train on: the silent chat's like does not count.
    assert after == 2 and not (tmp_path / "after.csv").exists()
    err = capsys.readouterr().err
    assert re.search(r"no row: \d+ replies, 1 liked, 1 of them of chats that did not agree", err), err
    with capsys.disabled():
        print(
            f"\nloop: {len(exported_rows)} rows from the export trained version 2; {len(bot.said)} replies "
            f"({bot.said.count('1')} by version 1); prepare history: {len(harvest)} row (liked 2:0 in the "
            f"chat that agreed; a 1:1 tie and the silent chat's 1:0 left out); /forget: {texts[-1]!r}"
        )
