"""The caches: DiskCache (atomic, byte-bounded, restart-surviving LRU of files and blobs), MemoryCache, SingleFlight.

DiskCache tests use real files under tmp_path; "a restart" or "another process" is a second DiskCache instance on
the same directory. A file entry is a data file plus a JSON sidecar (`store_file`/`store_stream`, read by `open`);
a blob is one self-describing `.blob` file (`store_blobs`, read by `read_blob`).
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

from .conftest import until

HOUR = 3600.0
MAGIC = b"MPB1"
NO_SUCH_PID = 4_194_304  # PID_MAX_LIMIT: Linux never hands out this pid


# ---------------------------------------------------------------------------------------------------- helpers


def blake(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=16).hexdigest()


def sidecar_of(entry: CachedFile) -> Path:
    return entry.path.with_suffix(".json")


def files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


def data_files(root: Path) -> list[Path]:
    """Everything that counts towards total_bytes: files' data and whole blobs (not sidecars)."""
    return [p for p in files(root / "data") if p.suffix != ".json"]


def blob_files(root: Path) -> list[Path]:
    return [p for p in files(root / "data") if p.suffix == ".blob"]


def bytes_on_disk(root: Path) -> int:
    total = 0
    for path in data_files(root):
        try:
            total += path.stat().st_size
        except FileNotFoundError:  # being evicted right now
            pass
    return total


def blob_path(root: Path, key: str) -> Path:
    name = hashlib.sha256(key.encode()).hexdigest()
    return root / "data" / name[:2] / f"{name}.blob"


def on_disk(root: Path, key: str) -> bool:
    """Whether any file of key's entry (data, sidecar or blob) exists."""
    blob = blob_path(root, key)
    data = blob.with_suffix("")
    return any(p.exists() for p in (blob, data, data.with_suffix(".json")))


def split_blob(raw: bytes) -> tuple[dict, bytes]:
    assert raw[:4] == MAGIC
    end = 8 + int.from_bytes(raw[4:8], "big")
    return json.loads(raw[8:end]), raw[end:]


def join_blob(header: dict | bytes, body: bytes) -> bytes:
    if isinstance(header, dict):
        header = json.dumps(header).encode()
    return MAGIC + len(header).to_bytes(4, "big") + header + body


def age(path: Path, seconds: float) -> None:
    """Date a file `seconds` into the past."""
    when = time.time() - seconds
    os.utime(path, (when, when))


def flip_keeping_mtime(path: Path, where: int | None = None) -> None:
    """Change a byte in place (the middle one by default), same size, and put the old mtime back (a disk fault)."""
    before = path.stat()
    body = bytearray(path.read_bytes())
    body[len(body) // 2 if where is None else where] ^= 0xFF
    path.write_bytes(bytes(body))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


async def chunks_of(*chunks: bytes):
    for chunk in chunks:
        await asyncio.sleep(0)
        yield chunk


async def started(root: Path, max_bytes: int = 1 << 20) -> DiskCache:
    cache = DiskCache(root, max_bytes)
    await cache.start()
    return cache


async def put(cache: DiskCache, key: str, body: bytes, meta: dict | None = None) -> CachedFile:
    """A file entry (data + sidecar) holding body."""
    return await cache.store_file(key, lambda path: path.write_bytes(body), meta)


async def blob_file_size(scratch: Path, key: str, body: bytes, meta: dict | None = None) -> int:
    """The size on disk (what total_bytes counts) of key's blob, measured in a scratch cache."""
    cache = await started(scratch)
    await cache.store_blobs([(key, body, meta or {})])
    return blob_path(scratch, key).stat().st_size


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# ---------------------------------------------------------------------------------------------------- DiskCache: files


async def test_store_file_round_trips_through_open(root):
    cache = await started(root)
    body = b"hello, cache" * 100
    meta = {"type": "image/jpeg", "n": 3, "nested": {"a": [1, 2]}}
    stored = await put(cache, "orig|1", body, meta)

    assert stored.size == len(body)
    assert stored.digest == blake(body)
    assert stored.meta == meta
    assert stored.path.read_bytes() == body
    assert stored.path.is_relative_to(root / "data")
    assert stored.mtime_ns == stored.path.stat().st_mtime_ns

    opened = await cache.open("orig|1")
    assert opened == CachedFile(stored.path, len(body), stored.mtime_ns, blake(body), meta)
    assert cache.total_bytes == len(body)
    assert files(root / "tmp") == []  # the temporary files were renamed into place
    sidecar = json.loads(sidecar_of(stored).read_text())
    assert sidecar == {"key": "orig|1", "size": len(body), "digest": blake(body), "meta": meta}
    assert blob_files(root) == []


async def test_missing_key_is_none_and_meta_defaults_to_empty(root):
    cache = await started(root)
    assert await cache.open("nope") is None
    assert await cache.read_blob("nope") is None
    assert not cache.known("nope")
    stored = await put(cache, "k", b"")
    assert stored.meta == {} and stored.size == 0
    opened = await cache.open("k")
    assert (opened.size, opened.meta, opened.path.read_bytes()) == (0, {}, b"")
    await cache.store_blobs([("empty", b"", {}), ("no meta", b"x", None)])
    assert await cache.read_blob("empty") == (b"", {})
    assert await cache.read_blob("no meta") == (b"x", {})


async def test_a_file_entry_is_not_a_blob_and_a_blob_is_not_a_file(root):
    cache = await started(root)
    entry = await put(cache, "file", b"file bytes")
    await cache.store_blobs([("blob", b"blob bytes", {})])
    assert await cache.read_blob("file") is None
    assert await cache.open("blob") is None
    # neither lookup takes the other kind for damage: nothing is removed
    assert entry.path.exists() and sidecar_of(entry).exists() and blob_path(root, "blob").exists()
    assert (await cache.open("file")).path.read_bytes() == b"file bytes"
    assert await cache.read_blob("blob") == (b"blob bytes", {})


async def test_store_file_replaces_an_entry_and_adjusts_total(root):
    cache = await started(root)
    await put(cache, "k", b"a" * 100, {"v": 1})
    await put(cache, "k", b"b" * 40, {"v": 2})
    opened = await cache.open("k")
    assert (opened.digest, opened.meta, opened.path.read_bytes()) == (blake(b"b" * 40), {"v": 2}, b"b" * 40)
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
    opened = await cache.open("orig|1")
    assert (opened.digest, opened.meta) == (blake(body), {"etag": '"x"'})
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
    assert not cache.known("orig|1")
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
    await put(cache, "k", b"old body", {"v": 1})
    with pytest.raises(SizeMismatch):
        await cache.store_stream("k", chunks_of(b"new"), {"v": 2}, expected_size=99)
    with pytest.raises(TooBig):
        await cache.store_stream("k", chunks_of(b"new", b"body"), {"v": 3}, max_bytes=4)
    opened = await cache.open("k")
    assert (opened.path.read_bytes(), opened.meta) == (b"old body", {"v": 1})
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


async def test_store_stream_after_tmp_was_removed(root):
    cache = await started(root)
    shutil.rmtree(root / "tmp")
    entry = await cache.store_stream("k", chunks_of(b"streamed"))
    assert entry.path.read_bytes() == b"streamed"


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
    opened = await cache.open("remux|1")
    assert (opened.path.read_bytes(), opened.meta) == (body, {"type": "video/mp4"})
    assert files(root / "tmp") == []


async def test_store_file_merges_the_dict_its_writer_returns_into_meta(root):
    cache = await started(root)

    def write(path: Path) -> dict:
        path.write_bytes(b"remuxed")
        return {"duration": 1.5, "type": "video/webm"}

    entry = await cache.store_file("k", write, {"type": "video/mp4", "from": "remux"})
    expected = {"type": "video/webm", "from": "remux", "duration": 1.5}  # the writer's values win
    assert entry.meta == expected
    assert (await (await started(root)).open("k")).meta == expected  # and it is what the sidecar holds


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


async def test_store_file_after_tmp_was_removed(root):
    cache = await started(root)
    shutil.rmtree(root / "tmp")
    entry = await put(cache, "k", b"written")
    assert entry.path.read_bytes() == b"written"


# ---------------------------------------------------------------------------------------------------- DiskCache: blobs


async def test_store_blobs_writes_a_batch_that_read_blob_returns(root):
    cache = await started(root)
    batch = [
        ("result|a", b"jpeg bytes" * 100, {"content_type": "image/jpeg", "extra": {"w": 10, "h": [1, 2]}}),
        ("result|b", os.urandom(3000), {"content_type": "image/webp"}),
        ("result|c", b"", {}),
        ("result|\u00e9\u6f22", b"unicode key", {"k": "\u00e9"}),
    ]
    assert await cache.store_blobs(batch) is None
    for key, body, meta in batch:
        assert cache.known(key)
        assert await cache.read_blob(key) == (body, meta)
        assert await cache.read_blob(key) == (body, meta)  # and again (reading changes nothing)
    assert files(root / "tmp") == []
    assert len(blob_files(root)) == len(batch)
    assert [p for p in files(root / "data") if p.suffix != ".blob"] == []  # no sidecars, no data files
    # blobs count with their whole file, header included
    assert cache.total_bytes == bytes_on_disk(root) == sum(blob_path(root, key).stat().st_size for key, *_ in batch)
    assert await cache.open("result|a") is None  # a blob is not a file entry


async def test_a_blob_is_magic_header_length_json_header_and_body(root):
    cache = await started(root)
    body = bytes(range(256)) * 4
    meta = {"content_type": "image/png", "extra": {"n": 1}}
    await cache.store_blobs([("result|x", body, meta)])
    raw = blob_path(root, "result|x").read_bytes()
    assert raw[:4] == MAGIC
    header_length = int.from_bytes(raw[4:8], "big")
    assert json.loads(raw[8:8 + header_length]) == {"key": "result|x", "size": len(body), "digest": blake(body),
                                                     "meta": meta}
    assert raw[8 + header_length:] == body
    assert cache.total_bytes == len(raw)


async def test_store_blobs_of_an_empty_batch_does_nothing(root):
    cache = await started(root)
    await cache.store_blobs([])
    assert files(root / "data") == [] and files(root / "tmp") == []
    assert cache.total_bytes == 0


async def test_store_blobs_replaces_a_blob_and_adjusts_total(root):
    cache = await started(root)
    await cache.store_blobs([("k", b"a" * 100, {"v": 1}), ("other", b"o", {})])
    await cache.store_blobs([("k", b"b" * 40, {"v": 2})])
    assert await cache.read_blob("k") == (b"b" * 40, {"v": 2})
    assert len(blob_files(root)) == 2
    assert cache.total_bytes == bytes_on_disk(root)


async def test_a_key_twice_in_one_batch_keeps_the_last(root):
    cache = await started(root)
    await cache.store_blobs([("k", b"first" * 10, {"v": 1}), ("k", b"second", {"v": 2})])
    assert await cache.read_blob("k") == (b"second", {"v": 2})
    assert len(blob_files(root)) == 1
    assert cache.total_bytes == bytes_on_disk(root)


async def test_store_blobs_after_tmp_and_the_shard_were_removed(root):
    cache = await started(root)
    await cache.store_blobs([("k", b"one", {})])
    shutil.rmtree(root / "tmp")
    shutil.rmtree(blob_path(root, "k").parent)
    await cache.store_blobs([("k", b"two", {})])
    assert await cache.read_blob("k") == (b"two", {})


async def test_known_follows_this_processs_index(root):
    cache = await started(root)
    assert not cache.known("b") and not cache.known("f")
    await cache.store_blobs([("b", b"blob", {})])
    await put(cache, "f", b"file")
    assert cache.known("b") and cache.known("f")
    await cache.discard("b")
    assert not cache.known("b") and cache.known("f")

    await cache.store_blobs([("b", b"again", {})])
    restarted = await started(root)
    assert restarted.known("b") and restarted.known("f")  # what start() found on disk
    blob_path(root, "b").unlink()  # evicted by another process
    assert restarted.known("b")  # not noticed until it is read
    assert await restarted.read_blob("b") is None
    assert not restarted.known("b")


async def test_read_blob_checks_the_digest_on_every_read(root):
    cache = await started(root)
    await cache.store_blobs([("k", b"pixels" * 50, {}), ("other", b"o" * 10, {})])
    assert await cache.read_blob("k") == (b"pixels" * 50, {})  # read once: fine
    path = blob_path(root, "k")
    flip_keeping_mtime(path, where=-1)  # the last byte of the body: size, mtime and header are unchanged
    assert await cache.read_blob("k") is None  # the same process, the next read: caught
    assert not path.exists()
    assert not cache.known("k")
    assert cache.total_bytes == blob_path(root, "other").stat().st_size == bytes_on_disk(root)


def _rewrite(path: Path, change) -> None:
    raw = path.read_bytes()
    path.write_bytes(change(raw))


def _header_length(raw: bytes) -> int:
    return int.from_bytes(raw[4:8], "big")


def _flip_bit(raw: bytes, where: int) -> bytes:
    return raw[:where] + bytes([raw[where] ^ 1]) + raw[where + 1:]


def _with_header(edit):
    """A damage that edits the parsed header and writes the blob back with a consistent header length."""
    def change(raw: bytes) -> bytes:
        header, body = split_blob(raw)
        edit(header)
        return join_blob(header, body)
    return change


def _with_raw_header(header: bytes):
    return lambda raw: join_blob(header, split_blob(raw)[1])


BLOB_DAMAGE = [
    pytest.param(lambda raw: b"JUNK" + raw[4:], id="bad-magic"),
    pytest.param(lambda raw: b"mpb1" + raw[4:], id="magic-in-lower-case"),
    pytest.param(lambda raw: b"", id="empty-file"),
    pytest.param(lambda raw: raw[:3], id="truncated-in-the-magic"),
    pytest.param(lambda raw: raw[:6], id="truncated-in-the-header-length"),
    pytest.param(lambda raw: raw[:8 + _header_length(raw) // 2], id="truncated-in-the-header"),
    pytest.param(lambda raw: raw[:8 + _header_length(raw)], id="truncated-after-the-header"),
    pytest.param(lambda raw: raw[:-1], id="truncated-by-one-byte"),
    pytest.param(lambda raw: raw[:len(raw) // 2 + 50], id="truncated-in-the-body"),
    pytest.param(lambda raw: raw + b"\0", id="a-byte-too-many"),
    pytest.param(lambda raw: raw[:4] + (1 << 30).to_bytes(4, "big") + raw[8:], id="header-length-past-the-end"),
    pytest.param(lambda raw: raw[:4] + (_header_length(raw) - 1).to_bytes(4, "big") + raw[8:],
                 id="header-length-one-short"),
    pytest.param(lambda raw: raw[:4] + (_header_length(raw) + 1).to_bytes(4, "big") + raw[8:],
                 id="header-length-one-long"),
    pytest.param(lambda raw: raw[:4] + bytes(4) + raw[8:], id="header-length-zero"),
    pytest.param(_with_raw_header(b""), id="empty-header"),
    pytest.param(_with_raw_header(b"{not json"), id="header-not-json"),
    pytest.param(_with_raw_header(b"\xff\xfe\x00garbage"), id="header-not-utf8"),
    pytest.param(_with_raw_header(b"[1, 2, 3]"), id="header-not-an-object"),
    pytest.param(_with_raw_header(b'"k"'), id="header-a-string"),
    pytest.param(_with_raw_header(b"null"), id="header-null"),
    pytest.param(_with_header(lambda h: h.update(key="other")), id="wrong-key"),
    pytest.param(_with_header(lambda h: h.pop("key")), id="no-key"),
    pytest.param(_with_header(lambda h: h.update(size=h["size"] + 1)), id="wrong-size"),
    pytest.param(_with_header(lambda h: h.update(size=str(h["size"]))), id="size-wrong-type"),
    pytest.param(_with_header(lambda h: h.pop("size")), id="no-size"),
    pytest.param(_with_header(lambda h: h.update(digest=blake(b"something else"))), id="wrong-digest"),
    pytest.param(_with_header(lambda h: h.pop("digest")), id="no-digest"),
    pytest.param(lambda raw: raw[:-1] + bytes([raw[-1] ^ 0xFF]), id="flipped-body-byte"),
    pytest.param(lambda raw: _flip_bit(raw, raw.index(b'"digest": "') + 11), id="flipped-bit-in-the-header"),
]


@pytest.mark.parametrize("damage", BLOB_DAMAGE)
async def test_a_damaged_blob_is_a_miss_and_removed(root, damage):
    cache = await started(root)
    body = bytes(range(200)) * 2
    await cache.store_blobs([("k", body, {"content_type": "image/jpeg"}), ("other", b"o" * 10, {"n": 1})])
    neighbour = await put(cache, "file", b"f" * 20)
    path = blob_path(root, "k")
    _rewrite(path, damage)

    assert await cache.read_blob("k") is None
    assert not path.exists()
    assert not cache.known("k")
    assert cache.total_bytes == bytes_on_disk(root) == blob_path(root, "other").stat().st_size + 20
    # the neighbours are untouched
    assert await cache.read_blob("other") == (b"o" * 10, {"n": 1})
    assert (await cache.open("file")).path == neighbour.path
    # and the caller can rebuild it
    await cache.store_blobs([("k", b"rebuilt", {})])
    assert await cache.read_blob("k") == (b"rebuilt", {})
    assert cache.total_bytes == bytes_on_disk(root)


async def test_a_blob_of_another_key_is_a_miss_and_removed(root):
    cache = await started(root)
    await cache.store_blobs([("k1", b"same body", {}), ("k2", b"same body", {})])  # only the key tells them apart
    shutil.copyfile(blob_path(root, "k2"), blob_path(root, "k1"))
    assert await cache.read_blob("k1") is None
    assert not blob_path(root, "k1").exists()
    assert await cache.read_blob("k2") == (b"same body", {})
    assert cache.total_bytes == bytes_on_disk(root) == blob_path(root, "k2").stat().st_size


@pytest.mark.parametrize("damage", [
    pytest.param(lambda raw: raw[:-5], id="truncated"),
    pytest.param(lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), id="flipped-body-byte"),
    pytest.param(lambda raw: b"XXXX" + raw[4:], id="bad-magic"),
])
async def test_a_damaged_blob_found_at_start_is_a_miss_at_its_first_read(root, damage):
    writer = await started(root)
    await writer.store_blobs([("k", b"payload" * 30, {}), ("other", b"fine", {})])
    _rewrite(blob_path(root, "k"), damage)
    fresh = await started(root)
    assert fresh.known("k")
    assert fresh.total_bytes == bytes_on_disk(root)  # counted with its (damaged) size until read
    assert await fresh.read_blob("k") is None
    assert not blob_path(root, "k").exists()
    assert fresh.total_bytes == bytes_on_disk(root) == blob_path(root, "other").stat().st_size
    assert await fresh.read_blob("other") == (b"fine", {})


async def test_a_batch_that_rewrites_the_least_recently_used_key_keeps_the_new_blob(root, tmp_path):
    size = await blob_file_size(tmp_path / "scratch", "a", b"a" * 300)
    cache = await started(root, max_bytes=size * 5 // 2)  # room for two
    await cache.store_blobs([("a", b"a" * 300, {})])
    await cache.store_blobs([("b", b"b" * 300, {})])
    await cache.store_blobs([("c", b"c" * 300, {}), ("a", b"A" * 300, {})])  # a is rewritten, and newest
    await asyncio.sleep(0.05)  # the evicted files are deleted in the background
    assert cache.known("a")
    assert await cache.read_blob("a") == (b"A" * 300, {})
    assert cache.total_bytes == bytes_on_disk(root)


async def test_a_batch_that_fails_part_way_leaves_the_index_matching_the_disk(root):
    cache = await started(root)
    first, second = "k0", "k1"
    assert blob_path(root, first).parent != blob_path(root, second).parent
    blob_path(root, second).parent.write_bytes(b"not a directory")  # its shard cannot take the blob
    with pytest.raises(OSError):
        await cache.store_blobs([(first, b"one" * 10, {}), (second, b"two" * 10, {})])
    assert files(root / "tmp") == []
    assert cache.known(first) == blob_path(root, first).exists()
    assert cache.total_bytes == sum(p.stat().st_size for p in blob_files(root))


# ---------------------------------------------------------------------------------------------------- DiskCache: discard


async def test_discard_removes_an_entry(root):
    cache = await started(root)
    keep = await put(cache, "keep", b"k" * 10)
    gone = await put(cache, "gone", b"g" * 20)
    await cache.store_blobs([("gone blob", b"b" * 30, {}), ("kept blob", b"c" * 5, {})])
    kept_blob_size = blob_path(root, "kept blob").stat().st_size

    await cache.discard("gone")
    await cache.discard("gone blob")
    assert await cache.open("gone") is None
    assert await cache.read_blob("gone blob") is None
    assert not gone.path.exists() and not sidecar_of(gone).exists()
    assert not blob_path(root, "gone blob").exists()
    assert not cache.known("gone") and not cache.known("gone blob")
    assert keep.path.exists() and blob_path(root, "kept blob").exists()
    assert cache.total_bytes == 10 + kept_blob_size == bytes_on_disk(root)
    await cache.discard("never stored")  # no error
    assert cache.total_bytes == 10 + kept_blob_size


# ---------------------------------------------------------------------------------------------------- DiskCache: restarts and processes


async def test_a_restart_finds_the_entries(root):
    first = await started(root)
    bodies = {f"key {n}": os.urandom(100 + n) for n in range(5)}
    stored = {key: await put(first, key, body, {"n": key}) for key, body in bodies.items()}
    blobs = [(f"blob {n}", os.urandom(50 + n), {"n": n}) for n in range(5)]
    await first.store_blobs(blobs)

    second = await started(root)
    assert second.total_bytes == first.total_bytes == bytes_on_disk(root)
    assert second.total_bytes == sum(map(len, bodies.values())) + sum(p.stat().st_size for p in blob_files(root))
    for key, body in bodies.items():
        assert second.known(key)
        opened = await second.open(key)
        assert opened is not None
        assert (opened.path, opened.size, opened.digest, opened.meta) == (
            stored[key].path, len(body), blake(body), {"n": key})
        assert opened.path.read_bytes() == body
    for key, body, meta in blobs:
        assert second.known(key)
        assert await second.read_blob(key) == (body, meta)


async def test_two_instances_on_one_directory_see_each_others_files(root):
    a = await started(root)
    b = await started(root)

    await put(a, "from a", b"A" * 30, {"by": "a"})
    assert not b.known("from a")
    assert (await b.open("from a")).size == 30
    assert b.total_bytes == 30  # b learned about it when it used it
    assert b.known("from a")

    await put(b, "from b", b"B" * 50, {"by": "b"})
    opened = await a.open("from b")
    assert (opened.digest, opened.meta) == (blake(b"B" * 50), {"by": "b"})

    # b replaces a's entry; a sees the new bytes (and does not take them for damage)
    await put(b, "from a", b"a2" * 20, {"by": "b"})
    opened = await a.open("from a")
    assert opened.digest == blake(b"a2" * 20) and opened.path.read_bytes() == b"a2" * 20
    assert opened.meta == {"by": "b"}

    # a discards; b misses
    await a.discard("from b")
    assert await b.open("from b") is None
    assert not b.known("from b")


async def test_two_instances_on_one_directory_see_each_others_blobs(root):
    a = await started(root)
    b = await started(root)

    await a.store_blobs([("from a", b"A" * 30, {"by": "a"}), ("also from a", b"AA", {})])
    assert not b.known("from a")  # b never saw it, and yet can read it
    assert await b.read_blob("from a") == (b"A" * 30, {"by": "a"})
    assert b.known("from a")
    assert not b.known("also from a")

    await b.store_blobs([("from b", b"B" * 50, {"by": "b"})])
    assert not a.known("from b")
    assert await a.read_blob("from b") == (b"B" * 50, {"by": "b"})

    # b replaces a's blob; a sees the new bytes (and does not take them for damage)
    await b.store_blobs([("from a", b"a2" * 20, {"by": "b"})])
    assert await a.read_blob("from a") == (b"a2" * 20, {"by": "b"})
    assert await a.read_blob("from a") == (b"a2" * 20, {"by": "b"})

    # a discards; b misses, and forgets it
    await a.discard("from b")
    assert await b.read_blob("from b") is None
    assert not b.known("from b")
    assert await b.read_blob("also from a") == (b"AA", {})


async def test_a_blob_learned_from_another_instance_counts_with_its_file_size(root):
    a = await started(root)
    b = await started(root)
    await a.store_blobs([("k", b"x" * 100, {"content_type": "image/jpeg"})])
    assert await b.read_blob("k") is not None
    assert b.total_bytes == a.total_bytes == bytes_on_disk(root)


async def test_open_and_read_blob_work_before_start_on_an_existing_directory(root):
    first = await started(root)
    await put(first, "k", b"body")
    await first.store_blobs([("b", b"blob", {})])
    fresh = DiskCache(root, 1 << 20)
    assert (await fresh.open("k")).size == 4
    assert await fresh.read_blob("b") == (b"blob", {})


async def test_store_blobs_works_before_start(root):
    fresh = DiskCache(root, 1 << 20)
    await fresh.store_blobs([("b", b"blob", {})])
    assert await fresh.read_blob("b") == (b"blob", {})
    assert (await started(root)).known("b")


# ---------------------------------------------------------------------------------------------------- DiskCache: damage to file entries


async def test_truncated_data_is_a_miss_and_removed(root):
    cache = await started(root)
    entry = await put(cache, "k", b"0123456789" * 10)
    with open(entry.path, "r+b") as data:
        data.truncate(37)
    assert await cache.open("k") is None
    assert not entry.path.exists() and not sidecar_of(entry).exists()
    assert cache.total_bytes == 0
    assert await cache.open("k") is None
    # and the caller can rebuild it
    await put(cache, "k", b"rebuilt")
    assert (await cache.open("k")).path.read_bytes() == b"rebuilt"
    assert cache.total_bytes == 7


async def test_flipped_bytes_open_verifies_once_per_process_so_a_fresh_instance_catches_it(root):
    cache = await started(root)
    entry = await put(cache, "k", b"frames" * 50)
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
    await put(cache, "k", b"abc" * 100)
    fresh = await started(root)
    first = await fresh.open("k")
    flip_keeping_mtime(first.path)
    assert await fresh.open("k") is not None  # verified already, same mtime and size
    assert await (await started(root)).open("k") is None  # a new process checks again


async def test_deleted_sidecar_is_a_miss_and_the_orphan_data_goes_at_start(root):
    cache = await started(root)
    entry = await put(cache, "k", b"body" * 10)
    sidecar_of(entry).unlink()
    assert await cache.open("k") is None
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
async def test_garbage_sidecar_is_a_miss_and_removed(root, garbage):
    cache = await started(root)
    entry = await put(cache, "k", b"data" * 100)
    other = await put(cache, "other", b"o" * 10)
    sidecar_of(entry).write_bytes(garbage)
    assert await cache.open("k") is None
    assert not entry.path.exists() and not sidecar_of(entry).exists()
    assert cache.total_bytes == 10
    assert (await cache.open("other")).path.read_bytes() == b"o" * 10  # the neighbour is untouched
    assert other.path.exists()


async def test_sidecar_of_another_key_is_a_miss_and_removed(root):
    cache = await started(root)
    entry = await put(cache, "k", b"same size!")
    other = await put(cache, "other", b"equal size")  # same length, so only the key tells them apart
    shutil.copyfile(sidecar_of(other), sidecar_of(entry))
    assert await cache.open("k") is None
    assert not entry.path.exists() and not sidecar_of(entry).exists()
    assert (await cache.open("other")).path.read_bytes() == b"equal size"
    assert cache.total_bytes == 10


async def test_sidecar_with_a_wrong_digest_is_a_miss_and_removed(root):
    cache = await started(root)
    entry = await put(cache, "k", b"x" * 64)
    record = json.loads(sidecar_of(entry).read_text())
    record["digest"] = blake(b"something else")
    sidecar_of(entry).write_text(json.dumps(record))
    checker = await started(root)  # a fresh process, so open() hashes
    assert await checker.open("k") is None
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


async def test_start_removes_tmp_leftovers_of_writers_that_are_gone(root):
    tmp = root / "tmp"
    tmp.mkdir(parents=True)
    dead = tmp / f"{NO_SUCH_PID}-0123abcd.part"  # its writer is gone: removed however fresh
    ours = tmp / f"{os.getpid()}-4567cdef.part"  # an earlier process with our pid: nothing of ours is running yet
    live = tmp / f"{os.getppid()}-89abcdef.part"  # a live writer: left alone while fresh
    live_but_old = tmp / f"{os.getppid()}-fedcba98.part"
    for path in (dead, ours, live, live_but_old):
        path.write_bytes(b"partial blob or file")
    age(live_but_old, HOUR + 60)
    await started(root)
    assert not dead.exists() and not ours.exists() and not live_but_old.exists()
    assert live.exists()


async def test_start_removes_old_data_without_sidecar_and_keeps_fresh(root):
    cache = await started(root)
    old = await put(cache, "old orphan", b"o" * 10)
    new = await put(cache, "new orphan", b"n" * 20)
    kept = await put(cache, "complete", b"c" * 30)
    await cache.store_blobs([("old blob", b"b" * 40, {})])
    sidecar_of(old).unlink()
    sidecar_of(new).unlink()
    age(old.path, 2 * HOUR)
    age(kept.path, 2 * HOUR)  # old data is fine when its sidecar is there
    age(blob_path(root, "old blob"), 2 * HOUR)  # and a blob needs no sidecar

    restarted = await started(root)
    assert not old.path.exists()
    assert new.path.exists()  # perhaps a writer in another process is about to add its sidecar
    assert kept.path.exists()
    assert restarted.total_bytes == 30 + blob_path(root, "old blob").stat().st_size  # only complete entries
    assert (await restarted.open("complete")).path.read_bytes() == b"c" * 30
    assert await restarted.read_blob("old blob") == (b"b" * 40, {})


async def test_start_removes_a_sidecar_without_data(root):
    cache = await started(root)
    entry = await put(cache, "k", b"body")
    entry.path.unlink()
    restarted = await started(root)
    assert not sidecar_of(entry).exists()
    assert restarted.total_bytes == 0


async def test_start_evicts_the_oldest_when_over_budget(root):
    cache = await started(root)
    entries = [await put(cache, f"k{n}", bytes([n]) * 100) for n in range(5)]
    for n, entry in enumerate(entries):  # recency lives in the sidecars' mtimes
        age(sidecar_of(entry), (10 - n) * 60)
    small = await started(root, max_bytes=300)
    assert small.total_bytes <= 300
    assert small.total_bytes == bytes_on_disk(root)
    survivors = [n for n, entry in enumerate(entries) if entry.path.exists()]
    assert survivors == [3, 4]  # the oldest went first, down to 90% of the budget


async def test_start_evicts_the_oldest_of_blobs_and_files_when_over_budget(root, tmp_path):
    size = await blob_file_size(tmp_path / "scratch", "k0", b"\0" * 100)  # every entry takes this much
    cache = await started(root)
    for n in range(6):  # blobs (even n) and files (odd n), oldest first
        key = f"k{n}"
        if n % 2 == 0:
            await cache.store_blobs([(key, bytes([n]) * 100, {})])
            age(blob_path(root, key), (10 - n) * 60)  # a blob's recency is its file's mtime
        else:
            entry = await put(cache, key, bytes([n]) * size)
            age(sidecar_of(entry), (10 - n) * 60)
    assert cache.total_bytes == 6 * size == bytes_on_disk(root)

    small = await started(root, max_bytes=size * 7 // 2)  # 6 entries > 3.5: down to 3.15 entries, so 3 stay
    assert small.total_bytes == 3 * size == bytes_on_disk(root)
    assert [n for n in range(6) if on_disk(root, f"k{n}")] == [3, 4, 5]
    assert [n for n in range(6) if small.known(f"k{n}")] == [3, 4, 5]
    assert await small.read_blob("k4") == (bytes([4]) * 100, {})


@pytest.mark.parametrize("uptime", [
    pytest.param(30 * 24 * HOUR, id="host-up-for-a-month"),
    pytest.param(600.0, id="host-booted-10-minutes-ago"),
])
async def test_reads_are_remembered_across_a_restart(root, monkeypatch, uptime):
    clock = SimpleNamespace(time=time.time, monotonic=lambda: uptime)
    monkeypatch.setattr(disk_module, "time", clock)
    writer = await started(root)
    read_later = await put(writer, "read later", b"r" * 100)
    never_read = await put(writer, "never read", b"n" * 100)
    age(sidecar_of(read_later), 3 * HOUR)
    age(sidecar_of(never_read), 2 * HOUR)

    process = await started(root)  # a later process reads one of them
    assert await process.open("read later") is not None

    restarted = await started(root, max_bytes=150)  # room for one: the least recently used goes
    assert (await restarted.open("read later")).path.read_bytes() == b"r" * 100
    assert await restarted.open("never read") is None


async def test_blob_reads_are_remembered_across_a_restart(root, monkeypatch):
    clock = SimpleNamespace(time=time.time, monotonic=lambda: 30 * 24 * HOUR)
    monkeypatch.setattr(disk_module, "time", clock)
    writer = await started(root)
    await writer.store_blobs([("read later", b"r" * 100, {}), ("never read", b"n" * 100, {})])
    age(blob_path(root, "read later"), 3 * HOUR)
    age(blob_path(root, "never read"), 2 * HOUR)

    process = await started(root)  # a later process reads one of them
    assert await process.read_blob("read later") is not None

    size = blob_path(root, "read later").stat().st_size
    restarted = await started(root, max_bytes=size * 3 // 2)  # room for one: the least recently used goes
    assert await restarted.read_blob("read later") == (b"r" * 100, {})
    assert await restarted.read_blob("never read") is None


# ---------------------------------------------------------------------------------------------------- DiskCache: eviction


@pytest.mark.parametrize("kinds", ["FFFF", "BBBB", "BFBF", "FBFB", "FBBF"])
async def test_eviction_removes_least_recently_used_first(root, tmp_path, kinds):
    """Four entries of one size, blobs (B) or files (F), in a budget for three and a half."""
    size = await blob_file_size(tmp_path / "scratch", "a", b"a" * 250)
    cache = await started(root, max_bytes=size * 7 // 2)
    kind_of = dict(zip("abcd", kinds))

    async def add(key: str) -> None:
        if kind_of[key] == "B":
            await cache.store_blobs([(key, key.encode() * 250, {})])
        else:
            await put(cache, key, key.encode() * size)

    async def use(key: str):
        return await (cache.read_blob(key) if kind_of[key] == "B" else cache.open(key))

    for key in "abc":
        await add(key)
    assert cache.total_bytes == 3 * size == bytes_on_disk(root)
    assert await use("a") is not None  # a is now more recent than b
    await add("d")  # 4 > 3.5 entries: evict down to 90% (3.15), so one goes

    assert cache.total_bytes == 3 * size
    assert not cache.known("b")
    await until(lambda: not on_disk(root, "b"))
    assert all(on_disk(root, key) for key in "acd")
    assert await use("b") is None
    for key in "acd":
        found = await use(key)
        body = found[0] if kind_of[key] == "B" else found.path.read_bytes()
        assert body == key.encode() * (250 if kind_of[key] == "B" else size)
    assert cache.total_bytes == bytes_on_disk(root) == 3 * size


async def test_a_blob_read_recently_survives_eviction(root, tmp_path):
    size = await blob_file_size(tmp_path / "scratch", "k0", b"\0" * 100)
    cache = await started(root, max_bytes=size * 23 // 4)  # 5 fit; at 6, down to 90%: one goes
    await cache.store_blobs([(f"k{n}", bytes([n]) * 100, {}) for n in range(5)])
    assert await cache.read_blob("k0") is not None  # the oldest, but just read
    await cache.store_blobs([("k5", b"\5" * 100, {})])
    await until(lambda: not on_disk(root, "k1"))
    assert cache.known("k0")
    assert await cache.read_blob("k0") == (b"\0" * 100, {})
    assert [n for n in range(6) if cache.known(f"k{n}")] == [0, 2, 3, 4, 5]


async def test_total_bytes_stays_under_budget_and_matches_the_disk(root):
    cache = await started(root, max_bytes=2000)
    hot = (b"h" * 120, {"hot": True})
    await cache.store_blobs([("hot", *hot)])
    for n in range(30):
        if n % 2:
            await put(cache, f"f{n}", os.urandom(37 + n * 7))
        else:
            await cache.store_blobs([(f"b{n}", os.urandom(20 + n * 5), {"n": n}), (f"c{n}", os.urandom(30), {})])
        assert cache.total_bytes <= 2000
        if n % 3 == 0:
            assert await cache.read_blob("hot") == hot  # keep one blob hot
    assert await cache.read_blob("hot") == hot  # the hot entry survived all that
    await until(lambda: bytes_on_disk(root) == cache.total_bytes)
    await asyncio.sleep(0.02)
    assert bytes_on_disk(root) == cache.total_bytes <= 2000
    sidecars = [p for p in files(root / "data") if p.suffix == ".json"]
    assert sorted(p.with_suffix("") for p in sidecars) == [p for p in data_files(root) if p.suffix != ".blob"]
    assert len(blob_files(root)) > 1 and sidecars  # both kinds are still there
    assert files(root / "tmp") == []
    # and a restart agrees
    assert (await started(root, max_bytes=2000)).total_bytes == cache.total_bytes


async def test_eviction_through_store_stream_and_store_file(root):
    cache = await started(root, max_bytes=500)
    first = await cache.store_stream("s", chunks_of(b"s" * 200), expected_size=200)
    await cache.store_file("f", lambda path: path.write_bytes(b"f" * 200))
    await cache.store_stream("t", chunks_of(b"t" * 200))
    assert cache.total_bytes == 400
    await until(lambda: not first.path.exists())
    assert bytes_on_disk(root) == 400


async def test_a_batch_bigger_than_the_budget_keeps_the_last_blob(root):
    cache = await started(root, max_bytes=1000)
    await cache.store_blobs([(f"k{n}", bytes([n]) * 400, {}) for n in range(5)])
    assert cache.total_bytes <= 1000
    assert cache.known("k4")
    assert await cache.read_blob("k4") == (b"\4" * 400, {})
    await until(lambda: bytes_on_disk(root) == cache.total_bytes)


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
