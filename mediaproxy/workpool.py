"""The bounded pool that runs CPU work off the event loop (decode, resize, encode, probe, frame grabs, remuxes).

Pillow and FFmpeg release the GIL, so `threads` jobs compute at once, each holding one CPU slot. Jobs get slots
first come first served; a job waits for one without holding a thread (threads waiting on a lock are GIL and
scheduler traffic that a 2-core machine pays for in every request), and a thread that finishes a job goes straight
on to the next waiting one on the same slot: the event loop only hears of the result (one wake-up a job), it does
not hand slots around. A job that has to wait for I/O (a block of a remote original, fetched by the event loop)
gives its slot up while it waits (`waiting_for_io`), so one slow upstream cannot hold the CPU other requests need;
threads are started as jobs need them, up to one per admitted job, so a job holding a slot always finds one. At
most `threads + queue` jobs are admitted; past that a request is answered 503 at once instead of waiting behind a
queue that only grows, and a job that found no slot within `queue_timeout` is dropped with 503.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from queue import Empty, SimpleQueue
from typing import TypeVar

from . import metrics
from .errors import Overloaded

T = TypeVar("T")
_current = threading.local()  # the job this thread runs, and its pool (see waiting_for_io)


class _Job:
    """An admitted job: what to run, who waits for its answer, and whether it holds a CPU slot."""

    __slots__ = ("function", "args", "loop", "waiter", "started", "holds_slot", "deadline")

    def __init__(self, function: Callable, args: tuple, loop: asyncio.AbstractEventLoop) -> None:
        self.function: Callable | None = function
        self.args: tuple | None = args
        self.loop = loop
        self.waiter: asyncio.Future = loop.create_future()
        self.started = False  # it got a slot: it runs to its end, and settles
        self.holds_slot = False  # now (a running job gives its slot up while it waits for I/O)
        self.deadline = 0.0  # (loop time) while it waits: when it is dropped


class _Return:
    """A running job that gave its slot up for I/O, waiting in line to take one back."""

    __slots__ = ("granted",)

    def __init__(self) -> None:
        self.granted = threading.Event()


class WorkPool:
    def __init__(self, threads: int = 0, queue: int = 64, *, queue_timeout: float = 0.0, name: str = "work") -> None:
        self.name = name
        self.threads = threads or os.cpu_count() or 1  # jobs computing at once
        self.capacity = self.threads + queue
        self.queue_timeout = queue_timeout  # a job that found no slot after this long is dropped (0: never)
        self.pending = 0  # jobs admitted and not settled (queued, computing or waiting for I/O); event loop only
        self.rejected = 0  # refused at the door or dropped from the queue
        self._lock = threading.Lock()  # guards _free and _waiting, which the loop and the work threads share
        self._free = self.threads  # slots nobody holds
        self._waiting: deque[_Job | _Return] = deque()  # for a slot, in arrival order
        self._ready: SimpleQueue[_Job | None] = SimpleQueue()  # jobs holding a slot, for a thread
        self._idle = threading.Semaphore(0)  # threads waiting for a job
        self._threads: list[threading.Thread] = []
        self._expiry: asyncio.TimerHandle | None = None  # one timer for the whole line: its oldest job's deadline
        self._closed = False
        metrics.TALLY.level(metrics.child(metrics.QUEUE, name), lambda: self.pending)

    async def run(self, function: Callable[..., T], *args) -> T:
        if self.pending >= self.capacity:
            self._reject()
            raise Overloaded(f"server busy: {self.pending} jobs in progress, try again shortly", retry_after=1)
        loop = asyncio.get_running_loop()
        job = _Job(function, args, loop)
        self.pending += 1  # counted until the job really ends, even when the requester has gone away
        with self._lock:
            job.started = job.holds_slot = self._free > 0 and not self._waiting
            if job.started:
                self._free -= 1
            else:
                self._waiting.append(job)
        if job.started:
            self._dispatch(job)
        elif self.queue_timeout > 0:
            job.deadline = loop.time() + self.queue_timeout
            if self._expiry is None:
                self._expiry = loop.call_at(job.deadline, self._expire, loop)
        try:
            return await job.waiter
        except asyncio.CancelledError:  # the requester went away: a queued job never runs; a running one computes on
            if self._withdraw(job):
                self._ended()
            raise

    def _withdraw(self, job: _Job) -> bool:
        """Take a job out of the queue; False when it has got a slot already (it runs, and settles)."""
        with self._lock:
            if job.started:
                return False
            if job in self._waiting:
                self._waiting.remove(job)
            return True

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Drop the jobs that waited past their deadline (they queued in deadline order), then wait for the next."""
        self._expiry = None
        now = loop.time()
        with self._lock:
            expired = [job for job in self._waiting if isinstance(job, _Job) and job.deadline <= now]
            for job in expired:
                self._waiting.remove(job)
            following = next((job.deadline for job in self._waiting if isinstance(job, _Job)), None)
        for job in expired:
            self._reject()
            self._ended()
            if not job.waiter.done():
                job.waiter.set_exception(Overloaded(f"server busy: no worker was free within "
                                                    f"{self.queue_timeout:g} s", retry_after=2))
        if following is not None and not self._closed:
            self._expiry = loop.call_at(following, self._expire, loop)

    def _dispatch(self, job: _Job) -> None:
        """(any thread) A job holding a slot, to an idle thread or a new one."""
        self._ready.put(job)
        if self._idle.acquire(blocking=False):
            return
        with self._lock:
            if len(self._threads) < self.capacity:
                thread = threading.Thread(target=self._serve, daemon=True,
                                          name=f"mediaproxy-{self.name}-{len(self._threads)}")
                self._threads.append(thread)
                thread.start()

    def _serve(self) -> None:
        """(work thread) Jobs, one after the other: each one's slot goes straight to the next waiting job."""
        while (job := self._ready.get()) is not None:
            while job is not None:
                job = self._compute(job)

    def _compute(self, job: _Job) -> _Job | None:
        _current.pool, _current.job = self, job
        try:
            outcome = (True, job.function(*job.args))
        except BaseException as error:  # noqa: BLE001 - it is the requester's to see
            outcome = (False, error)
        finally:
            _current.pool = _current.job = None
        job.function = job.args = None  # nothing keeps the inputs (an original's bytes) alive past the job
        if job.holds_slot:
            following = self._pass_slot(going_idle=True)
        else:  # it ended without its slot (shutdown while it waited for I/O)
            following = None
            self._idle.release()
        _call_soon(job.loop, self._settle, job, outcome)
        return following

    def _pass_slot(self, *, going_idle: bool) -> _Job | None:
        """(any thread) A slot given up: to the job that waited longest, which is returned for the caller to run;
        or to a job back from I/O (None: it goes on in its own thread); or free. `going_idle`: the calling thread
        waits for a job if it gets none, and is counted idle before the slot shows free (else a job taking the
        slot at that moment would start a thread of its own)."""
        with self._lock:
            if not self._waiting:
                self._free += 1
                if going_idle:
                    self._idle.release()
                return None
            taker = self._waiting.popleft()
            if isinstance(taker, _Job):
                taker.started = taker.holds_slot = True
                return taker
        taker.granted.set()
        if going_idle:
            self._idle.release()
        return None

    def _settle(self, job: _Job, outcome: tuple[bool, object]) -> None:
        self._ended()
        if job.waiter.done():
            return  # the requester went away
        ok, value = outcome
        if ok:
            job.waiter.set_result(value)
        else:
            job.waiter.set_exception(value)

    def _take_back(self, job: _Job) -> None:
        """(work thread) Wait for a slot again, in line behind the jobs already waiting; at shutdown, go on without
        one (nobody waits for the job any more)."""
        with self._lock:
            if self._free > 0 and not self._waiting:
                self._free -= 1
                job.holds_slot = True
                return
            back = _Return()
            self._waiting.append(back)
        while not back.granted.wait(0.25):
            if self._closed:
                with self._lock:
                    if back in self._waiting:
                        self._waiting.remove(back)
                return
        job.holds_slot = True

    def _ended(self) -> None:
        self.pending -= 1

    def _reject(self) -> None:
        self.rejected += 1
        metrics.REJECTED.labels(self.name).inc()

    def close(self) -> None:
        """(event loop) Jobs not started never will be (their requesters' waits are cancelled); running ones end."""
        self._closed = True
        if self._expiry is not None:
            self._expiry.cancel()
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
        for item in waiting:
            if isinstance(item, _Job):
                item.waiter.cancel()
            else:
                item.granted.set()  # back from I/O: it goes on without a slot
        while True:
            try:
                job = self._ready.get_nowait()
            except Empty:
                break
            if job is not None:
                job.waiter.cancel()
        for _ in self._threads:
            self._ready.put(None)


@contextmanager
def waiting_for_io() -> Iterator[None]:
    """Around a blocking wait inside a job (a block of a remote original): its CPU slot serves another job
    meanwhile, and is taken back (in turn, behind the jobs already waiting) before the job computes again. Outside
    a job it does nothing."""
    pool: WorkPool | None = getattr(_current, "pool", None)
    job: _Job | None = getattr(_current, "job", None)
    if pool is None or job is None or not job.holds_slot:
        yield
        return
    job.holds_slot = False
    following = pool._pass_slot(going_idle=False)
    if following is not None:
        pool._dispatch(following)
    try:
        yield
    finally:
        pool._take_back(job)


def _call_soon(loop: asyncio.AbstractEventLoop, callback, *args) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # a job that outlived its event loop (the server stopped): nobody waits for it
        pass
