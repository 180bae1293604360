"""The caches: DiskCache (self-checking entry files in namespaces, one sqlite index and one budget per namespace for
all the node's processes), MemoryCache, SingleFlight.

DiskCache tests use real files under tmp_path; "a restart" or "another worker" is a second DiskCache instance on
the same directory (and a real second process where the kernel's per-process locks are the point). The entry
format is read independently of the code, from its documented layout: body, JSON header, the header's length in
4 big-endian bytes, b"MPB2".
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mediaproxy.cache.disk import DiskCache
from mediaproxy.cache.memory import MemoryCache
from mediaproxy.cache.singleflight import SingleFlight

from .conftest import cache_entries, tmpfs, until

MAGIC = b"MPB2"
NO_SUCH_PID = 4_194_304  # PID_MAX_LIMIT: Linux never hands out this pid
BIG = 300_000  # above the size under which a body's digest is checked on every read


# ---------------------------------------------------------------------------------------------------- helpers


def budgets(originals: int = 1 << 30, results: int = 1 << 30, indexes: int = 1 << 30) -> dict[str, int]:
    return {"originals": originals, "results": results, "indexes": indexes}


async def started(root: Path, **sizes) -> DiskCache:
    cache = DiskCache(root, budgets(**sizes))
    await cache.start()
    return cache


def entry_files(root: Path) -> list[Path]:
    return sorted(path for path in (root / "data").glob("*/*") if path.is_file())


def index_rows(root: Path) -> dict[str, tuple[str, int]]:
    with sqlite3.connect(root / "index.sqlite") as db:
        return {name: (namespace, size) for name, namespace, size in
                db.execute("SELECT name, namespace, size FROM entries")}


def split_entry(raw: bytes) -> tuple[dict, bytes]:
    length = int.from_bytes(raw[-8:-4], "big")
    header = json.loads(raw[-8 - length:-8])
    return header, raw[:header["size"]]


def file_of(root: Path, key: str) -> Path:
    [entry] = [entry for entry in cache_entries(root) if entry["key"] == key]
    return entry["path"]


def body(size: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(str(seed).encode()).digest(size)


async def flushed(cache: DiskCache) -> None:
    """Recency reaches the index in batches: write this process's batch now."""
    await cache._run(cache._write_recency)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# ---------------------------------------------------------------------------------------------------- entries


async def test_an_entry_round_trips_with_its_meta(root):
    cache = await started(root)
    assert await cache.write("results", [("k1", b"picture", {"content_type": "image/jpeg"})])
    found = await cache.read("results", "k1")
    assert found.body == b"picture" and found.meta == {"content_type": "image/jpeg"}
    assert await cache.read("results", "other") is None
    assert await cache.read("originals", "k1") is None  # namespaces are apart
    await cache.close()


async def test_an_entry_file_is_body_then_trailer(root):
    cache = await started(root)
    await cache.write("indexes", [("clip|1", b"\x00moov...", {"start_ms": 1000})])
    [path] = entry_files(root)
    raw = path.read_bytes()
    assert raw.startswith(b"\x00moov...") and raw.endswith(MAGIC)
    header, found = split_entry(raw)
    assert found == b"\x00moov..."
    assert header == {"ns": "indexes", "key": "clip|1", "size": 8, "meta": {"start_ms": 1000},
                      "digest": hashlib.blake2b(found, digest_size=16).hexdigest()}
    assert path.name == hashlib.sha256(b"indexes|clip|1").hexdigest() and path.parent.name == path.name[:2]
    await cache.close()


async def test_a_write_replaces_an_entry_and_the_index_counts_it_once(root):
    cache = await started(root)
    await cache.write("results", [("k", b"a" * 100, {})])
    await cache.write("results", [("k", b"b" * 50, {})])
    assert (await cache.read("results", "k")).body == b"b" * 50
    [path] = entry_files(root)
    assert await cache.total("results") == path.stat().st_size
    assert list(index_rows(root).values()) == [("results", path.stat().st_size)]
    await cache.close()


async def test_open_file_gives_the_body_at_the_start_of_a_checked_file(root):
    cache = await started(root)
    data = body(BIG)
    await cache.write("results", [("clip", data, {"start_ms": 0})])
    found = await cache.open_file("results", "clip")
    assert found.size == BIG and found.meta == {"start_ms": 0}
    assert found.path.read_bytes()[:found.size] == data
    assert await cache.open_file("results", "nothing") is None
    await cache.close()


async def test_write_file_lets_a_producer_write_the_body(root):
    cache = await started(root)
    seen = []

    def produce(target: Path) -> dict:
        target.write_bytes(b"remuxed")
        return {"start_ms": 1500}

    async def runner(function, *args):
        seen.append(function)
        return function(*args)

    found = await cache.write_file("results", "clip", produce, run=runner, owner="100/0_v/original.mp4|x")
    assert seen == [produce]
    assert found.meta == {"start_ms": 1500} and found.path.read_bytes()[:found.size] == b"remuxed"
    assert (await cache.read("results", "clip")).body == b"remuxed"
    assert not list((root / "tmp").iterdir())
    await cache.close()


async def test_a_failing_producer_stores_nothing(root):
    cache = await started(root)

    def produce(target: Path) -> dict:
        target.write_bytes(b"half")
        raise RuntimeError("the remux failed")

    with pytest.raises(RuntimeError):
        await cache.write_file("results", "clip", produce)
    assert await cache.read("results", "clip") is None
    assert not entry_files(root) and not list((root / "tmp").iterdir()) and not index_rows(root)
    await cache.close()


def _damages():
    def flip(raw: bytes) -> bytes:
        return bytes([raw[0] ^ 1]) + raw[1:]

    def truncate(raw: bytes) -> bytes:
        return raw[:len(raw) // 2]

    def no_magic(raw: bytes) -> bytes:
        return raw[:-4] + b"XXXX"

    def lying_length(raw: bytes) -> bytes:
        return raw[:-8] + (2 ** 31).to_bytes(4, "big") + MAGIC

    def garbage_header(raw: bytes) -> bytes:
        header, found = split_entry(raw)
        junk = b"{not json" + b" " * 10
        return found + junk + len(junk).to_bytes(4, "big") + MAGIC

    def other_key(raw: bytes) -> bytes:
        header, found = split_entry(raw)
        encoded = json.dumps({**header, "key": "stolen"}).encode()
        return found + encoded + len(encoded).to_bytes(4, "big") + MAGIC

    def wrong_size(raw: bytes) -> bytes:
        header, found = split_entry(raw)
        encoded = json.dumps({**header, "size": header["size"] - 1}).encode()
        return found + encoded + len(encoded).to_bytes(4, "big") + MAGIC

    return [flip, truncate, no_magic, lying_length, garbage_header, other_key, wrong_size, lambda raw: b""]


@pytest.mark.parametrize("damage", _damages())
async def test_a_damaged_entry_is_a_miss_and_is_removed(root, damage):
    cache = await started(root)
    await cache.write("results", [("k", body(1000), {})])
    [path] = entry_files(root)
    path.write_bytes(damage(path.read_bytes()))
    assert await cache.read("results", "k") is None
    assert not path.exists()
    await until(lambda: not index_rows(root))
    assert await cache.total("results") == 0
    await cache.close()


async def test_a_big_body_is_checked_once_per_process_and_a_fresh_process_catches_damage(root):
    cache = await started(root)
    await cache.write("originals", [("block", body(BIG), {})])
    assert (await cache.read("originals", "block")).body == body(BIG)
    path = file_of(root, "block")
    stat = path.stat()
    raw = bytearray(path.read_bytes())
    raw[1000] ^= 0xFF  # a disk fault: same size, same mtime
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path).st_ino == stat.st_ino
    assert (await cache.read("originals", "block")) is not None  # checked once already: trusted in this process
    fresh = await started(root)
    assert await fresh.read("originals", "block") is None  # a restart checks it again
    assert not path.exists()
    await cache.close()
    await fresh.close()


async def test_a_small_body_is_checked_on_every_read(root):
    cache = await started(root)
    await cache.write("results", [("thumb", b"x" * 1000, {})])
    assert await cache.read("results", "thumb") is not None
    path = file_of(root, "thumb")
    raw = bytearray(path.read_bytes())
    raw[10] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert await cache.read("results", "thumb") is None
    await cache.close()


async def test_discard_and_drop_owned(root):
    cache = await started(root)
    await cache.write("originals", [(f"block{i}", b"x" * 10, {}) for i in range(3)], owner="100/0_a/o.mp4|v1")
    await cache.write("originals", [("other", b"y" * 10, {})], owner="100/0_b/o.mp4|v1")
    await cache.write("results", [("thumb", b"z", {})])
    assert await cache.drop_owned("100/0_a/o.mp4|v1") == 3
    assert [await cache.read("originals", f"block{i}") for i in range(3)] == [None] * 3
    assert await cache.read("originals", "other") is not None
    await cache.discard("results", "thumb")
    assert await cache.read("results", "thumb") is None
    assert len(entry_files(root)) == 1 and len(index_rows(root)) == 1
    await cache.close()


async def test_a_batch_of_results_of_many_originals_is_filed_under_each_one(root):
    """The results written behind the responses go in one batch whatever originals they come from; each stays
    filed under its own, so dropping one original's reaches only its results."""
    cache = await started(root)
    owners = [f"100/0_{letter}/original.jpg|v1" for letter in "abc"]
    assert await cache.write_owned("results", [(f"thumb of {owner}", owner.encode(), {"n": index}, owner)
                                              for index, owner in enumerate(owners)])
    assert len(entry_files(root)) == 3 and len(index_rows(root)) == 3
    assert await cache.drop_owned(owners[1]) == 1
    assert await cache.read("results", f"thumb of {owners[1]}") is None
    for index in (0, 2):
        found = await cache.read("results", f"thumb of {owners[index]}")
        assert found is not None and found.body == owners[index].encode() and found.meta == {"n": index}
    await cache.close()


# ---------------------------------------------------------------------------------------------------- budgets


async def test_each_namespace_keeps_its_own_budget(root):
    cache = await started(root, originals=10_000, results=1_000_000)
    await cache.write("results", [("thumb", b"t" * 5000, {})])
    for index in range(6):
        await cache.write("originals", [(f"block{index}", b"b" * 3000, {})])
    total = await cache.total("originals")
    assert total <= 10_000
    assert await cache.read("originals", "block5") is not None  # the newest stays
    assert await cache.read("originals", "block0") is None  # the oldest went
    assert await cache.read("results", "thumb") is not None  # another namespace is not touched
    assert total == sum(path.stat().st_size for path in entry_files(root)) - file_of(root, "thumb").stat().st_size
    await cache.close()


async def test_a_read_makes_an_entry_recent_for_every_worker(root):
    worker = await started(root, originals=12_000)
    other = await started(root, originals=12_000)
    for index in range(3):
        await worker.write("originals", [(f"block{index}", b"b" * 3000, {})])
    assert await other.read("originals", "block0") is not None  # the other worker reads the oldest
    await flushed(other)
    await worker.write("originals", [("block3", b"b" * 3000, {})])  # over the budget
    assert await worker.read("originals", "block0") is not None  # read recently: kept
    assert await worker.read("originals", "block1") is None  # least recently used: gone
    await worker.close()
    await other.close()


async def test_two_workers_share_one_budget(root):
    first = await started(root, originals=20_000)
    second = await started(root, originals=20_000)
    for index in range(10):
        await (first if index % 2 else second).write("originals", [(f"block{index}", b"x" * 3000, {})])
    on_disk = sum(path.stat().st_size for path in entry_files(root))
    assert on_disk <= 20_000
    assert on_disk == await first.total("originals") == await second.total("originals")
    assert (await second.read("originals", "block9")).body == b"x" * 3000  # written by the other
    await first.close()
    await second.close()


async def test_a_new_entry_larger_than_the_budget_is_kept_until_the_next_write(root):
    cache = await started(root, results=1000)
    await cache.write("results", [("big", b"x" * 5000, {})])
    assert await cache.read("results", "big") is not None  # its writer is about to use it
    await cache.write("results", [("next", b"y" * 100, {})])
    assert await cache.read("results", "big") is None
    await cache.close()


# ---------------------------------------------------------------------------------------------------- start-up


async def test_a_restart_finds_the_entries_and_their_recency(root):
    cache = await started(root, originals=12_000)
    for index in range(3):
        await cache.write("originals", [(f"block{index}", b"b" * 3000, {})])
    assert await cache.read("originals", "block0") is not None
    await cache.close()  # writes the recency it had not written yet
    restarted = await started(root, originals=12_000)
    await restarted.write("originals", [("block3", b"b" * 3000, {})])
    assert await restarted.read("originals", "block0") is not None
    assert await restarted.read("originals", "block1") is None
    await restarted.close()


async def test_start_removes_leftovers_of_dead_writers_and_keeps_live_ones(root):
    (root / "tmp").mkdir(parents=True)
    dead = root / "tmp" / f"{NO_SUCH_PID}-abc.part"
    live = root / "tmp" / f"{os.getppid()}-abc.part"
    dead.write_bytes(b"half a block")
    live.write_bytes(b"being written")
    cache = await started(root)
    assert not dead.exists() and live.exists()
    await cache.close()


async def test_start_adopts_files_the_index_lost_and_drops_rows_without_files(root):
    cache = await started(root)
    await cache.write("results", [("kept", b"k" * 100, {}), ("gone", b"g" * 100, {})])
    await cache.close()
    file_of(root, "gone").unlink()
    (root / "index.sqlite").unlink()  # the index lost (with its -wal)
    for suffix in ("-wal", "-shm"):
        Path(f"{root / 'index.sqlite'}{suffix}").unlink(missing_ok=True)
    (root / "scanned").unlink()
    junk = root / "data" / "ab" / ("ab" + "0" * 62)
    junk.parent.mkdir(parents=True, exist_ok=True)
    junk.write_bytes(b"not an entry")
    restarted = await started(root)
    assert (await restarted.read("results", "kept")).body == b"k" * 100
    assert list(index_rows(root).values()) == [("results", file_of(root, "kept").stat().st_size)]
    assert not junk.exists()
    await restarted.close()


async def test_a_damaged_index_is_rebuilt_from_the_files(root):
    cache = await started(root)
    await cache.write("results", [("kept", b"k" * 100, {})])
    await cache.close()
    (root / "index.sqlite").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{root / 'index.sqlite'}{suffix}").unlink(missing_ok=True)
    (root / "scanned").unlink()
    restarted = await started(root)
    assert (await restarted.read("results", "kept")).body == b"k" * 100
    assert len(index_rows(root)) == 1
    await restarted.close()


async def test_start_shrinks_a_cache_found_over_its_budget(root):
    cache = await started(root)
    for index in range(5):
        await cache.write("originals", [(f"block{index}", b"b" * 3000, {})])
    await cache.close()
    (root / "scanned").unlink()
    smaller = await started(root, originals=7000)
    assert await smaller.total("originals") <= 7000
    assert await smaller.read("originals", "block4") is not None
    await smaller.close()


# ---------------------------------------------------------------------------------------------------- shared facts


async def test_located_facts_are_shared_and_forgotten_by_prefix(root):
    first = await started(root)
    second = await started(root)
    await first.remember_located("100/0_a/None|None|None", {"identity": "v1"}, 1234.5)
    await first.remember_located("100/0_b/None|None|None", {"identity": "v9"}, 1.0)
    assert await second.located("100/0_a/None|None|None") == ({"identity": "v1"}, 1234.5)
    await second.forget_located("100/0_a/")
    assert await first.located("100/0_a/None|None|None") is None
    assert await first.located("100/0_b/None|None|None") is not None
    await first.close()
    await second.close()


_HOLD_LOCK = """
import asyncio, sys
from pathlib import Path
from mediaproxy.cache.disk import DiskCache

async def main():
    cache = DiskCache(Path(sys.argv[1]), {})
    await cache.start()
    async with cache.exclusive("block|1", 5) as got:
        print("held" if got else "not held", flush=True)
        sys.stdin.readline()
    await cache.close()

asyncio.run(main())
"""


async def test_exclusive_is_one_holder_per_node_and_a_dead_holder_frees_it(root):
    cache = await started(root)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert await asyncio.to_thread(holder.stdout.readline) == "held\n"
        async with cache.exclusive("block|1", 0.2) as got:
            assert not got  # another process holds it: waited, then went on without it
        async with cache.exclusive("block|2", 0.2) as got:
            assert got  # another key is free
        holder.kill()  # kill -9: the kernel releases its lock
        holder.wait()
        async with cache.exclusive("block|1", 5) as got:
            assert got
    finally:
        holder.kill()
        holder.wait()
    await cache.close()


# ---------------------------------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MB tmpfs: a disk that really fills up."""
    with tmpfs(tmp_path / "small", "1m") as mount:
        yield mount


async def test_a_full_disk_refuses_writes_without_errors_and_reports_degraded(small_disk, caplog):
    cache = await started(small_disk / "cache")
    assert cache.degraded is None
    assert await cache.write("results", [("small", b"s" * 1000, {})])
    assert not await cache.write("originals", [("block", b"x" * 2_000_000, {})])  # more than the disk holds
    assert "No space left" in cache.degraded
    assert await cache.read("originals", "block") is None
    assert (await cache.read("results", "small")).body == b"s" * 1000  # what is there still serves
    assert not list((small_disk / "cache" / "tmp").iterdir())  # the half-written file is gone
    for _ in range(3):
        await cache.write("originals", [("block", b"x" * 2_000_000, {})])
    warnings = [record for record in caplog.records if "serving without caching" in record.getMessage()]
    assert len(warnings) == 1  # logged once a minute, not per write
    await cache.close()


# ---------------------------------------------------------------------------------------------------- MemoryCache


def test_memory_cache_is_bounded_by_bytes():
    cache: MemoryCache[bytes] = MemoryCache(max_bytes=100, item_limit=100)
    cache.put("a", b"a" * 40)
    cache.put("b", b"b" * 40)
    assert cache.current_bytes == 80
    cache.put("c", b"c" * 40)
    assert cache.current_bytes == 80
    assert cache.get("a") is None
    assert cache.get("b") == b"b" * 40 and cache.get("c") == b"c" * 40


def test_memory_cache_evicts_least_recently_used():
    cache: MemoryCache[bytes] = MemoryCache(max_bytes=100, item_limit=100)
    cache.put("a", b"a" * 30)
    cache.put("b", b"b" * 30)
    cache.put("c", b"c" * 30)
    assert cache.get("a") == b"a" * 30  # a becomes the most recent
    cache.put("d", b"d" * 30)
    assert cache.get("b") is None
    assert cache.get("c") == b"c" * 30  # order now, least recent first: a, d, c
    cache.put("e", b"e" * 30)
    assert cache.get("a") is None
    assert cache.get("d") == b"d" * 30 and cache.get("c") == b"c" * 30 and cache.get("e") == b"e" * 30
    assert cache.current_bytes == 90


def test_memory_cache_item_limit():
    cache: MemoryCache[bytes] = MemoryCache(max_bytes=100, item_limit=30)
    cache.put("small", b"s" * 30)
    cache.put("big", b"b" * 31)
    assert cache.get("small") == b"s" * 30
    assert cache.get("big") is None
    assert cache.current_bytes == 30
    # the limit never exceeds the whole budget, so an oversized value is skipped rather than an error
    capped: MemoryCache[bytes] = MemoryCache(max_bytes=50, item_limit=1000)
    assert capped.item_limit == 50
    capped.put("x", b"x" * 60)
    assert capped.get("x") is None and capped.current_bytes == 0


def test_memory_cache_get_and_put():
    cache: MemoryCache[bytes] = MemoryCache(max_bytes=100, item_limit=100)
    assert cache.get("a") is None
    cache.put("a", b"value")
    assert cache.get("a") == b"value"
    assert cache.get("b") is None


def test_memory_cache_discard_and_custom_size():
    cache: MemoryCache[list[int]] = MemoryCache(max_bytes=10, item_limit=10, size_of=sum)
    cache.put("a", [3, 3])
    cache.put("b", [4])
    assert cache.current_bytes == 10
    cache.discard("a")
    cache.discard("missing")
    assert cache.get("a") is None and cache.current_bytes == 4
    cache.put("c", [5, 1])
    assert cache.current_bytes == 10 and cache.get("b") == [4]


def test_memory_cache_put_of_an_oversized_value_does_not_leave_the_old_one():
    cache: MemoryCache[bytes] = MemoryCache(max_bytes=100, item_limit=30)
    cache.put("k", b"old")
    cache.put("k", b"n" * 31)
    assert cache.get("k") != b"old"


# ---------------------------------------------------------------------------------------------------- SingleFlight


def callers(flight: SingleFlight, key: str) -> int:
    """How many callers wait for `key`'s work (they have reached the flight and joined it)."""
    return flight._waiters.get(key, 0)


async def caller_gone(flight: SingleFlight, work) -> None:
    """A caller of `key`'s work that goes away (its client disconnected) once it has joined the flight."""
    caller = asyncio.create_task(flight.run("key", work))
    await until(lambda: callers(flight, "key") == 1)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller


class Gated:
    """Work that counts its runs (`calls`), waits for `release`, then returns `result` or raises `error`."""

    def __init__(self, result: str = "", error: Exception | None = None) -> None:
        self.result, self.error = result, error
        self.release = asyncio.Event()
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.result


async def test_single_flight_runs_identical_work_once():
    flight: SingleFlight[str] = SingleFlight()
    work = Gated("result")
    waiters = [asyncio.create_task(flight.run("key", work)) for _ in range(20)]
    await until(lambda: callers(flight, "key") == 20)
    assert len(flight) == 1
    work.release.set()
    assert await asyncio.gather(*waiters) == ["result"] * 20
    assert work.calls == 1
    assert len(flight) == 0


async def test_single_flight_different_keys_run_separately():
    flight: SingleFlight[str] = SingleFlight()
    release = asyncio.Event()
    calls: list[str] = []

    def work_for(key):
        async def work():
            calls.append(key)
            await release.wait()
            return key.upper()
        return work

    waiters = [asyncio.create_task(flight.run(key, work_for(key))) for key in ("a", "b", "a", "b", "c")]
    await until(lambda: sum(callers(flight, key) for key in "abc") == 5)
    assert len(flight) == 3
    release.set()
    assert await asyncio.gather(*waiters) == ["A", "B", "A", "B", "C"]
    assert sorted(calls) == ["a", "b", "c"]
    assert len(flight) == 0


async def test_single_flight_exception_reaches_every_waiter_and_the_next_call_runs_again():
    flight: SingleFlight[str] = SingleFlight()
    failing = Gated(error=ValueError("upstream 500"))
    waiters = [asyncio.create_task(flight.run("key", failing)) for _ in range(5)]
    await until(lambda: callers(flight, "key") == 5)
    failing.release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(result, ValueError) and str(result) == "upstream 500" for result in results)
    assert failing.calls == 1
    assert len(flight) == 0

    succeeding = Gated("ok")
    succeeding.release.set()
    assert await flight.run("key", succeeding) == "ok"
    assert failing.calls + succeeding.calls == 2
    assert len(flight) == 0


async def test_single_flight_cancelled_caller_does_not_cancel_the_work():
    flight: SingleFlight[str] = SingleFlight()
    release = asyncio.Event()
    finished = asyncio.Event()

    async def work():
        try:
            await release.wait()
            return "done"
        finally:
            finished.set()

    first = asyncio.create_task(flight.run("key", work))  # the caller that started the work
    others = [asyncio.create_task(flight.run("key", work)) for _ in range(3)]
    await until(lambda: callers(flight, "key") == 4)
    first.cancel()  # its client disconnected
    others[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    with pytest.raises(asyncio.CancelledError):
        await others[0]
    assert len(flight) == 1
    assert not finished.is_set()

    release.set()
    assert await asyncio.gather(*others[1:]) == ["done", "done"]
    assert finished.is_set()
    assert len(flight) == 0


async def test_single_flight_work_outlives_its_only_caller_and_a_late_caller_joins_it():
    flight: SingleFlight[str] = SingleFlight()
    work = Gated("late")
    await caller_gone(flight, work)  # its only caller
    assert len(flight) == 1  # still in flight
    late = asyncio.create_task(flight.run("key", work))
    await until(lambda: callers(flight, "key") == 1)  # the late caller joined before the work ends
    work.release.set()
    assert await late == "late"
    assert work.calls == 1
    assert len(flight) == 0


async def test_single_flight_unawaited_failure_is_not_reported_as_never_retrieved():
    loop = asyncio.get_running_loop()
    reported = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        flight: SingleFlight[str] = SingleFlight()
        failing = Gated(error=ValueError("nobody is listening"))
        await caller_gone(flight, failing)
        failing.release.set()
        await until(lambda: len(flight) == 0)
        # nothing may be reported: one turn of the loop for what the finished work schedules, then for what
        # collecting it would (an absence has no moment to wait for)
        await asyncio.sleep(0)
        gc.collect()
        await asyncio.sleep(0)
        assert reported == []
    finally:
        loop.set_exception_handler(None)


async def test_single_flight_with_orphan_grace_cancels_work_nobody_waits_for():
    flight: SingleFlight[str] = SingleFlight(orphan_grace=0.05)
    cancelled = asyncio.Event()

    async def fetch():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await caller_gone(flight, fetch)
    await asyncio.wait_for(cancelled.wait(), 5)
    await until(lambda: len(flight) == 0)


async def test_single_flight_with_orphan_grace_keeps_work_a_new_caller_joins():
    flight: SingleFlight[str] = SingleFlight(orphan_grace=0.05)
    fetch = Gated("block")
    await caller_gone(flight, fetch)
    second = asyncio.create_task(flight.run("key", fetch))  # joins within the grace
    await until(lambda: callers(flight, "key") == 1)
    await asyncio.sleep(0.1)  # twice the grace: the fetch would have been cancelled by now, had nobody joined
    fetch.release.set()
    assert await second == "block"
