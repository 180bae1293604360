"""Rendered results (thumbnails, frames) by canonical key: memory first, then disk; a miss is rendered once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .disk import DiskCache
from .memory import MemoryCache
from .singleflight import SingleFlight

log = logging.getLogger(__name__)


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
        self._writes: set[asyncio.Task] = set()

    async def get(self, key: str, make: Callable[[], Awaitable[Result]], *,
                  persist: bool = True) -> tuple[Result, str]:
        """(the result, where it came from: "memory", "disk" or "render")."""
        result = self.memory.get(("result", key))
        if result is not None:
            return result, "memory"
        return await self._flights.run(key, lambda: self._load_or_make(key, make, persist))

    async def _load_or_make(self, key: str, make: Callable[[], Awaitable[Result]],
                            persist: bool) -> tuple[Result, str]:
        found = await self.disk.read_bytes(f"result|{key}")
        if found is not None:
            body, meta = found
            result = Result(body, meta.get("content_type", "application/octet-stream"), meta.get("extra", {}))
            self.memory.put(("result", key), result)
            return result, "disk"
        result = await make()
        self.memory.put(("result", key), result)
        if persist:  # written behind the response: the client need not wait for the disk
            task = asyncio.create_task(self._persist(key, result))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
        return result, "render"

    async def _persist(self, key: str, result: Result) -> None:
        try:
            await self.disk.store_bytes(f"result|{key}", result.body,
                                        {"content_type": result.content_type, "extra": result.meta})
        except OSError as error:
            log.warning("could not write a result to the disk cache: %s", error)

    async def flush(self) -> None:
        """Wait for results still being written (at shutdown)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
