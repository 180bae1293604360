"""The node's one index of its disk cache: sqlite3 in WAL mode, shared by every worker process of the node.

    entries   one row per file in the cache: its namespace (originals, results, indexes), bytes on disk, last use
              (recency, written by every process that reads it) and owner (the original it was derived from, so
              everything of one original can be dropped at once)
    totals    bytes per namespace, kept by triggers, so a budget check is one row read
    located   what an http origin said about an entry's file (or that it has none), shared so that one worker's
              answer saves the others a trip upstream

Every method blocks: the disk cache calls them on its own thread. Writers take sqlite's write lock
(`BEGIN IMMEDIATE`) for the few statements of one change, so several processes can insert, evict and read safely.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    name TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    size INTEGER NOT NULL,
    used REAL NOT NULL,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS entries_by_recency ON entries(namespace, used);
CREATE INDEX IF NOT EXISTS entries_by_owner ON entries(owner);
CREATE TABLE IF NOT EXISTS totals (namespace TEXT PRIMARY KEY, bytes INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS entry_added AFTER INSERT ON entries BEGIN
    INSERT INTO totals VALUES (new.namespace, new.size)
        ON CONFLICT(namespace) DO UPDATE SET bytes = bytes + new.size;
END;
CREATE TRIGGER IF NOT EXISTS entry_removed AFTER DELETE ON entries BEGIN
    UPDATE totals SET bytes = bytes - old.size WHERE namespace = old.namespace;
END;
CREATE TABLE IF NOT EXISTS located (key TEXT PRIMARY KEY, value TEXT NOT NULL, checked REAL NOT NULL);
"""
_LOW_WATER = 0.9  # an eviction frees space down to this share of the budget, so it does not run on every insert


class SharedIndex:
    def __init__(self, path: Path, budgets: Mapping[str, int]) -> None:
        self.path = path
        self.budgets = dict(budgets)
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._connect()
        return self._db

    def _connect(self) -> sqlite3.Connection:
        try:
            return _open(self.path)
        except sqlite3.DatabaseError:  # not a database (a disk fault, a hand edit): the files are re-adopted
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            return _open(self.path)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # ------------------------------------------------------------------------------------------- entries

    def add(self, namespace: str, name: str, size: int, owner: str | None, commit_file) -> list[str]:
        """Record an entry whose file `commit_file()` puts in place (inside the write lock, so no eviction running
        in another process can remove the new file under its new row); returns the names evicted to make room,
        whose files the caller deletes. The new entry itself is never among them."""
        with _write(self.db) as db:
            commit_file()
            db.execute("DELETE FROM entries WHERE name = ?", (name,))
            db.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?)", (name, namespace, size, time.time(), owner))
            return self._evict(db, namespace, keep=name)

    def _evict(self, db: sqlite3.Connection, namespace: str, keep: str) -> list[str]:
        budget = self.budgets.get(namespace)
        total = self._total(db, namespace)
        if budget is None or total <= budget:
            return []
        victims = []
        target = int(budget * _LOW_WATER)
        for name, size in db.execute("SELECT name, size FROM entries WHERE namespace = ? AND name != ? "
                                     "ORDER BY used", (namespace, keep)):
            if total <= target:
                break
            victims.append(name)
            total -= size
        db.executemany("DELETE FROM entries WHERE name = ?", ((name,) for name in victims))
        return victims

    def remove(self, names: Iterable[str]) -> None:
        with _write(self.db) as db:
            db.executemany("DELETE FROM entries WHERE name = ?", ((name,) for name in names))

    def remove_owned(self, owner: str) -> list[str]:
        """Forget every entry derived from `owner`; returns their names (the caller deletes the files)."""
        with _write(self.db) as db:
            names = [name for (name,) in db.execute("SELECT name FROM entries WHERE owner = ?", (owner,))]
            db.execute("DELETE FROM entries WHERE owner = ?", (owner,))
        return names

    def touch(self, used: Mapping[str, float]) -> None:
        """Recency of entries read since the last call (reads are batched: one write for many)."""
        if used:
            with _write(self.db) as db:
                db.executemany("UPDATE entries SET used = max(used, ?) WHERE name = ?",
                               ((when, name) for name, when in used.items()))

    def total(self, namespace: str) -> int:
        return self._total(self.db, namespace)

    @staticmethod
    def _total(db: sqlite3.Connection, namespace: str) -> int:
        row = db.execute("SELECT bytes FROM totals WHERE namespace = ?", (namespace,)).fetchone()
        return row[0] if row else 0

    def names(self) -> dict[str, int]:
        """name → size of every entry (for reconciling the index with the files at start-up)."""
        return dict(self.db.execute("SELECT name, size FROM entries"))

    def adopt(self, found: Iterable[tuple[str, str, int, float]]) -> None:
        """Add (namespace, name, size, used) of files found on disk that the index did not know."""
        with _write(self.db) as db:
            db.executemany("INSERT OR IGNORE INTO entries (namespace, name, size, used) VALUES (?, ?, ?, ?)", found)

    def shrink_to_budgets(self) -> list[str]:
        victims = []
        with _write(self.db) as db:
            for namespace in self.budgets:
                victims += self._evict(db, namespace, keep="")
        return victims

    # ------------------------------------------------------------------------------------------- located

    def located(self, key: str) -> tuple[dict, float] | None:
        row = self.db.execute("SELECT value, checked FROM located WHERE key = ?", (key,)).fetchone()
        return None if row is None else (json.loads(row[0]), row[1])

    def locate(self, key: str, value: dict, checked: float) -> None:
        with _write(self.db) as db:
            db.execute("INSERT OR REPLACE INTO located VALUES (?, ?, ?)", (key, json.dumps(value), checked))

    def forget_located(self, prefix: str) -> None:
        with _write(self.db) as db:
            db.execute("DELETE FROM located WHERE substr(key, 1, ?) = ?", (len(prefix), prefix))


def _open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes, fast
    db.executescript(_SCHEMA)
    db.execute("SELECT count(*) FROM entries").fetchone()  # a damaged file fails here, not on first use
    return db


class _write:
    """BEGIN IMMEDIATE … COMMIT: the write lock for the whole change (ROLLBACK on an error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
