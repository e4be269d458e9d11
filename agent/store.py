"""Conversations in SQLite: one file in the user's data folder, one row per completed turn.

Each turn is committed as soon as it completes, so a crash or a kill loses at most the
turn in flight. WAL mode keeps a reader (another chat window) from blocking the writer.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    name TEXT UNIQUE,
    model TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    handle TEXT NOT NULL,
    source TEXT NOT NULL,
    image_id TEXT,
    PRIMARY KEY (conversation_id, handle)
);
CREATE TABLE IF NOT EXISTS turns (
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    record TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
"""


def default_path() -> Path:
    import platformdirs

    return platformdirs.user_data_path("vlm-agent") / "chat.sqlite3"


@dataclass(frozen=True)
class ConversationInfo:
    id: int
    name: str | None
    model: str
    turns: int
    updated: float


class Store:
    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    def new_conversation(self, model: str) -> int:
        now = time.time()
        with self.db:
            cursor = self.db.execute(
                "INSERT INTO conversations (model, created, updated) VALUES (?, ?, ?)", (model, now, now)
            )
        return int(cursor.lastrowid)

    def add_turn(self, conversation: int, seq: int, record: dict[str, Any]) -> None:
        with self.db:  # one transaction per turn: committed whole, or not at all
            self.db.execute(
                "INSERT OR REPLACE INTO turns (conversation_id, seq, record, created) VALUES (?, ?, ?, ?)",
                (conversation, seq, json.dumps(record), time.time()),
            )
            self.db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (time.time(), conversation))

    def put_image(self, conversation: int, handle: str, source: str, image_id: str | None) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO images (conversation_id, handle, source, image_id) VALUES (?, ?, ?, ?)",
                (conversation, handle, source, image_id),
            )

    def forget_image(self, conversation: int, handle: str) -> None:
        with self.db:
            self.db.execute("DELETE FROM images WHERE conversation_id = ? AND handle = ?", (conversation, handle))

    def clear(self, conversation: int) -> None:
        with self.db:
            self.db.execute("DELETE FROM turns WHERE conversation_id = ?", (conversation,))
            self.db.execute("DELETE FROM images WHERE conversation_id = ?", (conversation,))

    def name(self, conversation: int, name: str) -> None:
        with self.db:
            # A name moves to the conversation that takes it last.
            self.db.execute("UPDATE conversations SET name = NULL WHERE name = ?", (name,))
            self.db.execute("UPDATE conversations SET name = ? WHERE id = ?", (name, conversation))

    def find(self, name: str) -> int | None:
        row = self.db.execute("SELECT id FROM conversations WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def latest(self) -> int | None:
        row = self.db.execute(
            "SELECT c.id FROM conversations c WHERE EXISTS (SELECT 1 FROM turns t WHERE t.conversation_id = c.id) "
            "ORDER BY c.updated DESC, c.id DESC LIMIT 1"
        ).fetchone()
        return None if row is None else int(row[0])

    def turns(self, conversation: int) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT record FROM turns WHERE conversation_id = ? ORDER BY seq", (conversation,)
        ).fetchall()
        return [json.loads(row[0]) for row in rows]

    def images(self, conversation: int) -> list[tuple[str, str, str | None]]:
        return self.db.execute(
            "SELECT handle, source, image_id FROM images WHERE conversation_id = ? ORDER BY rowid", (conversation,)
        ).fetchall()

    def conversations(self, limit: int = 20) -> list[ConversationInfo]:
        rows = self.db.execute(
            "SELECT c.id, c.name, c.model, COUNT(t.seq), c.updated FROM conversations c "
            "LEFT JOIN turns t ON t.conversation_id = c.id GROUP BY c.id ORDER BY c.updated DESC, c.id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [ConversationInfo(*row) for row in rows]
