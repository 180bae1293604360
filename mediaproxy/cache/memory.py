"""A byte-bounded LRU of bytes-like values (cachetools), for hot originals and rendered results; and the index that
lets a purge drop an entry's keys from any memo without scanning it."""

from __future__ import annotations

from collections.abc import Callable, Hashable, MutableMapping
from typing import Generic, TypeVar

from cachetools import LRUCache

from ..refs import Purged

V = TypeVar("V")
_ABSENT = object()
_REBUILD_SLACK = 1024


class EntryKeys:
    """The keys of one memo by the entry they belong to (`entry_of(key)` → "{partner}/{entry}/"), so a purge drops
    an entry's keys without scanning the memo (a full memo of 100k keys takes tens of milliseconds to scan, more
    for a TTLCache). Keys the memo evicted on its own stay listed until the index outgrows the memo twice over;
    it is then rebuilt from the memo's live keys (one scan per that many insertions)."""

    def __init__(self, memo: MutableMapping, entry_of: Callable[[Hashable], str]) -> None:
        self._memo = memo
        self._entry_of = entry_of
        self._keys: dict[str, set[Hashable]] = {}
        self._count = 0

    def added(self, key: Hashable) -> None:
        keys = self._keys.setdefault(self._entry_of(key), set())
        if key not in keys:
            keys.add(key)
            self._count += 1
            if self._count > 2 * len(self._memo) + _REBUILD_SLACK:
                self._rebuild()

    def forget(self, purged: Purged) -> int:
        """Drop the purged entries' keys from the memo; returns how many it still held."""
        if purged.everything:
            dropped = len(self._memo)
            self._memo.clear()
            self._keys, self._count = {}, 0
            return dropped
        dropped = 0
        for prefix in purged.prefixes:
            keys = self._keys.pop(prefix, ())
            self._count -= len(keys)
            for key in keys:
                if self._memo.pop(key, _ABSENT) is not _ABSENT:
                    dropped += 1
        return dropped

    def _rebuild(self) -> None:
        self._keys, self._count = {}, 0
        for key in list(self._memo.keys()):
            self._keys.setdefault(self._entry_of(key), set()).add(key)
            self._count += 1


class MemoryCache(Generic[V]):
    """Values are sized by `size_of` (default len); values above `item_limit` bytes are never kept. With
    `entry_of` (key → "{partner}/{entry}/"), a purge drops an entry's values (forget_purged)."""

    def __init__(self, max_bytes: int, item_limit: int, size_of=len,
                 entry_of: Callable[[Hashable], str] | None = None) -> None:
        self._cache: LRUCache = LRUCache(maxsize=max(max_bytes, 1), getsizeof=size_of)
        self._size_of = size_of
        self.item_limit = min(item_limit, max_bytes)
        self._entries = EntryKeys(self._cache, entry_of) if entry_of is not None else None

    def get(self, key: Hashable) -> V | None:
        return self._cache.get(key)

    def put(self, key: Hashable, value: V) -> None:
        if self._size_of(value) <= self.item_limit:
            self._cache[key] = value
            if self._entries is not None:
                self._entries.added(key)
        else:
            self._cache.pop(key, None)  # never leave an older value behind a newer one

    def discard(self, key: Hashable) -> None:
        self._cache.pop(key, None)

    def forget_purged(self, purged: Purged) -> None:
        if self._entries is not None:
            self._entries.forget(purged)

    @property
    def current_bytes(self) -> int:
        return int(self._cache.currsize)
