"""The bounded pool that runs CPU work off the event loop (decode, resize, encode, probe, frame grabs, remuxes).

Pillow and FFmpeg release the GIL, so `threads` jobs compute at once, each holding one CPU slot. A job that has to
wait for I/O (a block of a remote original, fetched by the event loop) gives its slot up while it waits
(`waiting_for_io`), so one slow upstream cannot hold the CPU other requests need; a few spare threads carry such
waiting jobs. At most `threads + queue` jobs are admitted; past that a request is answered 503 at once instead of
waiting behind a queue that only grows, and a job that found no slot within `queue_timeout` is dropped with 503.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from . import metrics
from .errors import Overloaded

T = TypeVar("T")
WAITING_THREADS = 8  # threads beyond the CPU slots, for jobs parked on I/O
_SLOT_POLL_SECONDS = 0.05  # a job waiting for a slot looks this often whether it is still wanted
_job = threading.local()  # the slots of the pool whose job this thread runs (see waiting_for_io)


class WorkPool:
    def __init__(self, threads: int = 0, queue: int = 64, *, queue_timeout: float = 0.0, name: str = "work") -> None:
        self.name = name
        self.threads = threads or os.cpu_count() or 1  # jobs computing at once
        self.capacity = self.threads + queue
        self.queue_timeout = queue_timeout  # a job that found no slot after this long is dropped (0: never)
        self.pending = 0  # jobs admitted and not finished (queued, computing or waiting for I/O)
        self.rejected = 0  # refused at the door or dropped from the queue
        self._slots = threading.BoundedSemaphore(self.threads)
        self._executor = ThreadPoolExecutor(self.threads + WAITING_THREADS, thread_name_prefix="mediaproxy-work")

    async def run(self, function: Callable[..., T], *args) -> T:
        if self.pending >= self.capacity:
            self._reject()
            raise Overloaded(f"server busy: {self.pending} jobs in progress, try again shortly", retry_after=1)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        deadline = time.monotonic() + self.queue_timeout if self.queue_timeout > 0 else None
        abandoned = threading.Event()
        job = self._executor.submit(self._compute, function, args, deadline, abandoned)
        self.pending += 1  # counted until the job really ends, even when the requester has gone away
        metrics.QUEUE.labels(self.name).inc()
        expiry = loop.call_later(self.queue_timeout, self._expire, job, waiter) if deadline is not None else None
        # one wake-up of the event loop per job: the result and the bookkeeping travel together
        job.add_done_callback(lambda _: _call_soon(loop, self._settle, job, waiter, expiry))
        try:
            return await waiter
        except asyncio.CancelledError:
            job.cancel()  # not started yet: it never runs
            abandoned.set()  # waiting for a slot: it gives up
            raise

    def _compute(self, function: Callable[..., T], args: tuple, deadline: float | None,
                 abandoned: threading.Event) -> T | None:
        """(work thread) the job, holding a CPU slot; nothing when its requester went away first."""
        while not self._slots.acquire(timeout=_SLOT_POLL_SECONDS):
            if abandoned.is_set():
                return None
            if deadline is not None and time.monotonic() > deadline:
                self._reject()
                raise Overloaded(f"server busy: no worker was free within {self.queue_timeout:g} s", retry_after=2)
        if abandoned.is_set():
            self._slots.release()
            return None
        _job.slots = self._slots
        try:
            return function(*args)
        finally:
            _job.slots = None
            self._slots.release()

    def _settle(self, job: Future, waiter: asyncio.Future, expiry: asyncio.TimerHandle | None) -> None:
        self.pending -= 1
        metrics.QUEUE.labels(self.name).dec()
        if expiry is not None:
            expiry.cancel()
        if waiter.done():
            return  # the requester went away, or the job was dropped from the queue
        if job.cancelled():
            waiter.cancel()
        elif job.exception() is not None:
            waiter.set_exception(job.exception())
        else:
            waiter.set_result(job.result())

    def _expire(self, job: Future, waiter: asyncio.Future) -> None:
        """Still in the queue (not even waiting for a slot) after queue_timeout: dropped."""
        if not waiter.done() and job.cancel():
            self._reject()
            waiter.set_exception(Overloaded(f"server busy: no worker was free within {self.queue_timeout:g} s",
                                            retry_after=2))

    def _reject(self) -> None:
        self.rejected += 1
        metrics.REJECTED.labels(self.name).inc()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@contextmanager
def waiting_for_io() -> Iterator[None]:
    """Around a blocking wait inside a job (a block of a remote original): its CPU slot serves another job
    meanwhile, and is taken back before the job computes again. Outside a job it does nothing."""
    slots = getattr(_job, "slots", None)
    if slots is None:
        yield
        return
    _job.slots = None
    slots.release()
    try:
        yield
    finally:
        slots.acquire()
        _job.slots = slots


def _call_soon(loop: asyncio.AbstractEventLoop, callback, *args) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # a job that outlived its event loop (the server stopped): nobody waits for it
        pass
