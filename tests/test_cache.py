"""The caches: DiskCache (atomic, byte-bounded, restart-surviving LRU of files), MemoryCache, SingleFlight.

DiskCache tests use real files under tmp_path; "a restart" or "another process" is a second DiskCache instance on
the same directory.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from mediaproxy.cache import disk as disk_module
from mediaproxy.cache.disk import CachedFile, DiskCache, SizeMismatch, TooBig
from mediaproxy.cache.memory import MemoryCache
from mediaproxy.cache.singleflight import SingleFlight

HOUR = 3600.0


# ---------------------------------------------------------------------------------------------------- helpers


def blake(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=16).hexdigest()


def sidecar_of(entry: CachedFile) -> Path:
    return entry.path.with_suffix(".json")


def files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


def data_files(root: Path) -> list[Path]:
    return [p for p in files(root / "data") if p.suffix != ".json"]


def bytes_on_disk(root: Path) -> int:
    return sum(p.stat().st_size for p in data_files(root))


def age(path: Path, seconds: float) -> None:
    """Date a file `seconds` into the past."""
    when = time.time() - seconds
    os.utime(path, (when, when))


def flip_keeping_mtime(path: Path) -> None:
    """Change bytes in place, same size, and put the old mtime back (a silent disk fault)."""
    before = path.stat()
    body = bytearray(path.read_bytes())
    body[len(body) // 2] ^= 0xFF
    path.write_bytes(bytes(body))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


async def chunks_of(*chunks: bytes):
    for chunk in chunks:
        await asyncio.sleep(0)
        yield chunk


async def until(predicate, timeout: float = 1.0) -> None:
    """Give the event loop (and the executor that deletes evicted files) a moment."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def started(root: Path, max_bytes: int = 1 << 20) -> DiskCache:
    cache = DiskCache(root, max_bytes)
    await cache.start()
    return cache


async def lookup(cache: DiskCache, how: str, key: str):
    return await (cache.open(key) if how == "open" else cache.read_bytes(key))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# ---------------------------------------------------------------------------------------------------- DiskCache: writing and reading


async def test_store_bytes_round_trips_through_read_bytes_and_open(root):
    cache = await started(root)
    body = b"hello, cache" * 100
    meta = {"type": "image/jpeg", "n": 3, "nested": {"a": [1, 2]}}
    stored = await cache.store_bytes("thumb|1", body, meta)

    assert stored.size == len(body)
    assert stored.digest == blake(body)
    assert stored.meta == meta
    assert stored.path.read_bytes() == body
    assert stored.path.is_relative_to(root / "data")
    assert stored.mtime_ns == stored.path.stat().st_mtime_ns

    assert await cache.read_bytes("thumb|1") == (body, meta)

    opened = await cache.open("thumb|1")
    assert opened == CachedFile(stored.path, len(body), stored.mtime_ns, blake(body), meta)
    assert cache.total_bytes == len(body)
    assert files(root / "tmp") == []  # the temporary files were renamed into place
    sidecar = json.loads(sidecar_of(stored).read_text())
    assert sidecar == {"key": "thumb|1", "size": len(body), "digest": blake(body), "meta": meta}


async def test_missing_key_is_none_and_meta_defaults_to_empty(root):
    cache = await started(root)
    assert await cache.open("nope") is None
    assert await cache.read_bytes("nope") is None
    stored = await cache.store_bytes("k", b"")
    assert stored.meta == {} and stored.size == 0
    assert await cache.read_bytes("k") == (b"", {})


async def test_store_bytes_replaces_an_entry_and_adjusts_total(root):
    cache = await started(root)
    await cache.store_bytes("k", b"a" * 100, {"v": 1})
    await cache.store_bytes("k", b"b" * 40, {"v": 2})
    assert await cache.read_bytes("k") == (b"b" * 40, {"v": 2})
    assert (await cache.open("k")).digest == blake(b"b" * 40)
    assert cache.total_bytes == 40 == bytes_on_disk(root)


async def test_store_stream_with_expected_size(root):
    cache = await started(root)
    parts = [b"abc" * 1000, b"", b"defg" * 500, b"z"]
    body = b"".join(parts)
    entry = await cache.store_stream("orig|1", chunks_of(*parts), {"etag": '"x"'}, expected_size=len(body),
                                     max_bytes=len(body))
    assert entry.size == len(body)
    assert entry.digest == blake(body)
    assert entry.path.read_bytes() == body
    assert await cache.read_bytes("orig|1") == (body, {"etag": '"x"'})
    assert (await cache.open("orig|1")).digest == blake(body)
    assert files(root / "tmp") == []
    assert cache.total_bytes == len(body)


@pytest.mark.parametrize("parts, expected", [
    pytest.param([b"x" * 10, b"y" * 10], 30, id="short"),
    pytest.param([b"x" * 10, b"y" * 10], 15, id="long"),
    pytest.param([], 5, id="empty"),
])
async def test_store_stream_size_mismatch_stores_nothing(root, parts, expected):
    cache = await started(root)
    with pytest.raises(SizeMismatch):
        await cache.store_stream("orig|1", chunks_of(*parts), expected_size=expected)
    assert await cache.open("orig|1") is None
    assert await cache.read_bytes("orig|1") is None
    assert files(root / "tmp") == []
    assert files(root / "data") == []
    assert cache.total_bytes == 0


async def test_store_stream_too_big_stores_nothing(root):
    cache = await started(root)
    consumed = []

    async def endless():
        for n in range(1000):
            consumed.append(n)
            yield b"x" * 100

    with pytest.raises(TooBig):
        await cache.store_stream("orig|1", endless(), max_bytes=250)
    assert len(consumed) == 3  # it stopped reading at the limit
    assert await cache.open("orig|1") is None
    assert files(root / "tmp") == []
    assert files(root / "data") == []
    assert cache.total_bytes == 0


async def test_store_stream_exactly_max_bytes_is_accepted(root):
    cache = await started(root)
    entry = await cache.store_stream("k", chunks_of(b"x" * 50, b"y" * 50), max_bytes=100)
    assert entry.size == 100


async def test_failed_store_stream_keeps_the_previous_entry(root):
    cache = await started(root)
    await cache.store_bytes("k", b"old body", {"v": 1})
    with pytest.raises(SizeMismatch):
        await cache.store_stream("k", chunks_of(b"new"), {"v": 2}, expected_size=99)
    with pytest.raises(TooBig):
        await cache.store_stream("k", chunks_of(b"new", b"body"), {"v": 3}, max_bytes=4)
    assert await cache.read_bytes("k") == (b"old body", {"v": 1})
    assert cache.total_bytes == len(b"old body")
    assert files(root / "tmp") == []


async def test_store_stream_error_from_the_source_stores_nothing(root):
    cache = await started(root)

    async def broken():
        yield b"part"
        raise ConnectionResetError("upstream went away")

    with pytest.raises(ConnectionResetError):
        await cache.store_stream("k", broken())
    assert await cache.open("k") is None
    assert files(root / "tmp") == [] and files(root / "data") == []


async def test_store_stream_mtime_sets_the_file_mtime(root):
    cache = await started(root)
    last_modified = 1_600_000_000.0  # 2020-09-13, an upstream Last-Modified
    entry = await cache.store_stream("orig|1", chunks_of(b"body"), mtime=last_modified)
    stat = entry.path.stat()
    assert stat.st_mtime == last_modified
    assert entry.mtime_ns == stat.st_mtime_ns == 1_600_000_000 * 10**9
    assert (await cache.open("orig|1")).mtime_ns == entry.mtime_ns
    # a fresh process (which verifies the digest) agrees
    again = await started(root)
    assert (await again.open("orig|1")).mtime_ns == entry.mtime_ns


async def test_store_file_with_a_writer(root):
    cache = await started(root)
    body = bytes(range(256)) * 40

    def write(path: Path) -> None:
        assert path.parent == root / "tmp"
        with open(path, "wb") as out:
            out.write(body[:1000])
            out.write(body[1000:])

    entry = await cache.store_file("remux|1", write, {"type": "video/mp4"})
    assert entry.size == len(body)
    assert entry.digest == blake(body)
    assert entry.meta == {"type": "video/mp4"}
    assert await cache.read_bytes("remux|1") == (body, {"type": "video/mp4"})
    assert files(root / "tmp") == []


async def test_store_file_uses_the_given_runner(root):
    cache = await started(root)
    used = []

    async def run(function, *args):
        used.append(function)
        return await asyncio.to_thread(function, *args)

    def write(path: Path) -> None:
        path.write_bytes(b"remuxed")

    entry = await cache.store_file("k", write, run=run)
    assert used == [write]
    assert entry.path.read_bytes() == b"remuxed"


async def test_store_file_writer_failure_stores_nothing(root):
    cache = await started(root)

    def write(path: Path) -> None:
        path.write_bytes(b"half a file")
        raise RuntimeError("ffmpeg died")

    with pytest.raises(RuntimeError, match="ffmpeg died"):
        await cache.store_file("k", write)
    assert await cache.open("k") is None
    assert files(root / "tmp") == [] and files(root / "data") == []
    assert cache.total_bytes == 0


async def test_discard_removes_an_entry(root):
    cache = await started(root)
    keep = await cache.store_bytes("keep", b"k" * 10)
    gone = await cache.store_bytes("gone", b"g" * 20)
    await cache.discard("gone")
    assert await cache.open("gone") is None
    assert await cache.read_bytes("gone") is None
    assert not gone.path.exists() and not sidecar_of(gone).exists()
    assert keep.path.exists()
    assert cache.total_bytes == 10 == bytes_on_disk(root)
    await cache.discard("never stored")  # no error
    assert cache.total_bytes == 10


# ---------------------------------------------------------------------------------------------------- DiskCache: restarts and processes


async def test_a_restart_finds_the_entries(root):
    first = await started(root)
    bodies = {f"key {n}": os.urandom(100 + n) for n in range(5)}
    stored = {key: await first.store_bytes(key, body, {"n": key}) for key, body in bodies.items()}

    second = await started(root)
    assert second.total_bytes == sum(map(len, bodies.values())) == bytes_on_disk(root)
    for key, body in bodies.items():
        opened = await second.open(key)
        assert opened is not None
        assert (opened.path, opened.size, opened.digest, opened.meta) == (
            stored[key].path, len(body), blake(body), {"n": key})
        assert await second.read_bytes(key) == (body, {"n": key})


async def test_two_instances_on_one_directory_see_each_others_entries(root):
    a = await started(root)
    b = await started(root)

    await a.store_bytes("from a", b"A" * 30, {"by": "a"})
    assert await b.read_bytes("from a") == (b"A" * 30, {"by": "a"})
    assert (await b.open("from a")).size == 30
    assert b.total_bytes == 30  # b learned about it when it used it

    await b.store_bytes("from b", b"B" * 50, {"by": "b"})
    assert (await a.open("from b")).digest == blake(b"B" * 50)
    assert await a.read_bytes("from b") == (b"B" * 50, {"by": "b"})

    # b replaces a's entry; a sees the new bytes (and does not take them for damage)
    await b.store_bytes("from a", b"a2" * 20, {"by": "b"})
    assert await a.read_bytes("from a") == (b"a2" * 20, {"by": "b"})
    opened = await a.open("from a")
    assert opened.digest == blake(b"a2" * 20) and opened.path.read_bytes() == b"a2" * 20

    # a discards; b misses
    await a.discard("from b")
    assert await b.open("from b") is None
    assert await b.read_bytes("from b") is None


async def test_open_works_before_start_on_an_existing_directory(root):
    first = await started(root)
    await first.store_bytes("k", b"body")
    fresh = DiskCache(root, 1 << 20)
    assert (await fresh.open("k")).size == 4


# ---------------------------------------------------------------------------------------------------- DiskCache: damage


@pytest.mark.parametrize("how", ["open", "read_bytes"])
async def test_truncated_data_is_a_miss_and_removed(root, how):
    cache = await started(root)
    entry = await cache.store_bytes("k", b"0123456789" * 10)
    with open(entry.path, "r+b") as data:
        data.truncate(37)
    assert await lookup(cache, how, "k") is None
    assert not entry.path.exists() and not sidecar_of(entry).exists()
    assert cache.total_bytes == 0
    assert await cache.open("k") is None
    # and the caller can rebuild it
    await cache.store_bytes("k", b"rebuilt")
    assert await cache.read_bytes("k") == (b"rebuilt", {})
    assert cache.total_bytes == 7


async def test_flipped_bytes_read_bytes_checks_the_digest_on_every_read(root):
    cache = await started(root)
    entry = await cache.store_bytes("k", b"pixels" * 50)
    assert await cache.read_bytes("k") == (b"pixels" * 50, {})  # read once: fine
    flip_keeping_mtime(entry.path)
    assert await cache.read_bytes("k") is None  # the same process, the next read: caught
    assert not entry.path.exists() and not sidecar_of(entry).exists()
    assert cache.total_bytes == 0


async def test_flipped_bytes_open_verifies_once_per_process_so_a_fresh_instance_catches_it(root):
    cache = await started(root)
    entry = await cache.store_bytes("k", b"frames" * 50)
    flip_keeping_mtime(entry.path)

    # this process wrote (so verified) this exact (file, mtime, size): open() does not re-hash it
    same_process = await cache.open("k")
    assert same_process is not None and same_process.size == entry.size
    # open(verify=False) never hashes
    assert await (await started(root)).open("k", verify=False) is not None

    # a fresh process verifies the digest on its first open: a miss, and the entry is removed
    fresh = await started(root)
    assert fresh.total_bytes == entry.size
    assert await fresh.open("k") is None
    assert not entry.path.exists() and not sidecar_of(entry).exists()
    assert fresh.total_bytes == 0
    assert await cache.open("k") is None  # gone for the first process as well


async def test_open_verifies_once_then_trusts_the_same_file(root):
    cache = await started(root)
    await cache.store_bytes("k", b"abc" * 100)
    fresh = await started(root)
    first = await fresh.open("k")
    flip_keeping_mtime(first.path)
    assert await fresh.open("k") is not None  # verified already, same mtime and size
    assert await (await started(root)).open("k") is None  # a new process checks again


@pytest.mark.parametrize("how", ["open", "read_bytes"])
async def test_deleted_sidecar_is_a_miss_and_the_orphan_data_goes_at_start(root, how):
    cache = await started(root)
    entry = await cache.store_bytes("k", b"body" * 10)
    sidecar_of(entry).unlink()
    assert await lookup(cache, how, "k") is None
    assert await cache.open("k") is None
    assert cache.total_bytes == 0  # forgotten by this process's index
    # the data file alone (another process may be committing it) is removed by a start() once it is old
    age(entry.path, 2 * HOUR)
    restarted = await started(root)
    assert not entry.path.exists()
    assert restarted.total_bytes == 0
    assert files(root / "data") == []


@pytest.mark.parametrize("garbage", [
    pytest.param(b"", id="empty"),
    pytest.param(b"{not json", id="not-json"),
    pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
    pytest.param(b"[1, 2, 3]", id="not-an-object"),
    pytest.param(b'"k"', id="a-string"),
    pytest.param(b'{"key": "k"}', id="no-size"),
    pytest.param(b'{"key": "k", "size": "400"}', id="size-wrong-type"),
])
@pytest.mark.parametrize("how", ["open", "read_bytes"])
async def test_garbage_sidecar_is_a_miss_and_removed(root, how, garbage):
    cache = await started(root)
    entry = await cache.store_bytes("k", b"data" * 100)
    other = await cache.store_bytes("other", b"o" * 10)
    sidecar_of(entry).write_bytes(garbage)
    assert await lookup(cache, how, "k") is None
    assert not entry.path.exists() and not sidecar_of(entry).exists()
    assert cache.total_bytes == 10
    assert await cache.read_bytes("other") == (b"o" * 10, {})  # the neighbour is untouched
    assert other.path.exists()


@pytest.mark.parametrize("how", ["open", "read_bytes"])
async def test_sidecar_of_another_key_is_a_miss_and_removed(root, how):
    cache = await started(root)
    entry = await cache.store_bytes("k", b"same size!")
    other = await cache.store_bytes("other", b"equal size")  # same length, so only the key tells them apart
    shutil.copyfile(sidecar_of(other), sidecar_of(entry))
    assert await lookup(cache, how, "k") is None
    assert not entry.path.exists() and not sidecar_of(entry).exists()
    assert await cache.read_bytes("other") == (b"equal size", {})
    assert cache.total_bytes == 10


@pytest.mark.parametrize("how", ["open", "read_bytes"])
async def test_sidecar_with_a_wrong_digest_is_a_miss_and_removed(root, how):
    cache = await started(root)
    entry = await cache.store_bytes("k", b"x" * 64)
    record = json.loads(sidecar_of(entry).read_text())
    record["digest"] = blake(b"something else")
    sidecar_of(entry).write_text(json.dumps(record))
    checker = await started(root)  # a fresh process, so open() hashes
    assert await lookup(checker, how, "k") is None
    assert not entry.path.exists()


# ---------------------------------------------------------------------------------------------------- DiskCache: start-up upkeep


async def test_start_removes_old_tmp_leftovers_and_keeps_fresh_ones(root):
    (root / "tmp").mkdir(parents=True)
    old = root / "tmp" / "dead-writer.part"
    old.write_bytes(b"interrupted")
    age(old, HOUR + 60)
    fresh = root / "tmp" / "live-writer.part"
    fresh.write_bytes(b"in progress")
    age(fresh, 60)
    await started(root)
    assert not old.exists()
    assert fresh.exists()


async def test_start_removes_old_data_without_sidecar_and_keeps_fresh(root):
    cache = await started(root)
    old = await cache.store_bytes("old orphan", b"o" * 10)
    new = await cache.store_bytes("new orphan", b"n" * 20)
    kept = await cache.store_bytes("complete", b"c" * 30)
    sidecar_of(old).unlink()
    sidecar_of(new).unlink()
    age(old.path, 2 * HOUR)
    age(kept.path, 2 * HOUR)  # old data is fine when its sidecar is there

    restarted = await started(root)
    assert not old.path.exists()
    assert new.path.exists()  # perhaps a writer in another process is about to add its sidecar
    assert kept.path.exists()
    assert restarted.total_bytes == 30  # only complete entries are indexed
    assert await restarted.read_bytes("complete") == (b"c" * 30, {})


async def test_start_removes_a_sidecar_without_data(root):
    cache = await started(root)
    entry = await cache.store_bytes("k", b"body")
    entry.path.unlink()
    restarted = await started(root)
    assert not sidecar_of(entry).exists()
    assert restarted.total_bytes == 0


async def test_start_evicts_the_oldest_when_over_budget(root):
    cache = await started(root)
    entries = [await cache.store_bytes(f"k{n}", bytes([n]) * 100) for n in range(5)]
    for n, entry in enumerate(entries):  # recency lives in the sidecars' mtimes
        age(sidecar_of(entry), (10 - n) * 60)
    small = await started(root, max_bytes=300)
    assert small.total_bytes <= 300
    assert small.total_bytes == bytes_on_disk(root)
    survivors = [n for n, entry in enumerate(entries) if entry.path.exists()]
    assert survivors == [3, 4]  # the oldest went first, down to 90% of the budget


@pytest.mark.parametrize("uptime", [
    pytest.param(30 * 24 * HOUR, id="host-up-for-a-month"),
    pytest.param(600.0, id="host-booted-10-minutes-ago"),
])
async def test_reads_are_remembered_across_a_restart(root, monkeypatch, uptime):
    clock = SimpleNamespace(time=time.time, monotonic=lambda: uptime)
    monkeypatch.setattr(disk_module, "time", clock)
    writer = await started(root)
    read_later = await writer.store_bytes("read later", b"r" * 100)
    never_read = await writer.store_bytes("never read", b"n" * 100)
    age(sidecar_of(read_later), 3 * HOUR)
    age(sidecar_of(never_read), 2 * HOUR)

    process = await started(root)  # a later process reads one of them
    assert await process.open("read later") is not None

    restarted = await started(root, max_bytes=150)  # room for one: the least recently used goes
    assert await restarted.read_bytes("read later") == (b"r" * 100, {})
    assert await restarted.open("never read") is None


# ---------------------------------------------------------------------------------------------------- DiskCache: eviction


@pytest.mark.parametrize("how", ["open", "read_bytes"])
async def test_eviction_removes_least_recently_used_first(root, how):
    cache = await started(root, max_bytes=1000)
    a = await cache.store_bytes("a", b"a" * 300)
    b = await cache.store_bytes("b", b"b" * 300)
    c = await cache.store_bytes("c", b"c" * 300)
    assert await lookup(cache, how, "a") is not None  # a is now more recent than b
    d = await cache.store_bytes("d", b"d" * 300)  # 1200 > 1000: evict down to 900

    assert cache.total_bytes == 900
    await until(lambda: not b.path.exists())
    assert not sidecar_of(b).exists()
    assert all(entry.path.exists() for entry in (a, c, d))
    assert await cache.open("b") is None
    for key in "acd":
        assert await cache.read_bytes(key) == (key.encode() * 300, {})
    assert cache.total_bytes == bytes_on_disk(root) == 900


async def test_total_bytes_stays_under_budget_and_matches_the_disk(root):
    cache = await started(root, max_bytes=1000)
    for n in range(30):
        await cache.store_bytes(f"k{n}", os.urandom(37 + n * 7))
        assert cache.total_bytes <= 1000
        if n % 3 == 0:
            await cache.read_bytes("k0")  # keep one entry hot
    assert await cache.read_bytes("k0") is not None  # the hot entry survived all that
    await until(lambda: bytes_on_disk(root) == cache.total_bytes)
    await asyncio.sleep(0.02)
    assert bytes_on_disk(root) == cache.total_bytes <= 1000
    assert len(files(root / "data")) == 2 * len(data_files(root))  # every data file has its sidecar
    assert files(root / "tmp") == []
    # and a restart agrees
    assert (await started(root, max_bytes=1000)).total_bytes == cache.total_bytes


async def test_eviction_through_store_stream_and_store_file(root):
    cache = await started(root, max_bytes=500)
    first = await cache.store_stream("s", chunks_of(b"s" * 200), expected_size=200)
    await cache.store_file("f", lambda path: path.write_bytes(b"f" * 200))
    await cache.store_stream("t", chunks_of(b"t" * 200))
    assert cache.total_bytes == 400
    await until(lambda: not first.path.exists())
    assert bytes_on_disk(root) == 400


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


def test_memory_cache_counts_hits_and_misses():
    cache: MemoryCache[bytes] = MemoryCache(max_bytes=100, item_limit=100)
    assert cache.get("a") is None
    cache.put("a", b"value")
    assert cache.get("a") == b"value"
    assert cache.get("a") == b"value"
    assert cache.get("b") is None
    assert (cache.hits, cache.misses) == (2, 2)


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


async def test_single_flight_runs_identical_work_once():
    flight: SingleFlight[str] = SingleFlight()
    release = asyncio.Event()
    calls = 0

    async def work():
        nonlocal calls
        calls += 1
        await release.wait()
        return "result"

    waiters = [asyncio.create_task(flight.run("key", work)) for _ in range(20)]
    await asyncio.sleep(0)
    assert len(flight) == 1
    release.set()
    assert await asyncio.gather(*waiters) == ["result"] * 20
    assert calls == 1
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
    await asyncio.sleep(0)
    assert len(flight) == 3
    release.set()
    assert await asyncio.gather(*waiters) == ["A", "B", "A", "B", "C"]
    assert sorted(calls) == ["a", "b", "c"]
    assert len(flight) == 0


async def test_single_flight_exception_reaches_every_waiter_and_the_next_call_runs_again():
    flight: SingleFlight[str] = SingleFlight()
    release = asyncio.Event()
    calls = 0

    async def failing():
        nonlocal calls
        calls += 1
        await release.wait()
        raise ValueError("upstream 500")

    waiters = [asyncio.create_task(flight.run("key", failing)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(result, ValueError) and str(result) == "upstream 500" for result in results)
    assert calls == 1
    assert len(flight) == 0

    async def succeeding():
        nonlocal calls
        calls += 1
        return "ok"

    assert await flight.run("key", succeeding) == "ok"
    assert calls == 2
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
    await asyncio.sleep(0)
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
    release = asyncio.Event()
    calls = 0

    async def work():
        nonlocal calls
        calls += 1
        await release.wait()
        return "late"

    lonely = asyncio.create_task(flight.run("key", work))
    await asyncio.sleep(0)
    lonely.cancel()
    with pytest.raises(asyncio.CancelledError):
        await lonely
    assert len(flight) == 1  # still in flight
    late = asyncio.create_task(flight.run("key", work))
    await asyncio.sleep(0)
    release.set()
    assert await late == "late"
    assert calls == 1
    assert len(flight) == 0


async def test_single_flight_unawaited_failure_is_not_reported_as_never_retrieved():
    loop = asyncio.get_running_loop()
    reported = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        flight: SingleFlight[str] = SingleFlight()
        release = asyncio.Event()

        async def failing():
            await release.wait()
            raise ValueError("nobody is listening")

        lonely = asyncio.create_task(flight.run("key", failing))
        await asyncio.sleep(0)
        lonely.cancel()
        with pytest.raises(asyncio.CancelledError):
            await lonely
        release.set()
        await until(lambda: len(flight) == 0)
        await asyncio.sleep(0)
        gc.collect()
        await asyncio.sleep(0)
        assert reported == []
    finally:
        loop.set_exception_handler(None)
