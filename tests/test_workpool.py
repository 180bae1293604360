"""WorkPool: CPU work runs on a bounded thread pool; past `threads + queue` admitted jobs a request gets 503 at once."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mediaproxy.errors import MediaProxyError, Overloaded
from mediaproxy.workpool import WorkPool

from .conftest import until

RELEASE_TIMEOUT = 2.0  # a blocked worker gives up after this, so a failing test cannot hang the run


@pytest.fixture
def make_pool():
    pools: list[WorkPool] = []

    def make(threads: int = 0, queue: int = 64) -> WorkPool:
        pool = WorkPool(threads, queue)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


class Gate:
    """A job that signals when it starts and blocks until released."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()

    def job(self, value):
        self.started.set()
        try:
            if not self.release.wait(RELEASE_TIMEOUT):
                raise TimeoutError("test never released the job")
            return value
        finally:
            self.finished.set()

    async def wait_started(self) -> None:
        await until(self.started.is_set)

    async def occupy(self, pool: WorkPool, value) -> asyncio.Task:
        """This job on `pool` (a task of its pool.run), once it runs."""
        task = asyncio.create_task(pool.run(self.job, value))
        await self.wait_started()
        return task


async def test_runs_function_in_a_worker_thread_and_returns_its_value(make_pool):
    pool = make_pool(threads=2, queue=2)

    def work(a, b):
        return a + b, threading.current_thread().name, threading.get_ident()

    total, thread_name, ident = await pool.run(work, 2, 3)
    assert total == 5
    assert ident != threading.get_ident()
    assert thread_name.startswith("mediaproxy-work")
    await until(lambda: pool.pending == 0)
    assert pool.rejected == 0


def test_threads_default_to_cpu_count_and_capacity_adds_queue():
    pool = WorkPool(threads=3, queue=5)
    try:
        assert pool.threads == 3
        assert pool.capacity == 8
    finally:
        pool.close()
    default = WorkPool(queue=1)
    try:
        assert default.threads >= 1
        assert default.capacity == default.threads + 1
    finally:
        default.close()


async def test_exception_in_the_job_propagates_and_pending_returns_to_zero(make_pool):
    pool = make_pool(threads=1, queue=1)

    def fail():
        raise ValueError("bad frame")

    with pytest.raises(ValueError, match="bad frame"):
        await pool.run(fail)
    await until(lambda: pool.pending == 0)
    assert await pool.run(lambda: "still works") == "still works"


async def test_third_job_is_rejected_with_overloaded_while_first_two_complete(make_pool):
    pool = make_pool(threads=1, queue=1)
    gate = Gate()
    first = asyncio.create_task(pool.run(gate.job, "first"))
    second = asyncio.create_task(pool.run(gate.job, "second"))
    await gate.wait_started()
    assert pool.pending == 2  # one running, one queued

    ran_third = threading.Event()
    with pytest.raises(Overloaded) as caught:
        await pool.run(ran_third.set)
    error = caught.value
    assert isinstance(error, MediaProxyError)
    assert error.status == 503
    assert error.headers["Retry-After"] == "1"
    assert "\n" not in error.message
    assert pool.rejected == 1
    assert pool.pending == 2  # a rejected job is not admitted

    gate.release.set()
    assert await asyncio.wait_for(asyncio.gather(first, second), RELEASE_TIMEOUT) == ["first", "second"]
    await until(lambda: pool.pending == 0)
    assert not ran_third.is_set()
    # capacity is free again
    assert await pool.run(lambda: 42) == 42
    await until(lambda: pool.pending == 0)
    assert pool.rejected == 1


async def test_rejection_happens_at_once_not_after_waiting(make_pool):
    pool = make_pool(threads=1, queue=0)
    gate = Gate()
    running = await gate.occupy(pool, 1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Overloaded):
        await pool.run(lambda: None)
    assert loop.time() - started < 0.1
    gate.release.set()
    assert await running == 1
    await until(lambda: pool.pending == 0)


async def test_cancelled_waiter_keeps_counting_until_the_thread_finishes(make_pool):
    pool = make_pool(threads=1, queue=0)
    gate = Gate()
    waiter = await gate.occupy(pool, "orphan")

    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.sleep(0.02)  # a pool that let go of the job on cancellation would show it within this window
    assert pool.pending == 1  # the thread is still busy with the job
    assert not gate.finished.is_set()
    with pytest.raises(Overloaded):  # and it still occupies the pool's capacity
        await pool.run(lambda: None)

    gate.release.set()
    await until(gate.finished.is_set)
    await until(lambda: pool.pending == 0)
    assert await pool.run(lambda: "free") == "free"
    await until(lambda: pool.pending == 0)


async def test_cancelled_waiter_of_a_queued_job_frees_its_slot_and_the_job_never_runs(make_pool):
    pool = make_pool(threads=1, queue=1)
    gate = Gate()
    running = await gate.occupy(pool, "running")
    ran = threading.Event()
    queued = asyncio.create_task(pool.run(ran.set))
    await until(lambda: pool.pending == 2)

    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    await until(lambda: pool.pending == 1)

    gate.release.set()
    assert await running == "running"
    await until(lambda: pool.pending == 0)  # settled: a job that ran would have set `ran` before this
    assert not ran.is_set()


async def test_many_jobs_within_capacity_all_run(make_pool):
    pool = make_pool(threads=4, queue=16)
    results = await asyncio.gather(*(pool.run(pow, n, 2) for n in range(20)))
    assert results == [n * n for n in range(20)]
    await until(lambda: pool.pending == 0)
    assert pool.rejected == 0


async def test_jobs_that_never_wait_for_io_need_no_more_threads_than_slots(make_pool):
    pool = make_pool(threads=1, queue=100)
    for _ in range(5):  # bursts, with the pool going idle between them
        assert await asyncio.gather(*(pool.run(pow, n, 2) for n in range(40))) == [n * n for n in range(40)]
        await until(lambda: pool.pending == 0)
    assert len(pool._threads) == 1


async def test_jobs_wait_for_a_slot_without_a_thread_and_run_in_arrival_order(make_pool):
    pool = make_pool(threads=1, queue=8)
    gate = Gate()
    running = await gate.occupy(pool, "first")
    order: list[int] = []
    queued = [asyncio.create_task(pool.run(order.append, n)) for n in range(5)]
    await until(lambda: pool.pending == 6)
    assert len(pool._threads) == 1  # the queued jobs hold no thread (one is started a running job)
    gate.release.set()
    assert await running == "first"
    await asyncio.gather(*queued)
    assert order == [0, 1, 2, 3, 4]
    await until(lambda: pool.pending == 0)


async def test_a_job_past_the_queue_timeout_is_dropped_and_its_place_freed():
    pool = WorkPool(1, 4, queue_timeout=0.05)
    try:
        gate = Gate()
        running = await gate.occupy(pool, "long")
        with pytest.raises(Overloaded):
            await pool.run(lambda: "late")
        assert pool.pending == 1 and pool.rejected == 1
        gate.release.set()
        assert await running == "long"
        assert await pool.run(lambda: "next") == "next"  # the slot came back, and nobody else holds it
        await until(lambda: pool.pending == 0)
    finally:
        pool.close()


async def test_queued_jobs_are_dropped_each_at_its_own_deadline():
    pool = WorkPool(1, 4, queue_timeout=0.3)
    try:
        gate = Gate()
        running = await gate.occupy(pool, "long")
        loop = asyncio.get_running_loop()
        first = asyncio.create_task(pool.run(lambda: "first"))
        await until(lambda: pool.pending == 2)
        await asyncio.sleep(0.15)  # the second job queues half a timeout later
        second = asyncio.create_task(pool.run(lambda: "second"))
        await until(lambda: pool.pending == 3)
        with pytest.raises(Overloaded):
            await first
        dropped_first = loop.time()
        assert not second.done() and pool.pending == 2  # its own deadline is still ahead
        with pytest.raises(Overloaded):
            await second
        assert loop.time() - dropped_first >= 0.1
        assert pool.rejected == 2 and pool.pending == 1
        gate.release.set()
        assert await running == "long"
        await until(lambda: pool.pending == 0)
    finally:
        pool.close()


async def test_jobs_parked_on_io_and_requesters_going_away_leave_the_pool_whole():
    """Many jobs at once: some give their slot up around a blocking wait (as a remote original's block), some lose
    their requester while queued or running; every other one gets its own answer, at most `threads` compute at
    once, and afterwards nothing is counted, held or queued."""
    import random
    import time

    from mediaproxy.workpool import waiting_for_io

    pool = WorkPool(2, 60)
    computing, most = 0, 0
    lock = threading.Lock()

    def job(number: int, parks: bool) -> int:
        nonlocal computing, most
        with lock:
            computing += 1
            most = max(most, computing)
        try:
            time.sleep(0.002)  # stands for CPU work holding the slot
            if parks:
                with lock:
                    computing -= 1
                with waiting_for_io():
                    time.sleep(0.01)
                with lock:
                    computing += 1
                    most = max(most, computing)
            return number * number
        finally:
            with lock:
                computing -= 1

    try:
        rng = random.Random(15)
        tasks = [asyncio.create_task(pool.run(job, number, rng.random() < 0.4)) for number in range(60)]
        leaving = [task for task in tasks if rng.random() < 0.25]
        for index, task in enumerate(leaving):
            if index % 2:
                await asyncio.sleep(0.003)  # some leave at once, some after their job may have started
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for number, (task, result) in enumerate(zip(tasks, results)):
            if task in leaving and isinstance(result, asyncio.CancelledError):
                continue
            assert result == number * number
        await until(lambda: pool.pending == 0)
        assert most <= 2
        assert pool._free == 2 and not pool._waiting
        assert await pool.run(pow, 3, 2) == 9
    finally:
        pool.close()
