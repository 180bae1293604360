"""Identical work requested while it is already in flight is done once; every caller gets the one result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """`orphan_grace` None: the work always runs to its end, even when every caller went away (a render is
    worth caching). A number: work that nobody waits for any more is cancelled after that many seconds unless a
    caller joins it again (an upstream fetch must not hold a connection for nobody)."""

    def __init__(self, orphan_grace: float | None = None) -> None:
        self._in_flight: dict[Hashable, asyncio.Task[T]] = {}
        self._waiters: dict[Hashable, int] = {}
        self._orphan_grace = orphan_grace
        self._reapers: dict[Hashable, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._in_flight)

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        task = self._in_flight.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._in_flight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        reaper = self._reapers.pop(key, None)
        if reaper is not None:
            reaper.cancel()
        self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            # shield: a caller that goes away (client disconnect) must not cancel the work the others wait for
            return await asyncio.shield(task)
        finally:
            self._waiters[key] -= 1
            if not self._waiters[key]:
                del self._waiters[key]
                if self._orphan_grace is not None and not task.done():
                    self._reapers[key] = asyncio.get_running_loop().call_later(
                        self._orphan_grace, self._reap, key, task)

    def _reap(self, key: Hashable, task: asyncio.Task[T]) -> None:
        self._reapers.pop(key, None)
        if not self._waiters.get(key):
            task.cancel()

    def _finished(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        reaper = self._reapers.pop(key, None)
        if reaper is not None:
            reaper.cancel()
        if not task.cancelled():
            task.exception()  # retrieved here so an error nobody waited for is not reported as "never retrieved"
