"""Rendered results (thumbnails, frames) by canonical key: memory first, then disk; a miss is rendered once.

Every result is filed under the owner of the file it was made from (`EntryFile.owner`), in memory and on disk,
so dropping an original that changed (`DiskCache.drop_owned`) or a purged entry reaches its results too.

With `[cache] results_min_uses = 2` (nginx's `proxy_cache_min_uses`, a CDN's cache-on-second-hit) a result goes to
disk at its second use in its worker, not at its render: where most thumbnail URLs are asked once, writing those
costs every request a file and an index row that nobody reads. Until then it lives in memory, which answers the
second request (and writes it); a second request on another worker renders it again there, which is why the
default (1) writes every render.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .. import metrics
from ..refs import Purged
from .disk import DiskCache
from .memory import MemoryCache
from .singleflight import SingleFlight

_MAX_UNWRITTEN = 2000  # results waiting for the disk; past that (a stalled disk) new ones stay in memory only
# How long the writer gathers results before writing them, in one index transaction: a write a result costs more
# CPU than the response (files, the index's pages, the threads' hand-offs), and a batch's cost is nearly one write's.
_GATHER_SECONDS = 0.1
_REMEMBERED_KEYS = 50_000  # keys rendered once, per generation (two are kept: ~8 MB)


@dataclass(frozen=True)
class Result:
    body: bytes
    content_type: str
    meta: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.body) + 256  # + a rough allowance for the object itself


class ResultCache:
    def __init__(self, memory: MemoryCache, disk: DiskCache, *, min_uses: int = 1) -> None:
        self.memory = memory
        self.disk = disk
        self._rendered_once = SeenOnce() if min_uses == 2 else None  # None: every render is written
        self._flights: SingleFlight[tuple[Result, str]] = SingleFlight()
        self._unwritten: list[tuple[str, bytes, dict, str]] = []  # (key, body, meta, owner): disk items
        self._writer: asyncio.Task | None = None

    async def get(self, key: str, make: Callable[[], Awaitable[Result]], *, owner: str,
                  persist: bool = True) -> tuple[Result, str]:
        """(the result, where it came from: "memory", "disk" or "render"); `owner`: its source file's owner."""
        result = self.memory.get((owner, key))
        if result is not None:
            metrics.TALLY.count(metrics.child(metrics.CACHE, "memory", "hit"))
            if persist and self._rendered_once is not None and self._rendered_once.taken(key):  # its second use
                self._write_later(key, result, owner)
            return result, "memory"
        metrics.TALLY.count(metrics.child(metrics.CACHE, "memory", "miss"))
        return await self._flights.run(key, lambda: self._load_or_make(key, make, owner, persist))

    async def _load_or_make(self, key: str, make: Callable[[], Awaitable[Result]], owner: str,
                            persist: bool) -> tuple[Result, str]:
        found = await self.disk.read("results", key)
        metrics.TALLY.count(metrics.child(metrics.CACHE, "disk", "miss" if found is None else "hit"))
        if found is not None:
            meta = found.meta
            result = Result(found.body, meta.get("content_type", "application/octet-stream"), meta.get("extra", {}))
            self.memory.put((owner, key), result)
            return result, "disk"
        result = await make()
        self.memory.put((owner, key), result)
        if persist:
            if self._rendered_once is None or self._rendered_once.taken(key):  # rendered before, and gone from memory
                self._write_later(key, result, owner)
            else:
                self._rendered_once.seen(key)
        return result, "render"

    def _write_later(self, key: str, result: Result, owner: str) -> None:
        """Behind the response, in batches (past _MAX_UNWRITTEN, a stalled disk: in memory only)."""
        if len(self._unwritten) < _MAX_UNWRITTEN:
            self._unwritten.append((key, result.body, {"content_type": result.content_type, "extra": result.meta},
                                    owner))
            if self._writer is None:
                self._writer = asyncio.create_task(self._write_behind())

    async def _write_behind(self) -> None:
        try:
            while self._unwritten:
                await asyncio.sleep(_GATHER_SECONDS)
                batch, self._unwritten = self._unwritten, []
                # one transaction whatever the originals (a full disk: logged there; the results stay in memory)
                await self.disk.write_owned("results", batch)
        finally:
            self._writer = None

    def forget_purged(self, purged: Purged) -> None:
        """Drop the results of purged entries not yet written to disk (those in memory go with the memory cache)."""
        self._unwritten = [item for item in self._unwritten if not purged.owns(item[3])]

    async def flush(self) -> None:
        """Wait for results still being written (at shutdown)."""
        while self._writer is not None:
            await asyncio.shield(self._writer)


class SeenOnce:
    """Keys rendered once and not written yet, by their hash (a collision only writes a result early), in two
    generations of `_REMEMBERED_KEYS`: a key rendered long ago and never asked again is forgotten, in constant time
    and memory."""

    def __init__(self) -> None:
        self._current: set[int] = set()
        self._previous: set[int] = set()

    def seen(self, key: str) -> None:
        if len(self._current) >= _REMEMBERED_KEYS:
            self._previous, self._current = self._current, set()
        self._current.add(hash(key))

    def taken(self, key: str) -> bool:
        """Whether `key` was seen (and is forgotten now)."""
        digest = hash(key)
        found = digest in self._current or digest in self._previous
        self._current.discard(digest)
        self._previous.discard(digest)
        return found
