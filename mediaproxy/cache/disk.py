"""A byte-bounded LRU of files on disk that survives restarts and is never seen half-written.

Each entry is a data file and a JSON sidecar `{key, size, digest, meta}` under `data/ab/<sha256 of key>`.
Writes go to `tmp/` and are renamed into place (data first, sidecar last), so a reader sees a complete entry or
none; a sidecar whose size or BLAKE2 digest does not match its data (a torn write, a disk fault, a hand edit) is
treated as a miss and the entry removed, so the caller rebuilds it. Several processes may share one directory:
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
            _remove_if_older(leftover, now - _STALE_TMP_SECONDS)
        found: list[tuple[float, str, int]] = []
        for shard in self._data.iterdir():
            if not shard.is_dir():
                continue
            for path in shard.iterdir():
                if path.suffix == ".json":
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

    async def read_bytes(self, key: str) -> tuple[bytes, dict[str, Any]] | None:
        """A small entry's bytes (digest checked on every read), or None."""
        name = _name(key)
        found = await asyncio.to_thread(self._read_sync, name, key)
        return self._looked_up(name, found)

    def _read_sync(self, name: str, key: str) -> tuple[bytes, dict[str, Any]] | None | _Broken:
        data, sidecar = self._paths(name)
        try:
            record = json.loads(sidecar.read_bytes())
            body = data.read_bytes()
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return self._broken(name, "unreadable entry")
        if (not isinstance(record, dict) or record.get("key") != key or record.get("size") != len(body)
                or hashlib.blake2b(body, digest_size=16).hexdigest() != record.get("digest")):
            return self._broken(name, "does not match its sidecar")
        return body, record.get("meta") or {}

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
            size = found.size if isinstance(found, CachedFile) else len(found[0])
            self._used(name, size)
        return found

    # ----------------------------------------------------------------------------------------------- writing

    async def store_bytes(self, key: str, body: bytes, meta: dict[str, Any] | None = None) -> CachedFile:
        name = _name(key)
        entry = await asyncio.to_thread(self._store_bytes_sync, name, key, body, meta or {})
        self._added(name, entry.size)
        return entry

    def _store_bytes_sync(self, name: str, key: str, body: bytes, meta: dict[str, Any]) -> CachedFile:
        tmp = self._tmp_path()
        tmp.write_bytes(body)
        return self._commit(name, key, tmp, len(body), hashlib.blake2b(body, digest_size=16).hexdigest(), meta)

    async def store_stream(self, key: str, chunks: AsyncIterator[bytes], meta: dict[str, Any] | None = None, *,
                           expected_size: int | None = None, max_bytes: int | None = None,
                           mtime: float | None = None) -> CachedFile:
        """Write a stream (an upstream body) into the cache, dated `mtime` (e.g. the upstream's Last-Modified).

        Raises TooBig / SizeMismatch, storing nothing.
        """
        name = _name(key)
        tmp = self._tmp_path()
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
        self._added(name, entry.size)
        return entry

    async def store_file(self, key: str, write: Callable[[Path], dict | None], meta: dict[str, Any] | None = None,
                         *, run: Callable | None = None) -> CachedFile:
        """Let `write(tmp_path)` produce the file (e.g. a remux, run by `run` on a worker pool), then commit it.

        A dict that `write` returns is added to the entry's meta.
        """
        name = _name(key)
        tmp = self._tmp_path()
        try:
            written = await (asyncio.to_thread(write, tmp) if run is None else run(write, tmp))
            meta = {**(meta or {}), **(written if isinstance(written, dict) else {})}
            entry = await asyncio.to_thread(self._commit_written, name, key, tmp, meta)
        except BaseException:
            await asyncio.to_thread(_unlink, tmp)
            raise
        self._added(name, entry.size)
        return entry

    def _commit_written(self, name: str, key: str, tmp: Path, meta: dict[str, Any]) -> CachedFile:
        return self._commit(name, key, tmp, tmp.stat().st_size, _file_digest(tmp), meta)

    def _commit(self, name: str, key: str, tmp: Path, size: int, digest: str, meta: dict[str, Any],
                mtime: float | None = None) -> CachedFile:
        data, sidecar = self._paths(name)
        data.parent.mkdir(parents=True, exist_ok=True)
        _unlink(sidecar)  # a reader must never pair the old sidecar with the new data
        os.replace(tmp, data)
        sidecar_tmp = self._tmp_path()
        sidecar_tmp.write_text(json.dumps({"key": key, "size": size, "digest": digest, "meta": meta}))
        os.replace(sidecar_tmp, sidecar)
        if mtime is not None:  # dated only now: until its sidecar exists, new data must not look like an old orphan
            os.utime(data, (mtime, mtime))
        stat = data.stat()
        self._verified.add((name, stat.st_mtime_ns, stat.st_size))
        return CachedFile(data, size, stat.st_mtime_ns, digest, meta)

    def _tmp_path(self) -> Path:
        self._tmp.mkdir(parents=True, exist_ok=True)
        return self._tmp / f"{uuid.uuid4().hex}.part"

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
            self._touched[name] = now
            try:
                os.utime(self._paths(name)[1])
            except OSError:
                pass

    def _added(self, name: str, size: int) -> None:
        self.total_bytes += size - self._index.pop(name, 0)
        self._index[name] = size
        self._touched[name] = time.monotonic()
        victims = self._choose_victims(keep=name)
        if victims:
            asyncio.get_running_loop().run_in_executor(None, self._delete_many, victims)

    def _choose_victims(self, keep: str | None = None) -> list[str]:
        """Forget least recently used entries until 90% of the budget is left; the caller deletes their files.

        `keep` (the entry just written, which a caller is about to use) is never chosen.
        """
        if self.total_bytes <= self.max_bytes:
            return []
        target = int(self.max_bytes * 0.9)
        victims = []
        while self.total_bytes > target and self._index:
            name = next(iter(self._index))
            if name == keep:
                if len(self._index) == 1:
                    break
                self._index.move_to_end(name)
                continue
            size = self._index.pop(name)
            self._touched.pop(name, None)
            self.total_bytes -= size
            victims.append(name)
        return victims

    def _delete_many(self, names: list[str]) -> None:
        for name in names:
            self._delete_files(name)

    def _delete_files(self, name: str) -> None:
        data, sidecar = self._paths(name)
        _unlink(sidecar)
        _unlink(data)


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


def _remove_if_older(path: Path, cutoff: float) -> None:
    try:
        if path.is_file() and path.stat().st_mtime < cutoff:
            path.unlink()
    except FileNotFoundError:
        pass
