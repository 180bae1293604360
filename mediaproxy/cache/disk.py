"""The node's disk cache: self-checking files in namespaces with their own byte budgets, one index for all workers.

    originals   blocks of originals read from an http origin (fixed-size pieces, see store/)
    results     rendered thumbnails, remuxed clips
    indexes     built clip indexes

Each entry is one file under `data/ab/<sha256 of namespace|key>`: the body, then a trailer (a JSON header with the
key, the body's size and BLAKE2 digest and the caller's meta; its length; the magic `MPB2`), so a body can be sent
from offset 0 with sendfile. Files are written to `tmp/` and renamed into place under the shared index's write
lock (`index.py`); a file whose trailer, size or digest does not match (a torn write, a disk fault, a hand edit) is
a miss and is removed, so the caller fetches or rebuilds it. Readers keep what they opened: POSIX keeps an evicted
file readable through an open descriptor, and one that is gone before it is opened is simply a miss.

A write that fails (a full disk) is not an error for the request: the caller serves what it has without caching,
the failure is logged at most once a minute, and `/healthz` reports the cache as degraded for a while.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import itertools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .index import PurgeRecord, PurgeRequest, PurgeRow, SharedIndex

log = logging.getLogger(__name__)

NAMESPACES = ("originals", "results", "indexes")
_MAGIC = b"MPB2"
_TRAILER_LIMIT = 1 << 20
_VERIFY_ALWAYS_BELOW = 256 * 1024  # small bodies are checked on every read; larger ones once per process
_STALE_TMP_SECONDS = 3600.0
_DEGRADED_SECONDS = 60.0
_TOUCH_SECONDS = 1.0  # recency of reads reaches the shared index in batches this often
_SCAN_EVERY_SECONDS = 30.0  # workers starting together reconcile the index with the files once
_LOCK_POLL_SECONDS = 0.01


@dataclass(frozen=True)
class Blob:
    body: bytes
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BlobFile:
    """A checked entry to send from its file: bytes [0, size) of `path` are the body."""

    path: Path
    size: int
    meta: dict[str, Any] = field(default_factory=dict)


class DiskCache:
    def __init__(self, directory: Path, budgets: Mapping[str, int]) -> None:
        self.root = directory
        self._data = directory / "data"
        self._tmp = directory / "tmp"
        self.index = SharedIndex(directory / "index.sqlite", budgets)
        self._io = ThreadPoolExecutor(1, thread_name_prefix="mediaproxy-cache")  # every index change, in order
        self._verified: set[tuple[str, int, int, int]] = set()  # (name, inode, mtime_ns, size) checked whole
        self._used: dict[str, float] = {}  # names read since the last flush → when
        self._used_lock = threading.Lock()
        self._flusher: asyncio.Task | None = None
        self._degraded_until = 0.0
        self._degraded_reason = ""
        self._last_failure_log = -_DEGRADED_SECONDS
        self._lock_fd: int | None = None

    # ----------------------------------------------------------------------------------------------- life

    async def start(self) -> None:
        await self._run(self._start)
        self._flusher = asyncio.get_running_loop().create_task(self._flush_recency())

    def _start(self) -> None:
        self._data.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.root / "locks", os.O_RDWR | os.O_CREAT, 0o644)
        now = time.time()
        for leftover in self._tmp.iterdir():
            if not _writer_alive(leftover):
                _unlink(leftover)  # its writer is gone (a crash, kill -9): it will never be finished
            else:
                _remove_if_older(leftover, now - _STALE_TMP_SECONDS)
        marker = self.root / "scanned"
        with open(self.root / "scan.lock", "a") as scan_lock:
            fcntl.flock(scan_lock, fcntl.LOCK_EX)
            try:
                if now - marker.stat().st_mtime < _SCAN_EVERY_SECONDS:
                    return  # a worker starting beside this one has just done it
            except FileNotFoundError:
                pass
            self._reconcile()
            marker.touch()

    def _reconcile(self) -> None:
        """Make the index and the files agree: files the index lost are adopted, rows without a file are dropped,
        and the budgets hold."""
        known = self.index.names()
        on_disk: set[str] = set()
        adopted = []
        for shard in self._data.iterdir():
            if not shard.is_dir():
                continue
            for path in shard.iterdir():
                on_disk.add(path.name)
                if path.name in known:
                    continue
                trailer = _read_trailer(path)
                if trailer is None or trailer[0].get("ns") not in NAMESPACES:
                    _unlink(path)
                    continue
                stat = path.stat()
                adopted.append((trailer[0]["ns"], path.name, stat.st_size, stat.st_mtime))
        self.index.adopt(adopted)
        self.index.remove(name for name in known if name not in on_disk)
        for name in self.index.shrink_to_budgets():
            _unlink(self._path(name))

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        await self._run(self._close)
        self._io.shutdown(wait=False)

    def _close(self) -> None:
        self._write_recency()
        for leftover in self._tmp.glob(f"{os.getpid()}-*.part"):  # this process's unfinished writes
            _unlink(leftover)
        self.index.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ----------------------------------------------------------------------------------------------- reading

    async def read(self, namespace: str, key: str) -> Blob | None:
        """The entry (read and checked on a thread), or None. A miss is found on the event loop: one stat of a
        local file, as nginx's open is, costs far less than the hand-off to a thread and back."""
        if not os.path.exists(self._file(_name(namespace, key))):
            return None
        return await asyncio.to_thread(self.read_sync, namespace, key)

    def read_sync(self, namespace: str, key: str) -> Blob | None:
        """The entry's body and meta, checked; None when absent or damaged (then removed). Any thread."""
        name, path = self._located(namespace, key)
        try:
            with open(path, "rb") as file:
                stat = os.fstat(file.fileno())
                raw = file.read()
        except FileNotFoundError:
            return None
        except OSError as error:
            return self._broken(name, f"unreadable ({error.strerror})")
        parsed = _split(raw)
        if parsed is None:
            return self._broken(name, "no valid trailer")
        header, body = parsed
        if header.get("key") != key or header.get("ns") != namespace:
            return self._broken(name, "trailer of another key")
        checked = (name, stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if len(body) < _VERIFY_ALWAYS_BELOW or checked not in self._verified:
            if hashlib.blake2b(body, digest_size=16).hexdigest() != header.get("digest"):
                return self._broken(name, "digest does not match")
            if len(body) >= _VERIFY_ALWAYS_BELOW:
                self._verified.add(checked)
        self._mark_used(name)
        return Blob(body, header.get("meta") or {})

    async def open_file(self, namespace: str, key: str) -> BlobFile | None:
        """The entry as a file to send (checked whole once per process), or None."""
        return await asyncio.to_thread(self._open_file_sync, namespace, key)

    def _open_file_sync(self, namespace: str, key: str) -> BlobFile | None:
        name, path = self._located(namespace, key)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        checked = (name, stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if checked in self._verified:
            trailer = _read_trailer(path)
            if trailer is not None and trailer[0].get("key") == key:
                self._mark_used(name)
                return BlobFile(path, trailer[1], trailer[0].get("meta") or {})
        blob = self.read_sync(namespace, key)  # reads and checks it whole, once
        if blob is None:
            return None
        self._verified.add(checked)
        return BlobFile(path, len(blob.body), blob.meta)

    def _broken(self, name: str, reason: str) -> None:
        log.warning("disk cache: removing damaged entry %s: %s", name, reason)
        _unlink(self._path(name))
        self._io.submit(self.index.remove, [name])
        return None

    def _mark_used(self, name: str) -> None:
        with self._used_lock:
            self._used[name] = time.time()

    async def _flush_recency(self) -> None:
        while True:
            await asyncio.sleep(_TOUCH_SECONDS)
            await self._run(self._write_recency)

    def _write_recency(self) -> None:
        with self._used_lock:
            used, self._used = self._used, {}
        try:
            self.index.touch(used)
        except Exception as error:  # noqa: BLE001 - recency is best effort (a full disk, a locked database)
            self._failed("recording recency", error)

    # ----------------------------------------------------------------------------------------------- writing

    async def write(self, namespace: str, items: list[tuple[str, bytes, dict[str, Any]]],
                    owner: str | None = None) -> bool:
        """Store (key, body, meta) entries, filed under `owner` (see drop_owned and purge); False when the disk
        refused (logged; the caller carries on)."""
        return await self.write_owned(namespace, [(key, body, meta, owner) for key, body, meta in items])

    async def write_owned(self, namespace: str, items: list[tuple[str, bytes, dict[str, Any], str | None]]) -> bool:
        """Store (key, body, meta, owner) entries, each filed under its own owner, in one index transaction."""
        return await self._run(self._write_items, namespace, items)

    def _write_items(self, namespace: str, items) -> bool:
        written: list[tuple[str, str, int, str | None]] = []  # (key, its tmp file, its size, its owner)
        try:
            for key, body, meta, owner in items:
                trailer = _trailer(namespace, key, body, meta)
                written.append((key, self._write_tmp(body, trailer), len(body) + len(trailer), owner))
            self._commit(namespace, written)  # one index transaction for them all
        except Exception as error:  # noqa: BLE001 - OSError, or sqlite's "database or disk is full"
            for _, tmp, _, _ in written:
                _unlink(tmp)
            self._failed(f"writing {namespace}", error)
            return False
        return True

    async def write_file(self, namespace: str, key: str, produce: Callable[[Path], dict | None], *,
                         run: Callable | None = None, owner: str | None = None) -> BlobFile:
        """Let `produce(tmp_path)` write a body (e.g. a remux, run by `run` on a worker pool), then commit it with
        its trailer; a dict it returns becomes the meta. Raises OSError when the disk refuses (after logging)."""
        tmp = Path(self._tmp_path())
        try:
            await self._run(self._tmp.mkdir, parents=True, exist_ok=True)
            meta = await (asyncio.to_thread(produce, tmp) if run is None else run(produce, tmp))
            return await self._run(self._commit_produced, namespace, key, tmp, meta if isinstance(meta, dict) else {},
                                   owner)
        except OSError as error:
            await asyncio.to_thread(_unlink, tmp)
            self._failed(f"writing {namespace}", error)
            raise
        except BaseException:
            await asyncio.to_thread(_unlink, tmp)
            raise

    def _commit_produced(self, namespace: str, key: str, tmp: Path, meta: dict, owner: str | None) -> BlobFile:
        digest = hashlib.blake2b(digest_size=16)
        size = 0
        with open(tmp, "r+b") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
            trailer = _trailer_bytes(namespace, key, size, digest.hexdigest(), meta)
            file.write(trailer)
        self._commit(namespace, [(key, str(tmp), size + len(trailer), owner)])
        _, path = self._located(namespace, key)
        stat = path.stat()
        self._verified.add((path.name, stat.st_ino, stat.st_mtime_ns, stat.st_size))
        return BlobFile(path, size, meta)

    def _commit(self, namespace: str, written: Sequence[tuple[str, str, int, str | None]]) -> None:
        """Written tmp files (key, tmp, size, owner) into place as the keys' entries."""
        placed = []  # (name, its entry file, the tmp file, size, owner)
        for key, tmp, size, owner in written:
            name = _name(namespace, key)
            placed.append((name, self._file(name), tmp, size, owner))

        def into_place() -> None:
            for _, target, tmp, _, _ in placed:
                try:
                    os.replace(tmp, target)
                except FileNotFoundError:  # the first entry of its shard
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    os.replace(tmp, target)

        try:
            victims = self.index.add(namespace, [(name, size, owner) for name, _, _, size, owner in placed],
                                     into_place)
        except BaseException:
            for _, target, tmp, _, _ in placed:
                if not os.path.exists(tmp):  # in place, but the index refused (a full disk): not a cache entry
                    _unlink(target)
            raise
        for victim in victims:
            _unlink(self._path(victim))

    def _write_tmp(self, body: bytes, trailer: bytes) -> str:
        """A tmp file holding body + trailer (os calls, not a file object: a result's write is mostly their cost,
        and each call hands the GIL over and back)."""
        tmp = self._tmp_path()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o644)
        except FileNotFoundError:  # tmp/ was removed under us
            self._tmp.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, flags, 0o644)
        try:
            _write_all(fd, body + trailer)
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            raise
        os.close(fd)
        return tmp

    def _tmp_path(self) -> str:
        # the writer's pid first (see _writer_alive), then a token of this process and a count: unique, no syscall
        return f"{self._tmp}/{os.getpid()}-{_PROCESS_TOKEN}-{next(_TMP_NUMBERS)}.part"

    # ----------------------------------------------------------------------------------------------- upkeep

    async def discard(self, namespace: str, key: str) -> None:
        name = _name(namespace, key)
        await self._run(self._discard, [name])

    def _discard(self, names: list[str]) -> None:
        self.index.remove(names)
        for name in names:
            _unlink(self._path(name))

    async def drop_owned(self, owner: str) -> int:
        """Remove every entry derived from `owner` (an original that changed, or was purged); returns how many."""
        def drop() -> int:
            names = self.index.remove_owned(owner)
            for name in names:
                _unlink(self._path(name))
            return len(names)
        return await self._run(drop)

    async def total(self, namespace: str) -> int:
        return await self._run(self.index.total, namespace)

    # ----------------------------------------------------------------------------------------------- shared facts

    async def located(self, key: str) -> tuple[dict, float] | None:
        try:
            return await self._run(self.index.located, key)
        except Exception as error:  # noqa: BLE001 - the shared memo is an optimisation
            self._failed("reading the index", error)
            return None

    async def remember_located(self, key: str, value: dict, checked: float) -> None:
        try:
            await self._run(self.index.locate, key, value, checked)
        except Exception as error:  # noqa: BLE001
            self._failed("writing the index", error)

    async def forget_located(self, prefix: str) -> None:
        await self._run(self.index.forget_located, prefix)

    # ----------------------------------------------------------------------------------------------- purges

    async def purge(self, request: PurgeRequest, remember_seconds: float) -> PurgeRecord | None:
        """Purge one entry from the node (one transaction of the index; its files are removed inside it)."""
        return await self._run(self.index.purge, request, lambda name: _unlink(self._path(name)),
                               remember_seconds=remember_seconds)

    async def purges_since(self, generation: int) -> tuple[int, list[PurgeRow]]:
        return await self._run(self.index.purges_since, generation)

    async def last_purge(self) -> int:
        return await self._run(self.index.last_purge)

    async def withheld(self) -> dict[tuple[int, str], str]:
        return await self._run(self.index.withheld)

    async def notice(self, partner_id: int, entry_id: str) -> tuple[str, float] | None:
        return await self._run(self.index.notice, partner_id, entry_id)

    @asynccontextmanager
    async def exclusive(self, key: str, timeout: float):
        """Hold the node-wide lock of `key` (a byte-range lock: released by the kernel if its holder dies), waiting
        for another process that holds it; yields whether it was got within `timeout` (False: go on without it)."""
        offset = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 2
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        got = False
        while self._lock_fd is not None:
            try:
                fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
                got = True
                break
            except OSError as error:
                if error.errno not in (errno.EACCES, errno.EAGAIN) or loop.time() > deadline:
                    break
            await asyncio.sleep(_LOCK_POLL_SECONDS)
        try:
            yield got
        finally:
            if got and self._lock_fd is not None:
                fcntl.lockf(self._lock_fd, fcntl.LOCK_UN, 1, offset)

    # ----------------------------------------------------------------------------------------------- health

    @property
    def degraded(self) -> str | None:
        """Why the cache is not storing (a full disk...), while that is recent; else None."""
        return self._degraded_reason if time.monotonic() < self._degraded_until else None

    def _failed(self, doing: str, error: BaseException) -> None:
        now = time.monotonic()
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        self._degraded_until = now + _DEGRADED_SECONDS
        self._degraded_reason = f"{doing}: {reason}"
        if now - self._last_failure_log >= _DEGRADED_SECONDS:
            self._last_failure_log = now
            log.warning("disk cache: %s failed (%s); serving without caching", doing, reason)

    # ----------------------------------------------------------------------------------------------- helpers

    async def _run(self, function, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self._io, lambda: function(*args, **kwargs))

    def _path(self, name: str) -> Path:
        return Path(self._file(name))

    def _file(self, name: str) -> str:
        """Where an entry's file lives, as a string (a miss is looked up on every cold request: no pathlib)."""
        return f"{self._data}/{name[:2]}/{name}"

    def _located(self, namespace: str, key: str) -> tuple[str, Path]:
        """The file name of a key's entry, and where it lives."""
        name = _name(namespace, key)
        return name, self._path(name)


_PROCESS_TOKEN = uuid.uuid4().hex[:12]  # one per process (workers are spawned: each draws its own)
_TMP_NUMBERS = itertools.count()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _name(namespace: str, key: str) -> str:
    return hashlib.sha256(f"{namespace}|{key}".encode("utf-8", "surrogatepass")).hexdigest()


def _trailer(namespace: str, key: str, body: bytes, meta: dict) -> bytes:
    return _trailer_bytes(namespace, key, len(body), hashlib.blake2b(body, digest_size=16).hexdigest(), meta)


def _trailer_bytes(namespace: str, key: str, size: int, digest: str, meta: dict) -> bytes:
    header = json.dumps({"ns": namespace, "key": key, "size": size, "digest": digest, "meta": meta},
                        separators=(",", ":")).encode("utf-8", "surrogatepass")
    return header + len(header).to_bytes(4, "big") + _MAGIC


def _split(raw: bytes) -> tuple[dict, bytes] | None:
    """(header, body) of a whole entry file, or None when its trailer does not hold together."""
    if len(raw) < 8 or raw[-4:] != _MAGIC:
        return None
    length = int.from_bytes(raw[-8:-4], "big")
    if length > min(_TRAILER_LIMIT, len(raw) - 8):
        return None
    header = _parse_header(raw[-8 - length:-8])
    if header is None or header.get("size") != len(raw) - 8 - length:
        return None
    return header, raw[:header["size"]]


def _read_trailer(path: Path) -> tuple[dict, int] | None:
    """(header, body size) from the end of an entry file, without reading its body."""
    try:
        with open(path, "rb") as file:
            end = file.seek(0, os.SEEK_END)
            if end < 8:
                return None
            file.seek(end - 8)
            tail = file.read(8)
            length = int.from_bytes(tail[:4], "big")
            if tail[4:] != _MAGIC or length > min(_TRAILER_LIMIT, end - 8):
                return None
            file.seek(end - 8 - length)
            header = _parse_header(file.read(length))
    except OSError:
        return None
    if header is None or header.get("size") != end - 8 - length:
        return None
    return header, header["size"]


def _parse_header(raw: bytes) -> dict | None:
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return header if isinstance(header, dict) and isinstance(header.get("size"), int) else None


def _unlink(path: Path | str) -> None:
    try:
        os.unlink(path)
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
