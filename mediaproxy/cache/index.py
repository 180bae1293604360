"""The node's one index of its disk cache: sqlite3 in WAL mode, shared by every worker process of the node.

    entries   one row per file in the cache: its namespace (originals, results, indexes), bytes on disk, last use
              (recency, written by every process that reads it) and owner (the original it was derived from, so
              everything of one original can be dropped at once)
    totals    bytes per namespace, kept by triggers, so a budget check is one row read
    located   what an http origin said about an entry's file (or that it has none), shared so that one worker's
              answer saves the others a trip upstream
    purges    one row per purge of an entry (SPEC §8), numbered in commit order: the generation every worker
              compares with the last it applied (purge.py), and the entry's withheld state after it
    withheld  entries that answer 404 whatever the origin holds (deleted or blocked), until purged again
    once      keys of purges that happen at most once (a notification's id; Kaltura retries), kept for a while
    notices   the last notification received for an entry (the console shows it)

Every method blocks: the disk cache calls them on its own thread. Writers take sqlite's write lock
(`BEGIN IMMEDIATE`) for the few statements of one change, so several processes can insert, evict and read safely.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
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
CREATE TABLE IF NOT EXISTS purges (
    generation INTEGER PRIMARY KEY AUTOINCREMENT,
    partner_id INTEGER NOT NULL,
    entry_id TEXT NOT NULL,
    withheld TEXT,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS withheld (
    partner_id INTEGER NOT NULL,
    entry_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    since REAL NOT NULL,
    PRIMARY KEY (partner_id, entry_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS once (key TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS once_by_age ON once(at);
CREATE TABLE IF NOT EXISTS notices (
    partner_id INTEGER NOT NULL,
    entry_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (partner_id, entry_id)
) WITHOUT ROWID;
"""
_LOW_WATER = 0.9  # an eviction frees space down to this share of the budget, so it does not run on every insert


KEEP_WITHHELD = "keep"  # PurgeRequest.withheld: leave the entry's withheld state as it is


@dataclass(frozen=True)
class PurgeRequest:
    """One entry to purge: every cache entry and located fact whose key starts with `prefix` ("{partner}/{entry}/")."""

    partner_id: int
    entry_id: str
    prefix: str
    withheld: str | None  # afterwards: why the entry answers 404 ("deleted", "blocked"), None (served), or KEEP_WITHHELD
    once: str | None = None  # a key that makes this purge happen at most once (within `remember_seconds`)
    notice: str | None = None  # the notification that asked for it, remembered as the entry's last


@dataclass(frozen=True)
class PurgeRecord:
    generation: int
    removed: Mapping[str, int]  # namespace → cache entries removed
    located: int  # located facts removed
    withheld_before: str | None
    withheld: str | None


@dataclass(frozen=True)
class PurgeRow:
    generation: int
    partner_id: int
    entry_id: str
    withheld: str | None


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

    def add(self, namespace: str, entries: Sequence[tuple[str, int, str | None]],
            commit_files: Callable[[], None]) -> list[str]:
        """Record entries (name, size, owner) whose files `commit_files()` puts in place (inside the write lock, so
        no eviction running in another process can remove a new file under its new row), in one transaction;
        returns the names evicted to make room, whose files the caller deletes. The new entries are never among
        them."""
        with _write(self.db) as db:
            commit_files()
            now = time.time()
            db.executemany("DELETE FROM entries WHERE name = ?", ((name,) for name, _, _ in entries))
            db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?)",
                           ((name, namespace, size, now, owner) for name, size, owner in entries))
            return self._evict(db, namespace, keep={name for name, _, _ in entries})

    def _evict(self, db: sqlite3.Connection, namespace: str, keep: Set[str] = frozenset()) -> list[str]:
        budget = self.budgets.get(namespace)
        total = self._total(db, namespace)
        if budget is None or total <= budget:
            return []
        victims = []
        target = int(budget * _LOW_WATER)
        for name, size in db.execute("SELECT name, size FROM entries WHERE namespace = ? ORDER BY used",
                                     (namespace,)):
            if total <= target:
                break
            if name not in keep:
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
                victims += self._evict(db, namespace)
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


    # ------------------------------------------------------------------------------------------- purges

    def purge(self, request: PurgeRequest, unlink: Callable[[str], None], *, remember_seconds: float,
              now: float | None = None) -> PurgeRecord | None:
        """Purge one entry in one transaction: its cache entries (whose files `unlink(name)` removes inside it, so a
        crash never leaves a file without its row or a recorded purge with its files), its located facts, its
        withheld state, and a numbered row every worker applies. None when `request.once` was seen already."""
        now = time.time() if now is None else now
        prefix, end = request.prefix, _prefix_end(request.prefix)
        key = (request.partner_id, request.entry_id)
        with _write(self.db) as db:
            if request.once is not None:
                if db.execute("INSERT OR IGNORE INTO once VALUES (?, ?)", (request.once, now)).rowcount == 0:
                    return None
            removed: dict[str, int] = {}
            owned = db.execute("SELECT name, namespace FROM entries WHERE owner >= ? AND owner < ?",
                               (prefix, end)).fetchall()
            for name, namespace in owned:
                unlink(name)
                removed[namespace] = removed.get(namespace, 0) + 1
            db.execute("DELETE FROM entries WHERE owner >= ? AND owner < ?", (prefix, end))
            located = db.execute("DELETE FROM located WHERE key >= ? AND key < ?", (prefix, end)).rowcount
            row = db.execute("SELECT reason FROM withheld WHERE partner_id = ? AND entry_id = ?", key).fetchone()
            before = row[0] if row else None
            after = before if request.withheld == KEEP_WITHHELD else request.withheld
            if after is None:
                db.execute("DELETE FROM withheld WHERE partner_id = ? AND entry_id = ?", key)
            elif after != before:
                db.execute("INSERT OR REPLACE INTO withheld VALUES (?, ?, ?, ?)", (*key, after, now))
            if request.notice is not None:
                db.execute("INSERT OR REPLACE INTO notices VALUES (?, ?, ?, ?)", (*key, request.notice, now))
            generation = db.execute("INSERT INTO purges (partner_id, entry_id, withheld, at) VALUES (?, ?, ?, ?)",
                                    (*key, after, now)).lastrowid
            db.execute("DELETE FROM purges WHERE at < ?", (now - remember_seconds,))
            db.execute("DELETE FROM once WHERE at < ?", (now - remember_seconds,))
        return PurgeRecord(generation, removed, located, before, after)

    def purges_since(self, generation: int) -> tuple[int, list[PurgeRow]]:
        """(the last generation ever made, the purges after `generation` still kept), in one read transaction."""
        with _read(self.db) as db:
            rows = [PurgeRow(*row) for row in db.execute(
                "SELECT generation, partner_id, entry_id, withheld FROM purges WHERE generation > ? "
                "ORDER BY generation", (generation,))]
            return self.last_purge(), rows

    def last_purge(self) -> int:
        """The generation of the last purge ever made (its row may have been trimmed)."""
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'purges'").fetchone()
        return row[0] if row else 0

    def withheld(self) -> dict[tuple[int, str], str]:
        """(partner, entry) → why it answers 404, for every withheld entry."""
        return {(partner, entry): reason for partner, entry, reason in
                self.db.execute("SELECT partner_id, entry_id, reason FROM withheld")}

    def notice(self, partner_id: int, entry_id: str) -> tuple[str, float] | None:
        """The last notification received for an entry: (what it was, when)."""
        row = self.db.execute("SELECT kind, at FROM notices WHERE partner_id = ? AND entry_id = ?",
                              (partner_id, entry_id)).fetchone()
        return None if row is None else (row[0], row[1])


def _prefix_end(prefix: str) -> str:
    """The smallest string above every string that starts with `prefix` (a range scan of the index)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes, fast
    db.executescript(_SCHEMA)
    db.execute("SELECT count(*) FROM entries").fetchone()  # a damaged file fails here, not on first use
    return db


class _transaction:
    """BEGIN … COMMIT (ROLLBACK on an error). `write`: BEGIN IMMEDIATE, the write lock for the whole change;
    else one snapshot for several reads."""

    def __init__(self, db: sqlite3.Connection, *, write: bool) -> None:
        self.db = db
        self.begin = "BEGIN IMMEDIATE" if write else "BEGIN"

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute(self.begin)
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _read(db: sqlite3.Connection) -> _transaction:
    return _transaction(db, write=False)


def _write(db: sqlite3.Connection) -> _transaction:
    return _transaction(db, write=True)
