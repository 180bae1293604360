"""Rendered results (thumbnails, frames) by canonical key: memory first, then disk; a miss is rendered once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .. import metrics
from .disk import DiskCache
from .memory import MemoryCache
from .singleflight import SingleFlight

_MAX_UNWRITTEN = 2000  # results waiting for the disk; past that (a stalled disk) new ones stay in memory only


@dataclass(frozen=True)
class Result:
    body: bytes
    content_type: str
    meta: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.body) + 256  # + a rough allowance for the object itself


class ResultCache:
    def __init__(self, memory: MemoryCache, disk: DiskCache) -> None:
        self.memory = memory
        self.disk = disk
        self._flights: SingleFlight[tuple[Result, str]] = SingleFlight()
        self._unwritten: list[tuple[str, bytes, dict]] = []
        self._writer: asyncio.Task | None = None

    async def get(self, key: str, make: Callable[[], Awaitable[Result]], *,
                  persist: bool = True) -> tuple[Result, str]:
        """(the result, where it came from: "memory", "disk" or "render")."""
        result = self.memory.get(("result", key))
        if result is not None:
            metrics.CACHE.labels("memory", "hit").inc()
            return result, "memory"
        metrics.CACHE.labels("memory", "miss").inc()
        return await self._flights.run(key, lambda: self._load_or_make(key, make, persist))

    async def _load_or_make(self, key: str, make: Callable[[], Awaitable[Result]],
                            persist: bool) -> tuple[Result, str]:
        found = await self.disk.read("results", key)
        metrics.CACHE.labels("disk", "miss" if found is None else "hit").inc()
        if found is not None:
            meta = found.meta
            result = Result(found.body, meta.get("content_type", "application/octet-stream"), meta.get("extra", {}))
            self.memory.put(("result", key), result)
            return result, "disk"
        result = await make()
        self.memory.put(("result", key), result)
        if persist and len(self._unwritten) < _MAX_UNWRITTEN:  # written behind the response, in batches
            self._unwritten.append((key, result.body, {"content_type": result.content_type, "extra": result.meta}))
            if self._writer is None:
                self._writer = asyncio.create_task(self._write_behind())
        return result, "render"

    async def _write_behind(self) -> None:
        try:
            while self._unwritten:
                batch, self._unwritten = self._unwritten, []
                await self.disk.write("results", batch)  # a full disk: logged there; the results stay in memory
        finally:
            self._writer = None

    async def flush(self) -> None:
        """Wait for results still being written (at shutdown)."""
        while self._writer is not None:
            await asyncio.shield(self._writer)
