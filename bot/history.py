"""The Telegram bot's dialogue history: a small SQLite file that survives restarts.

Each message is committed the moment it is added (WAL journal), so a crash loses nothing said
before it. `reset` deletes the chat's rows: a forgotten dialogue is gone, not hidden. Consecutive
messages of one speaker (the user wrote again after a failed reply) come back as one turn, so the
prompt keeps alternating speakers.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Literal

Role = Literal["user", "bot"]
FILENAME = "history.sqlite3"
KEEP_ROWS = 200  # per chat: older rows are deleted as new ones come

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'bot')),
    text TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_chat ON messages (chat_id, id);
"""


class History:
    """Messages per chat in one SQLite file; one instance may be shared by tasks and threads."""

    def __init__(self, path: Path, keep: int = KEEP_ROWS):
        self.path, self.keep = Path(path), keep
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    @classmethod
    def in_dir(cls, folder: Path) -> History:
        """The store `history.sqlite3` in `folder` (created if missing)."""
        return cls(Path(folder) / FILENAME)

    def add(self, chat_id: int, role: Role, text: str) -> None:
        """Append one message and commit it; the chat's rows beyond `keep` are dropped."""
        with self._lock, self._db:
            self._db.execute("INSERT INTO messages (chat_id, role, text, at) VALUES (?, ?, ?, ?)",
                             (chat_id, role, text, time.time()))
            self._db.execute("DELETE FROM messages WHERE chat_id = ? AND id <= (SELECT id FROM messages "
                             "WHERE chat_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                             (chat_id, chat_id, self.keep))

    def turns(self, chat_id: int, n: int) -> list[str]:
        """The chat's last `n` turns, oldest first; a speaker's consecutive messages form one turn."""
        turns: list[tuple[str, list[str]]] = []  # newest first, each turn's texts newest first
        with self._lock:
            rows = self._db.execute("SELECT role, text FROM messages WHERE chat_id = ? ORDER BY id DESC",
                                    (chat_id,))
            for role, text in rows:
                if turns and turns[-1][0] == role:
                    turns[-1][1].append(text)
                elif len(turns) == n:
                    break
                else:
                    turns.append((role, [text]))
        return ["\n".join(reversed(texts)) for _, texts in reversed(turns)]

    def reset(self, chat_id: int) -> int:
        """Forget the chat's dialogue (its rows are deleted); the number of messages forgotten."""
        with self._lock, self._db:
            return self._db.execute("DELETE FROM messages WHERE chat_id = ?", (chat_id,)).rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
