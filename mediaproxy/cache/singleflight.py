"""Identical work requested while it is already in flight is done once; every caller gets the one result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._in_flight: dict[Hashable, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._in_flight)

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        task = self._in_flight.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._in_flight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        # shield: a caller that goes away (client disconnect) must not cancel the work the others wait for
        return await asyncio.shield(task)

    def _finished(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        if not task.cancelled():
            task.exception()  # retrieved here so an error nobody waited for is not reported as "never retrieved"
