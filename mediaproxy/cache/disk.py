"""A byte-bounded LRU of files on disk that survives restarts and is never seen half-written.

Two kinds of entries live under `data/ab/<sha256 of key>`:
- files (originals, clips: served by path): a data file and a JSON sidecar `{key, size, digest, meta}`;
- blobs (rendered results: read whole): one `.blob` file, a header with the same fields, then the bytes.
Writes go to `tmp/` and are renamed into place (a file's data first, its sidecar last), so a reader sees a
complete entry or none; an entry whose size or BLAKE2 digest does not match (a torn write, a disk fault, a hand
edit) is treated as a miss and removed, so the caller rebuilds it. Several processes may share one directory:
every operation tolerates a file that another process just replaced or evicted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os

log = logging.getLogger(__name__)

_TOUCH_INTERVAL = 3600.0  # seconds between persisting an entry's recency (the sidecar's mtime)
_STALE_TMP_SECONDS = 3600.0  # older leftovers in tmp/ belong to no live writer
_VERIFY_CHUNK = 1 << 20
_BLOB_MAGIC = b"MPB1"
_BLOB = ".blob"


@dataclass(frozen=True)
class CachedFile:
    path: Path
    size: int
    mtime_ns: int
    digest: str  # BLAKE2b-128 of the bytes, hex
    meta: dict[str, Any] = field(default_factory=dict)


class TooBig(Exception):
    """The stream passed the byte limit the caller set; nothing was stored."""


class SizeMismatch(Exception):
    """The stream ended with another length than the caller expected; nothing was stored."""


class DiskCache:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.root = directory
        self.max_bytes = max_bytes
        self._data = directory / "data"
        self._tmp = directory / "tmp"
        self._index: OrderedDict[str, int] = OrderedDict()  # name → bytes, least recently used first
        self._touched: dict[str, float] = {}
        self._verified: set[tuple[str, int, int]] = set()  # (name, mtime_ns, size) whose digest was checked
        self.total_bytes = 0

    # ----------------------------------------------------------------------------------------------- start-up

    async def start(self) -> None:
        await asyncio.to_thread(self._scan)

    def _scan(self) -> None:
        """Build the LRU index from what is on disk; drop leftovers of interrupted writes."""
        self._data.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for leftover in self._tmp.iterdir():
            if not _writer_alive(leftover):
                _unlink(leftover)  # its writer is gone (a crash, kill -9): it will never be finished
            else:
                _remove_if_older(leftover, now - _STALE_TMP_SECONDS)
        found: list[tuple[float, str, int]] = []
        for shard in self._data.iterdir():
            if not shard.is_dir():
                continue
            for path in shard.iterdir():
                if path.suffix == _BLOB:
                    try:
                        stat = path.stat()
                    except FileNotFoundError:
                        continue
                    found.append((stat.st_mtime, path.stem, stat.st_size))
                elif path.suffix == ".json":
                    data = path.with_suffix("")
                    try:
                        found.append((path.stat().st_mtime, path.stem, data.stat().st_size))
                    except FileNotFoundError:
                        _unlink(path)  # a sidecar without data
                elif not path.with_suffix(".json").exists():
                    _remove_if_older(path, now - _STALE_TMP_SECONDS)  # data whose sidecar was never written
        for _, name, size in sorted(found):
            self._index[name] = size
            self.total_bytes += size
        self._delete_many(self._choose_victims())

    async def close(self) -> None:
        """At shutdown: remove this process's unfinished temporary files (a write still stuck will never land)."""
        await asyncio.to_thread(self._remove_own_tmp)

    def _remove_own_tmp(self) -> None:
        for leftover in self._tmp.glob(f"{os.getpid()}-*.part"):
            _unlink(leftover)

    # ----------------------------------------------------------------------------------------------- reading

    async def open(self, key: str, *, verify: bool = True) -> CachedFile | None:
        """The complete entry for key, or None. With verify, its digest is checked once per process."""
        name = _name(key)
        entry = await asyncio.to_thread(self._open_sync, name, key, verify)
        return self._looked_up(name, entry)

    def _open_sync(self, name: str, key: str, verify: bool) -> CachedFile | None | _Broken:
        data, sidecar = self._paths(name)
        try:
            record = json.loads(sidecar.read_bytes())
            stat = data.stat()
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return self._broken(name, "unreadable sidecar")
        if not isinstance(record, dict) or record.get("key") != key or record.get("size") != stat.st_size:
            return self._broken(name, "size or key does not match its sidecar")
        if verify and (name, stat.st_mtime_ns, stat.st_size) not in self._verified:
            if _file_digest(data) != record.get("digest"):
                return self._broken(name, "digest does not match")
            self._verified.add((name, stat.st_mtime_ns, stat.st_size))
        return CachedFile(data, stat.st_size, stat.st_mtime_ns, str(record.get("digest")), record.get("meta") or {})

    def known(self, key: str) -> bool:
        """Whether this process has seen the entry (at start-up or since). False may still be on disk, written by
        another worker: callers that can rebuild cheaply use it to skip a disk lookup that would miss."""
        return _name(key) in self._index

    async def read_blob(self, key: str) -> tuple[bytes, dict[str, Any]] | None:
        """A blob's bytes and meta (digest checked on every read), or None."""
        name = _name(key)
        found = self._looked_up(name, await asyncio.to_thread(self._read_blob_sync, name, key))
        return None if found is None else (found[0], found[1])

    def _read_blob_sync(self, name: str, key: str) -> tuple[bytes, dict[str, Any], int] | None | _Broken:
        try:
            raw = self._blob_path(name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError:
            return self._broken(name, "unreadable blob")
        try:
            if raw[:4] != _BLOB_MAGIC:
                raise ValueError("no blob header")
            header_end = 8 + int.from_bytes(raw[4:8], "big")
            record = json.loads(raw[8:header_end])
            body = raw[header_end:]
        except ValueError:
            return self._broken(name, "unreadable blob header")
        if (not isinstance(record, dict) or record.get("key") != key or record.get("size") != len(body)
                or hashlib.blake2b(body, digest_size=16).hexdigest() != record.get("digest")):
            return self._broken(name, "blob does not match its header")
        return body, record.get("meta") or {}, len(raw)

    def _broken(self, name: str, reason: str) -> _Broken:
        """(worker thread) remove a damaged entry's files; the event loop forgets it in `_looked_up`."""
        log.warning("disk cache: removing damaged entry %s: %s", name, reason)
        self._delete_files(name)
        return _BROKEN

    def _looked_up(self, name: str, found):
        if found is None or found is _BROKEN:  # gone (evicted by another process, or damaged and removed)
            self.total_bytes -= self._index.pop(name, 0)
            return None
        if found is not None:
            self._used(name, found.size if isinstance(found, CachedFile) else found[2])
        return found

    # ----------------------------------------------------------------------------------------------- writing

    async def store_blobs(self, blobs: list[tuple[str, bytes, dict[str, Any]]]) -> None:
        """Write (key, bytes, meta) blobs in one trip to a worker thread (results are written in batches).

        A failure (a full disk) stops the batch and is raised; what was written before it counts.
        """
        written, error = await asyncio.to_thread(self._store_blobs_sync, blobs)
        if written:
            self._added(*written)
        if error is not None:
            raise error

    def _store_blobs_sync(self, blobs: list[tuple[str, bytes, dict[str, Any]]]
                          ) -> tuple[list[tuple[str, int]], OSError | None]:
        written = []
        for key, body, meta in blobs:
            name = _name(key)
            header = json.dumps({"key": key, "size": len(body), "digest": hashlib.blake2b(body, digest_size=16)
                                 .hexdigest(), "meta": meta}).encode()
            tmp = None
            try:
                tmp = self._write_tmp(b"".join((_BLOB_MAGIC, len(header).to_bytes(4, "big"), header, body)))
                target = self._blob_path(name)
                try:
                    os.replace(tmp, target)
                except FileNotFoundError:  # the first entry of its shard
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(tmp, target)
            except OSError as error:
                if tmp is not None:
                    _unlink(tmp)
                return written, error
            written.append((name, 8 + len(header) + len(body)))
        return written, None

    async def store_stream(self, key: str, chunks: AsyncIterator[bytes], meta: dict[str, Any] | None = None, *,
                           expected_size: int | None = None, max_bytes: int | None = None,
                           mtime: float | None = None) -> CachedFile:
        """Write a stream (an upstream body) into the cache, dated `mtime` (e.g. the upstream's Last-Modified).

        Raises TooBig / SizeMismatch, storing nothing.
        """
        name = _name(key)
        tmp = self._tmp_path()
        await asyncio.to_thread(self._tmp.mkdir, parents=True, exist_ok=True)
        digest = hashlib.blake2b(digest_size=16)
        size = 0
        try:
            async with aiofiles.open(tmp, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise TooBig(f"more than {max_bytes} bytes")
                    digest.update(chunk)
                    await out.write(chunk)
            if expected_size is not None and size != expected_size:
                raise SizeMismatch(f"got {size} bytes, expected {expected_size}")
            entry = await asyncio.to_thread(self._commit, name, key, tmp, size, digest.hexdigest(), meta or {}, mtime)
        except BaseException:
            await asyncio.to_thread(_unlink, tmp)
            raise
        self._added((name, entry.size))
        return entry

    async def store_file(self, key: str, write: Callable[[Path], dict | None], meta: dict[str, Any] | None = None,
                         *, run: Callable | None = None) -> CachedFile:
        """Let `write(tmp_path)` produce the file (e.g. a remux, run by `run` on a worker pool), then commit it.

        A dict that `write` returns is added to the entry's meta.
        """
        name = _name(key)
        tmp = self._tmp_path()
        await asyncio.to_thread(self._tmp.mkdir, parents=True, exist_ok=True)
        try:
            written = await (asyncio.to_thread(write, tmp) if run is None else run(write, tmp))
            meta = {**(meta or {}), **(written if isinstance(written, dict) else {})}
            entry = await asyncio.to_thread(self._commit_written, name, key, tmp, meta)
        except BaseException:
            await asyncio.to_thread(_unlink, tmp)
            raise
        self._added((name, entry.size))
        return entry

    def _commit_written(self, name: str, key: str, tmp: Path, meta: dict[str, Any]) -> CachedFile:
        return self._commit(name, key, tmp, tmp.stat().st_size, _file_digest(tmp), meta)

    def _commit(self, name: str, key: str, tmp: Path, size: int, digest: str, meta: dict[str, Any],
                mtime: float | None = None) -> CachedFile:
        data, sidecar = self._paths(name)
        _unlink(sidecar)  # a reader must never pair the old sidecar with the new data
        try:
            os.replace(tmp, data)
        except FileNotFoundError:  # the first entry of its shard
            data.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, data)
        sidecar_tmp = self._write_tmp(json.dumps({"key": key, "size": size, "digest": digest, "meta": meta}).encode())
        os.replace(sidecar_tmp, sidecar)
        if mtime is not None:  # dated only now: until its sidecar exists, new data must not look like an old orphan
            os.utime(data, (mtime, mtime))
        stat = data.stat()
        self._verified.add((name, stat.st_mtime_ns, stat.st_size))
        return CachedFile(data, size, stat.st_mtime_ns, digest, meta)

    def _tmp_path(self) -> Path:
        return self._tmp / f"{os.getpid()}-{uuid.uuid4().hex}.part"  # the writer's pid: see _writer_alive

    def _write_tmp(self, body: bytes) -> Path:
        tmp = self._tmp_path()
        try:
            tmp.write_bytes(body)
        except FileNotFoundError:  # tmp/ was removed under us (it is made at start())
            self._tmp.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(body)
        return tmp

    # ----------------------------------------------------------------------------------------------- upkeep

    async def discard(self, key: str) -> None:
        name = _name(key)
        self.total_bytes -= self._index.pop(name, 0)
        await asyncio.to_thread(self._delete_files, name)

    def _paths(self, name: str) -> tuple[Path, Path]:
        data = self._data / name[:2] / name
        return data, data.with_suffix(".json")

    def _used(self, name: str, size: int) -> None:
        if name in self._index:
            self._index.move_to_end(name)
        else:  # written by another process sharing the directory
            self._index[name] = size
            self.total_bytes += size
        now = time.monotonic()
        if now - self._touched.get(name, -math.inf) > _TOUCH_INTERVAL:
            self._touched[name] = now  # recency survives a restart as the mtime of the sidecar (files) or blob
            for path in (self._paths(name)[1], self._blob_path(name)):
                try:
                    os.utime(path)
                    break
                except OSError:
                    continue

    def _added(self, *entries: tuple[str, int]) -> None:
        """Count freshly written (name, size) entries, then evict for them (them last, the newest never)."""
        now = time.monotonic()
        for name, size in entries:
            self.total_bytes += size - self._index.pop(name, 0)
            self._index[name] = size
            self._touched[name] = now
        victims = self._choose_victims(keep=[name for name, _ in entries])
        if victims:
            asyncio.get_running_loop().run_in_executor(None, self._delete_many, victims)

    def _choose_victims(self, keep: list[str] = ()) -> list[str]:
        """Forget least recently used entries until 90% of the budget is left; the caller deletes their files.

        Entries in `keep` (just written, oldest first) go only when everything else has gone, and the last never:
        a caller is about to use it.
        """
        if self.total_bytes <= self.max_bytes:
            return []
        target = int(self.max_bytes * 0.9)
        protected = set(keep)
        order = [name for name in self._index if name not in protected] + [n for n in keep[:-1] if n in self._index]
        victims = []
        for name in order:
            if self.total_bytes <= target:
                break
            self.total_bytes -= self._index.pop(name)
            self._touched.pop(name, None)
            victims.append(name)
        return victims

    def _delete_many(self, names: list[str]) -> None:
        for name in names:
            self._delete_files(name)

    def _blob_path(self, name: str) -> Path:
        return self._data / name[:2] / (name + _BLOB)

    def _delete_files(self, name: str) -> None:
        data, sidecar = self._paths(name)
        _unlink(sidecar)
        _unlink(data)
        _unlink(self._blob_path(name))


class _Broken:
    pass


_BROKEN = _Broken()


def _name(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as source:
        while chunk := source.read(_VERIFY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _writer_alive(leftover: Path) -> bool:
    """Whether the process that named this temporary file may still be writing it (called at start-up)."""
    pid, _, _ = leftover.name.partition("-")
    if not pid.isdigit():
        return True  # not our naming: left to the age rule
    if int(pid) == os.getpid():
        return False  # nothing of ours is in progress yet: an earlier process that had our pid left it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_if_older(path: Path, cutoff: float) -> None:
    try:
        if path.is_file() and path.stat().st_mtime < cutoff:
            path.unlink()
    except FileNotFoundError:
        pass
