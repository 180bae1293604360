"""Purging an entry from everything this node keeps of it, on every worker (SPEC §8).

A purge is one transaction of the node's shared index (cache/index.py): the entry's cached files (results, clip
indexes, blocks of originals: all filed under its files' owners), what the origin said about it, and its withheld
state (deleted or blocked: 404 whatever the origin holds) go or change, and a numbered row records it. The number,
the purge generation, is then written to an 8-byte file in the cache directory that every worker maps into
memory. On each request a worker compares it with the value it saw last (one read of shared memory); when it
moved, the worker reads the rows after the last generation it applied and its memories drop what they hold of
those entries (`forget_purged`: the store's located memo and hot originals, probes, prepared thumbnails, decoded
pictures, results). The next request for such an entry asks the origin again: a local file is stat'ed again, an
http origin asked again.

The file is only a hint that something moved: a worker always asks the index for the rows after the last one it
applied, so a torn or out-of-order write of the file costs at most one extra query, never a missed purge. Whether
a worker missed rows (trimmed after `remember_seconds` idle, or an index that was recreated) is told by the index,
never by the file; then it forgets everything.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from . import metrics
from .cache.disk import DiskCache
from .cache.index import KEEP_WITHHELD, PurgeRequest
from .refs import EntryRef, Purged

GENERATION_FILE = "purge-generation"
_GENERATION = struct.Struct("<Q")
DELETED, BLOCKED = "deleted", "blocked"  # why a withheld entry answers 404
KEEP = KEEP_WITHHELD  # purge(withhold=KEEP): the entry stays withheld or served, as it was


class Forgetful(Protocol):
    """A memory cache of one process that holds things of entries (keyed by entry, or by file owner)."""

    def forget_purged(self, purged: Purged) -> None: ...


@dataclass(frozen=True)
class PurgeOutcome:
    """What one purge dropped from the node."""

    ref: EntryRef
    generation: int
    dropped: Mapping[str, int]  # disk cache entries by namespace (results, indexes, originals)
    located: int  # what the origin had said about the entry's files (shared facts)
    withheld_before: str | None
    withheld: str | None

    def as_json(self) -> dict:
        return {"partner_id": self.ref.partner_id, "entry_id": self.ref.entry_id, "generation": self.generation,
                "dropped": {namespace: self.dropped.get(namespace, 0) for namespace in ("results", "indexes",
                                                                                        "originals")},
                "located": self.located, "withheld_before": self.withheld_before, "withheld": self.withheld}

    def words(self) -> str:
        drop = self.dropped
        state = (f"answers 404 ({self.withheld})" if self.withheld else
                 f"served again (it had been {self.withheld_before})" if self.withheld_before else "served")
        return "\n".join([
            f"purged partner {self.ref.partner_id} entry {self.ref.entry_id} (purge {self.generation})",
            f"  disk cache   {drop.get('results', 0)} results, {drop.get('indexes', 0)} clip indexes, "
            f"{drop.get('originals', 0)} blocks of originals",
            f"  origin       {self.located} answers about its files forgotten: asked again at the next request",
            f"  the entry    {state}",
            "  workers      drop their memories of it at their next request"])


class Purges:
    """This process's side of the node's purges: making them, and applying those any process made."""

    def __init__(self, disk: DiskCache, remember_seconds: float) -> None:
        self.disk = disk
        self.remember_seconds = remember_seconds
        self.withheld: dict[EntryRef, str] = {}  # read by the store on every request (filled in place)
        self._forgetful: list[Forgetful] = []
        self._applied = 0  # the last generation whose purge this process applied
        self._seen = 0  # the generation file's value when this process last looked
        self._fd: int | None = None
        self._map: mmap.mmap | None = None
        self._catching_up = asyncio.Lock()

    def register(self, *caches: Forgetful) -> None:
        self._forgetful.extend(caches)

    async def start(self) -> None:
        self._fd, self._map = await asyncio.to_thread(_map_generation_file, self.disk.root / GENERATION_FILE)
        self._seen = self._read()
        self._applied = await self.disk.last_purge()
        await self._load_withheld()

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # ----------------------------------------------------------------------------------------------- making

    async def purge(self, ref: EntryRef, *, withhold: str | None = None, once: str | None = None,
                    notice: str | None = None, source: str = "operator") -> PurgeOutcome | None:
        """Drop everything the node keeps of `ref`; afterwards it is withheld for `withhold` ("deleted",
        "blocked"), served (None) or as it was (KEEP). None when `once` was purged already (nothing done)."""
        record = await self.disk.purge(PurgeRequest(ref.partner_id, ref.entry_id, ref.prefix, withhold, once, notice),
                                       self.remember_seconds)
        if record is None:
            # done before: but the process that did it may have died before telling the workers
            self._publish(await self.disk.last_purge())
            return None
        self._publish(record.generation)
        metrics.PURGES.labels(source).inc()
        await self.catch_up()
        return PurgeOutcome(ref, record.generation, record.removed, record.located, record.withheld_before,
                            record.withheld)

    async def notice(self, ref: EntryRef) -> tuple[str, float] | None:
        """The last notification received for an entry: (its type, when)."""
        return await self.disk.notice(ref.partner_id, ref.entry_id)

    def _publish(self, generation: int) -> None:
        if self._fd is not None:
            os.pwrite(self._fd, _GENERATION.pack(generation), 0)

    # ----------------------------------------------------------------------------------------------- applying

    async def catch_up(self) -> None:
        """Apply the purges any process of the node made since this one last looked (on every request: when
        nothing moved, this is one read of shared memory)."""
        if self._read() == self._seen:
            return
        async with self._catching_up:
            seen = self._read()
            if seen == self._seen:
                return  # another request of this process applied them while this one waited
            last, rows = await self.disk.purges_since(self._applied)
            # every purge after the last one applied, or some were trimmed (this process was idle for
            # remember_seconds) or the index was recreated (its generations started again)
            missed = len(rows) != last - self._applied
            if missed:
                purged = Purged(everything=True)
                await self._load_withheld()
            else:
                purged = Purged(frozenset(EntryRef(row.partner_id, row.entry_id) for row in rows))
                for row in rows:
                    ref = EntryRef(row.partner_id, row.entry_id)
                    if row.withheld:
                        self.withheld[ref] = row.withheld
                    else:
                        self.withheld.pop(ref, None)
            if missed or rows:
                for cache in self._forgetful:
                    cache.forget_purged(purged)
            self._applied = last
            self._seen = seen

    def _read(self) -> int:
        return _GENERATION.unpack_from(self._map)[0] if self._map is not None else 0

    async def _load_withheld(self) -> None:
        found = await self.disk.withheld()
        self.withheld.clear()
        self.withheld.update({EntryRef(partner, entry): reason for (partner, entry), reason in found.items()})


def _map_generation_file(path: Path) -> tuple[int, mmap.mmap]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size < _GENERATION.size:
            os.ftruncate(fd, _GENERATION.size)  # zeros; never shortens a file another process already wrote
        return fd, mmap.mmap(fd, _GENERATION.size, access=mmap.ACCESS_READ)
    except BaseException:
        os.close(fd)
        raise
