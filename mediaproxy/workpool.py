"""The bounded pool that runs CPU work off the event loop (decode, resize, encode, probe, frame grabs, remuxes).

Pillow and FFmpeg release the GIL, so `threads` jobs compute at once, each holding one CPU slot. Slots are handed
out on the event loop, first come first served, and a job goes to a thread only once it holds one: waiting jobs
cost no thread (threads waiting on a lock are GIL and scheduler traffic that a 2-core machine pays for in every
request). A job that has to wait for I/O (a block of a remote original, fetched by the event loop) gives its slot
up while it waits (`waiting_for_io`), so one slow upstream cannot hold the CPU other requests need; threads are
started as jobs need them, up to one per admitted job, so a job holding a slot always finds one. At most `threads + queue` jobs are admitted; past that a request is answered 503
at once instead of waiting behind a queue that only grows, and a job that found no slot within `queue_timeout` is
dropped with 503.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from . import metrics
from .errors import Overloaded

T = TypeVar("T")
_job = threading.local()  # the job this thread runs: its pool, and whether it holds its slot (see waiting_for_io)


class _Holding:
    """Whether a running job holds its CPU slot (it gives it up while it waits for I/O)."""

    __slots__ = ("slot",)

    def __init__(self) -> None:
        self.slot = True


class WorkPool:
    def __init__(self, threads: int = 0, queue: int = 64, *, queue_timeout: float = 0.0, name: str = "work") -> None:
        self.name = name
        self.threads = threads or os.cpu_count() or 1  # jobs computing at once
        self.capacity = self.threads + queue
        self.queue_timeout = queue_timeout  # a job that found no slot after this long is dropped (0: never)
        self.pending = 0  # jobs admitted and not finished (queued, computing or waiting for I/O)
        self.rejected = 0  # refused at the door or dropped from the queue
        self._free = self.threads  # slots nobody holds (changed on the event loop only)
        self._queue: deque[asyncio.Future[None]] = deque()  # jobs waiting for a slot, in arrival order
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        # jobs parked on I/O keep their threads: as many threads as admitted jobs, started when first needed
        self._executor = ThreadPoolExecutor(self.capacity, thread_name_prefix="mediaproxy-work")
        metrics.TALLY.level(metrics.child(metrics.QUEUE, name), lambda: self.pending)

    async def run(self, function: Callable[..., T], *args) -> T:
        if self.pending >= self.capacity:
            self._reject()
            raise Overloaded(f"server busy: {self.pending} jobs in progress, try again shortly", retry_after=1)
        self._loop = loop = asyncio.get_running_loop()
        self.pending += 1  # counted until the job really ends, even when the requester has gone away
        try:
            await self._take_slot(self.queue_timeout)
        except BaseException:  # dropped from the queue, or its requester went away: it never runs
            self._ended()
            raise
        holding = _Holding()
        waiter = loop.create_future()
        job = self._executor.submit(self._compute, holding, function, args)
        # one wake-up of the event loop per job: the result and the bookkeeping travel together
        job.add_done_callback(lambda _: _call_soon(loop, self._settle, job, holding, waiter))
        return await waiter  # cancelled: the job computes on; its slot and its count come back when it ends

    async def _take_slot(self, timeout: float) -> None:
        if self._free > 0 and not self._queue:
            self._free -= 1
            return
        ticket = asyncio.get_running_loop().create_future()
        self._queue.append(ticket)
        granted = False
        try:
            async with asyncio.timeout(timeout if timeout > 0 else None):
                await ticket
            granted = True
        except TimeoutError:
            self._reject()
            raise Overloaded(f"server busy: no worker was free within {timeout:g} s", retry_after=2) from None
        finally:
            if not granted:  # timed out or cancelled: out of the queue, or the slot it was just handed passed on
                if ticket.done() and not ticket.cancelled():
                    self._give_back_slot()
                elif ticket in self._queue:
                    self._queue.remove(ticket)

    def _give_back_slot(self) -> None:
        while self._queue:
            ticket = self._queue.popleft()
            if not ticket.done():
                ticket.set_result(None)  # the slot goes to the job that waited longest
                return
        self._free += 1

    def _compute(self, holding: _Holding, function: Callable[..., T], args: tuple) -> T:
        """(work thread) the job, holding a CPU slot."""
        _job.pool, _job.holding = self, holding
        try:
            return function(*args)
        finally:
            _job.pool = _job.holding = None

    def _settle(self, job: Future, holding: _Holding, waiter: asyncio.Future) -> None:
        if holding.slot:
            self._give_back_slot()
        self._ended()
        if waiter.done():
            return  # the requester went away
        if job.cancelled():
            waiter.cancel()
        elif job.exception() is not None:
            waiter.set_exception(job.exception())
        else:
            waiter.set_result(job.result())

    def _ended(self) -> None:
        self.pending -= 1

    def _reject(self) -> None:
        self.rejected += 1
        metrics.REJECTED.labels(self.name).inc()

    def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)


@contextmanager
def waiting_for_io() -> Iterator[None]:
    """Around a blocking wait inside a job (a block of a remote original): its CPU slot serves another job
    meanwhile, and is taken back (in turn, behind the jobs already waiting) before the job computes again. Outside
    a job it does nothing."""
    pool: WorkPool | None = getattr(_job, "pool", None)
    holding: _Holding | None = getattr(_job, "holding", None)
    if pool is None or holding is None or not holding.slot or pool._loop is None:
        yield
        return
    holding.slot = False
    _call_soon(pool._loop, pool._give_back_slot)
    try:
        yield
    finally:
        _take_back(pool, holding)


def _take_back(pool: WorkPool, holding: _Holding) -> None:
    """(work thread) Wait for a slot again; at shutdown, go on without one (nobody waits for the job any more)."""
    asked = pool._take_slot(0)
    try:
        taken = asyncio.run_coroutine_threadsafe(asked, pool._loop)
    except RuntimeError:  # the event loop has closed
        asked.close()
        return
    while True:
        try:
            taken.result(timeout=0.25)
        except concurrent.futures.TimeoutError:
            if pool._closed:
                taken.cancel()
                return
        else:
            holding.slot = True
            return


def _call_soon(loop: asyncio.AbstractEventLoop, callback, *args) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # a job that outlived its event loop (the server stopped): nobody waits for it
        pass
