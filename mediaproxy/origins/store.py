"""The store of originals: what an origin found, remembered for a while, with hot small files kept in memory."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

from cachetools import LRUCache, TTLCache

from ..cache.memory import MemoryCache
from ..cache.singleflight import SingleFlight
from ..errors import EntryNotFound, FlavorNotFound, UpstreamFailed
from ..refs import EntryRef, FileSelector
from .base import Origin, Original

log = logging.getLogger(__name__)


class OriginalStore:
    def __init__(self, origin: Origin, memory: MemoryCache, *, revalidate_seconds: float,
                 not_found_seconds: float) -> None:
        self.origin = origin
        self.memory = memory
        self._resolved: TTLCache[tuple[EntryRef, FileSelector], Original] = TTLCache(
            maxsize=100_000, ttl=max(revalidate_seconds, 0.0))
        self._missing: TTLCache[tuple[EntryRef, FileSelector], Exception] = TTLCache(
            maxsize=100_000, ttl=max(not_found_seconds, 0.0))
        self._last_known: LRUCache[tuple[EntryRef, FileSelector], Original] = LRUCache(maxsize=100_000)
        self._fetches: SingleFlight[Original] = SingleFlight()

    async def get(self, ref: EntryRef, selector: FileSelector = FileSelector()) -> Original:
        """The selected file of an entry; asks the origin at most once per revalidation period."""
        if selector.version is not None:
            # a version is mostly a cache-buster: only one the manifest lists selects another file
            current = await self.get(ref, dataclasses.replace(selector, version=None))
            if selector.version not in current.manifest.versions:
                return current
        key = (ref, selector)
        original = self._resolved.get(key)
        if original is not None:
            return original
        missing = self._missing.get(key)
        if missing is not None:
            raise type(missing)(missing.message)
        try:
            original = await self._fetches.run(key, lambda: self.origin.fetch(ref, selector))
        except (EntryNotFound, FlavorNotFound) as exc:
            self._missing[key] = exc
            self._last_known.pop(key, None)
            raise
        except UpstreamFailed as exc:  # 502 / 504: serve what we had, if we had it (stale-if-error)
            original = self._last_known.get(key)
            if original is None or not original.path.exists():
                raise
            log.warning("origin failed for %s/%s (%s); serving the copy cached before", ref.partner_id,
                        ref.entry_id, exc.message)
            return original
        self._resolved[key] = original
        self._last_known[key] = original
        return original

    async def read(self, original: Original) -> bytes:
        """The whole file, from memory when it is small and hot."""
        body = self.memory.get(("original", original.identity))
        if body is None:
            body = await asyncio.to_thread(Path(original.path).read_bytes)
            self.memory.put(("original", original.identity), body)
        return body

    async def close(self) -> None:
        await self.origin.close()
