"""Bounded pools that run CPU work off the event loop.

Pillow and FFmpeg release the GIL, so threads use every core for decode, resize, encode and probe. A remux loop
runs Python per packet and holds the GIL, so clips are cut in worker processes instead. At most `workers + queue`
jobs are admitted; past that a request is answered 503 at once instead of waiting behind a queue that only grows.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from . import metrics
from .errors import Overloaded, Unprocessable

T = TypeVar("T")


class WorkPool:
    def __init__(self, threads: int = 0, queue: int = 64, *, queue_timeout: float = 0.0,
                 processes: bool = False, name: str = "work") -> None:
        self.name = name
        self.threads = threads or os.cpu_count() or 1
        self.capacity = self.threads + queue
        self.queue_timeout = queue_timeout  # a job still waiting for a worker after this long is dropped (0: never)
        self.pending = 0  # jobs admitted and not finished (queued or running)
        self.rejected = 0  # refused at the door or dropped from the queue
        self._processes = processes
        self._executor = self._new_executor()

    def _new_executor(self) -> Executor:
        if self._processes:  # forkserver: never fork a process that already runs threads
            return ProcessPoolExecutor(self.threads, mp_context=multiprocessing.get_context("forkserver"),
                                       initializer=_background_priority)
        return ThreadPoolExecutor(self.threads, thread_name_prefix="mediaproxy-work")

    async def run(self, function: Callable[..., T], *args) -> T:
        if self.pending >= self.capacity:
            self.rejected += 1
            metrics.REJECTED.labels(self.name).inc()
            raise Overloaded(f"server busy: {self.pending} jobs in progress, try again shortly", retry_after=1)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        try:
            job = self._executor.submit(function, *args)
        except BrokenProcessPool:  # a worker process died (a crash, the OOM killer): start afresh
            self._executor = self._new_executor()
            job = self._executor.submit(function, *args)
        self.pending += 1  # counted until the job really ends, even when the requester has gone away
        metrics.QUEUE.labels(self.name).inc()
        expiry = loop.call_later(self.queue_timeout, self._expire, job, waiter) if self.queue_timeout > 0 else None
        # one wake-up of the event loop per job: the result and the bookkeeping travel together
        job.add_done_callback(lambda _: _call_soon(loop, self._settle, job, waiter, expiry))
        try:
            return await waiter
        except asyncio.CancelledError:
            job.cancel()  # not started yet: it never runs
            raise

    def _settle(self, job: Future, waiter: asyncio.Future, expiry: asyncio.TimerHandle | None) -> None:
        self.pending -= 1
        metrics.QUEUE.labels(self.name).dec()
        if expiry is not None:
            expiry.cancel()
        if waiter.done():
            return  # the requester went away, or the job was dropped from the queue
        if job.cancelled():
            waiter.cancel()
        elif isinstance(job.exception(), BrokenProcessPool):
            waiter.set_exception(Unprocessable("processing this file crashed its worker process"))
        elif job.exception() is not None:
            waiter.set_exception(job.exception())
        else:
            waiter.set_result(job.result())

    def _expire(self, job: Future, waiter: asyncio.Future) -> None:
        """Still queued after queue_timeout: dropped (a running job cannot be cancelled: it is waited for)."""
        if not waiter.done() and job.cancel():
            self.rejected += 1
            metrics.REJECTED.labels(self.name).inc()
            waiter.set_exception(Overloaded(f"server busy: no worker was free within {self.queue_timeout:g} s",
                                            retry_after=2))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _call_soon(loop: asyncio.AbstractEventLoop, callback, *args) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # a job that outlived its event loop (the server stopped): nobody waits for it
        pass


def _background_priority() -> None:
    """Clip processes yield the CPU to thumbnails, whose clients wait on a picture (a remux is short anyway)."""
    os.nice(5)
