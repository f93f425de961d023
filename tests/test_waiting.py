"""bot/waiting.py's lines without Telegram or Triton (a real SQLite history): a flood waits bounded
and is answered in merged turns, commands keep their place, a delivery again is dropped, other
chats are not held up; the store's `skip` and its pruned inbox (bot/history/store.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from telegram import Chat, Message

from bot.history.sqlite import SQLiteStore
from bot.metrics import Metrics
from bot.waiting import Kind, Pending, Waiting


def pending(chat_id: int, message_id: int, kind: Kind = "text") -> Pending:
    message = Message(message_id, datetime.now(UTC), Chat(chat_id, Chat.PRIVATE))
    return Pending(message, kind, f"сообщение {message_id}")


class Turns:
    """A `take_turn` that records each turn (its message ids, the note due before it) and marks its
    messages answered, as bot/dialogues.py does; a chat's first turn waits for `release`."""

    def __init__(self, store: SQLiteStore):
        self.store, self.release = store, asyncio.Event()
        self.taken: list[tuple[int, list[int], int]] = []  # (chat, message ids, messages skipped before)
        self.waiting: Waiting

    async def __call__(self, turn: list[Pending]) -> None:
        chat_id = turn[0].message.chat_id
        first = not any(chat == chat_id for chat, _, _ in self.taken)
        self.taken.append((chat_id, [p.message.message_id for p in turn], self.waiting.note_due(chat_id)))
        if first and chat_id == 1:
            await self.release.wait()
        for p in turn:
            await self.store.mark_answered(*p.key, turn=False)


async def failed(messages: list[Message], error: BaseException) -> None:
    raise AssertionError(f"a turn failed: {error!r}")


def waiting_with(tmp_path, limit: int) -> tuple[Waiting, Turns, SQLiteStore, Metrics]:
    store, metrics = SQLiteStore(tmp_path), Metrics()
    turns = Turns(store)
    turns.waiting = Waiting(store, metrics, turns, failed, limit=limit)
    return turns.waiting, turns, store, metrics


def test_a_flood_waits_bounded_and_is_answered_in_merged_turns(tmp_path):
    async def scenario() -> None:
        waiting, turns, store, metrics = waiting_with(tmp_path, limit=5)
        first = asyncio.create_task(waiting.submit(pending(1, 1)))
        await asyncio.sleep(0.01)  # its turn is under way (held)
        for i in range(2, 31):  # each handler returns at once: the line holds the message
            await asyncio.wait_for(waiting.submit(pending(1, i)), 1)
            assert len(waiting) == min(i - 1, 5)
        await waiting.submit(pending(1, 1))  # delivered again while being answered: dropped
        await waiting.submit(pending(1, 30))  # delivered again while waiting: dropped
        await waiting.submit(pending(1, 3))  # skipped (written before the next turn), delivered again
        await asyncio.wait_for(waiting.submit(pending(2, 100)), 1)  # another chat: answered meanwhile
        assert turns.taken == [(1, [1], 0), (2, [100], 0)]
        turns.release.set()
        await first
        assert turns.taken[2:] == [(1, [26, 27, 28, 29, 30], 24)]  # the latest 5, with one note
        assert len(waiting) == 0 and not waiting.holds((1, 30))
        assert all([await store.is_answered(1, i) for i in range(1, 31)])  # skipped ones too
        assert metrics.registry.get_sample_value("bot_skipped_messages_total") == 24
        await waiting.submit(pending(1, 31))  # the flood is over: the next message, its own turn
        assert turns.taken[-1] == (1, [31], 0)
        await store.close()

    asyncio.run(scenario())


def test_commands_keep_their_place_between_merged_texts(tmp_path):
    async def scenario() -> None:
        waiting, turns, store, _ = waiting_with(tmp_path, limit=10)
        kinds: list[Kind] = ["text", "text", "reset", "fixed", "text", "text"]
        first = asyncio.create_task(waiting.submit(pending(1, 1)))
        await asyncio.sleep(0.01)
        for i, kind in enumerate(kinds, 2):
            await waiting.submit(pending(1, i, kind))
        turns.release.set()
        await first
        assert [ids for _, ids, _ in turns.taken] == [[1], [2, 3], [4], [5], [6, 7]]
        await store.close()

    asyncio.run(scenario())


def test_an_old_message_past_the_pruned_inbox_counts_as_answered(tmp_path):
    async def scenario() -> None:
        store = SQLiteStore(tmp_path, keep=3)
        for message_id in range(10, 16):
            await store.add(7, "user", f"текст {message_id}", message_id)
            await store.mark_answered(7, message_id, turn=False)
        assert await store.is_answered(7, 11)  # pruned from the inbox: answered long ago
        assert not await store.is_answered(7, 16)
        await store.add(8, "user", "один", 50)  # an inbox not full: nothing was pruned
        await store.mark_answered(8, 50, turn=False)
        assert not await store.is_answered(8, 40)
        await store.skip(8, [51, 52])  # a flood's overflow: answered without a reply, nothing stored
        assert await store.is_answered(8, 52) and await store.turns(8, 10) == ["один"]
        await store.close()

    asyncio.run(scenario())
