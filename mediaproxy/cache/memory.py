"""A byte-bounded LRU of bytes-like values (cachetools), for hot originals and rendered results."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from cachetools import LRUCache

V = TypeVar("V")


class MemoryCache(Generic[V]):
    """Values are sized by `size_of` (default len); values above `item_limit` bytes are never kept."""

    def __init__(self, max_bytes: int, item_limit: int, size_of=len) -> None:
        self._cache: LRUCache = LRUCache(maxsize=max(max_bytes, 1), getsizeof=size_of)
        self._size_of = size_of
        self.item_limit = min(item_limit, max_bytes)

    def get(self, key: Hashable) -> V | None:
        return self._cache.get(key)

    def put(self, key: Hashable, value: V) -> None:
        if self._size_of(value) <= self.item_limit:
            self._cache[key] = value
        else:
            self._cache.pop(key, None)  # never leave an older value behind a newer one

    def discard(self, key: Hashable) -> None:
        self._cache.pop(key, None)

    def discard_where(self, doomed: Callable[[Hashable], bool]) -> int:
        """Drop every value whose key `doomed(key)` says so (a purge: rare, so a scan); returns how many."""
        return discard_where(self._cache, doomed)

    @property
    def current_bytes(self) -> int:
        return int(self._cache.currsize)


def discard_where(cache, doomed: Callable[[Hashable], bool]) -> int:
    """The same for any mapping of cached values (cachetools caches, dicts)."""
    keys = [key for key in list(cache.keys()) if doomed(key)]
    for key in keys:
        cache.pop(key, None)
    return len(keys)
