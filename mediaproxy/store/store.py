"""The store: which file an entry's request means (asked of the origin at most once per revalidation period, and
once for the whole node), and that file's bytes (local: the file; http: blocks fetched once for the whole node)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import BinaryIO

from cachetools import LRUCache, TTLCache

from .. import metrics
from ..cache.disk import DiskCache
from ..cache.memory import EntryKeys, MemoryCache
from ..cache.singleflight import SingleFlight
from ..errors import EntryNotFound, FlavorNotFound, NotFound, UpstreamFailed, UpstreamTimeout
from ..origins.base import EntryFile, Origin, OriginalChanged, RangesIgnored, file_from_record, file_record
from ..refs import EntryRef, FileSelector, Purged
from ..workpool import waiting_for_io
from .reader import BlockReader

log = logging.getLogger(__name__)

READ_AHEAD = 4  # blocks fetched ahead of a stream's reader: keeps a slow link busy without hoarding connections
_MISSING = {"entry": EntryNotFound, "flavor": FlavorNotFound}


class Store:
    def __init__(self, origin: Origin, disk: DiskCache, memory: MemoryCache, *, revalidate_seconds: float,
                 not_found_seconds: float, block_bytes: int, wait_seconds: float, timeout_seconds: float) -> None:
        self.origin = origin
        self.disk = disk
        self.memory = memory  # hot small originals, whole
        self.block_bytes = block_bytes
        self.revalidate_seconds = max(revalidate_seconds, 0.0)
        self.not_found_seconds = max(not_found_seconds, 0.0)
        self.wait_seconds = wait_seconds  # how long to wait for another worker's fetch before fetching anyway
        self._located: TTLCache[tuple[EntryRef, FileSelector], EntryFile] = TTLCache(
            maxsize=100_000, ttl=self.revalidate_seconds)
        self._missing: TTLCache[tuple[EntryRef, FileSelector], NotFound] = TTLCache(
            maxsize=100_000, ttl=self.not_found_seconds)
        self._last_known: LRUCache[tuple[EntryRef, FileSelector], EntryFile] = LRUCache(maxsize=100_000)
        self._located_keys = EntryKeys(self._located, _entry_of_key)  # for purges (purge.py)
        self._missing_keys = EntryKeys(self._missing, _entry_of_key)
        self._last_known_keys = EntryKeys(self._last_known, _entry_of_key)
        grace = min(1.0, timeout_seconds)  # a fetch nobody waits for any more is cancelled after this
        self._locating: SingleFlight[EntryFile] = SingleFlight(orphan_grace=grace)
        self._blocks: SingleFlight[bytes] = SingleFlight(orphan_grace=grace)
        self._wholes: SingleFlight[dict[int, bytes]] = SingleFlight(orphan_grace=grace)
        self._wanted: dict[str, set[int]] = {}  # blocks readers wait for while a file is read whole
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._closed = False
        self.withheld: Mapping[EntryRef, str] = {}  # entries a notification deleted or blocked → why (purge.py)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    async def close(self) -> None:
        self._closed = True  # work threads waiting for a block stop waiting: no loop will fetch it any more
        await self.origin.close()

    # ----------------------------------------------------------------------------------------------- which file

    async def get(self, ref: EntryRef, selector: FileSelector = FileSelector()) -> EntryFile:
        """The selected file of an entry; asks the origin at most once per revalidation period."""
        withheld = self.withheld.get(ref)
        if withheld is not None:  # whatever the origin still holds (storage often lags behind a delete)
            raise EntryNotFound(f"no entry {ref.entry_id} for partner {ref.partner_id} ({withheld})")
        if selector.version is not None:
            # a version is mostly a cache-buster: only one the manifest lists selects another file
            current = await self.get(ref, FileSelector(selector.flavor_id, None, selector.extension))
            if selector.version not in current.manifest.versions:
                return current
        key = (ref, selector)
        file = self._located.get(key)
        if file is not None:
            return file
        missing = self._missing.get(key)
        if missing is not None:
            raise type(missing)(missing.message)
        try:
            file = await self._locating.run(key, lambda: self._locate(ref, selector))
        except (EntryNotFound, FlavorNotFound) as exc:
            self._missing[key] = exc
            self._missing_keys.added(key)
            self._last_known.pop(key, None)
            raise
        except UpstreamFailed as exc:  # 502 / 504: serve what we had, if we had it (stale-if-error)
            file = self._last_known.get(key)
            if file is None or file.path is not None and not file.path.exists():
                raise
            log.warning("origin failed for %s/%s (%s); serving the copy known before", ref.partner_id,
                        ref.entry_id, exc.message)
            return file
        previous = self._last_known.get(key)
        if previous is not None and previous.identity != file.identity and self.origin.remote:
            asyncio.get_running_loop().create_task(self.disk.drop_owned(previous.owner))  # its blocks are useless
        self._located[key] = file
        self._last_known[key] = file
        self._located_keys.added(key)
        self._last_known_keys.added(key)
        return file

    async def _locate(self, ref: EntryRef, selector: FileSelector) -> EntryFile:
        if not self.origin.remote:
            return await self.origin.locate(ref, selector)
        shared = _shared_key(ref, selector)
        found = await self._shared(shared)
        if found is not None:
            return found
        async with self.disk.exclusive("locate|" + shared, self.wait_seconds) as got:
            if got:  # another worker may have asked while this one waited
                found = await self._shared(shared)
                if found is not None:
                    return found
            try:
                file = await self.origin.locate(ref, selector)
            except (EntryNotFound, FlavorNotFound) as missing:
                kind = "flavor" if isinstance(missing, FlavorNotFound) else "entry"
                await self.disk.remember_located(shared, {"missing": kind, "message": missing.message}, time.time())
                raise
            known = await self.disk.located(shared)
            if not file.mtime:  # no Last-Modified upstream: dated when this identity was first seen
                same = known is not None and known[0].get("identity") == file.identity
                file = dataclasses.replace(file, mtime=known[0]["mtime"] if same else time.time())
            await self.disk.remember_located(shared, file_record(file), time.time())
            return file

    async def _shared(self, shared: str) -> EntryFile | None:
        """What another worker of the node learnt recently; raises the not-found it recorded."""
        known = await self.disk.located(shared)
        if known is None:
            return None
        record, checked = known
        age = time.time() - checked
        if "missing" in record:
            if age < self.not_found_seconds:
                raise _MISSING[record["missing"]](record["message"])
            return None
        return file_from_record(record) if age < self.revalidate_seconds else None

    async def forget(self, ref: EntryRef) -> None:
        """Drop what is known of an entry's files, here and in the node's index (they changed, or went)."""
        self.forget_purged(Purged(frozenset({ref})))
        if self.origin.remote:
            await self.disk.forget_located(ref.prefix)

    def forget_purged(self, purged: Purged) -> None:
        """Drop this process's memories of which files purged entries mean (and that they have none)."""
        for keys in (self._located_keys, self._missing_keys, self._last_known_keys):
            keys.forget(purged)

    # ----------------------------------------------------------------------------------------------- its bytes

    def open(self, file: EntryFile) -> BinaryIO:
        """The file as a seekable binary file object. Blocking: call it (and read it) from a worker thread."""
        if file.path is not None:
            handle = open(file.path, "rb")
            stat = os.fstat(handle.fileno())
            if f"{stat.st_ino:x}-{stat.st_mtime_ns:x}-{stat.st_size:x}" != file.identity:
                handle.close()
                raise OriginalChanged(file)  # replaced since it was located: never read it under the old identity
            return handle
        return BlockReader(file.size, self.block_bytes, lambda index: self._block_from_thread(file, index))

    async def read_bytes(self, file: EntryFile) -> bytes:
        """The whole file (an image to decode), from memory when it is small and hot."""
        body = self.memory.get(file.owner)
        if body is None:
            if file.path is not None:
                body = await asyncio.to_thread(_read_all, self.open, file)
            else:
                body = b"".join([chunk async for chunk in self.stream(file, 0, file.size - 1)])
            self.memory.put(file.owner, body)
        return body

    async def stream(self, file: EntryFile, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end] of a remote file, block by block as they arrive, a few blocks fetched ahead."""
        first, last = start // self.block_bytes, end // self.block_bytes
        ahead: deque[tuple[int, asyncio.Future[bytes]]] = deque()
        following = first
        try:
            while ahead or following <= last:
                while following <= last and len(ahead) < READ_AHEAD:
                    ahead.append((following, asyncio.ensure_future(self.block(file, following))))
                    following += 1
                index, fetch = ahead.popleft()
                body = await fetch
                offset = index * self.block_bytes
                yield body[max(start - offset, 0):end - offset + 1]
        finally:
            for _, fetch in ahead:
                fetch.cancel()

    async def block(self, file: EntryFile, index: int) -> bytes:
        key = self._block_key(file, index)
        return await self._blocks.run(key, lambda: self._fetch_block(file, index, key))

    def _block_from_thread(self, file: EntryFile, index: int) -> bytes:
        blob = self.disk.read_sync("originals", self._block_key(file, index))
        if blob is not None and len(blob.body) == self._block_length(file, index):
            metrics.CACHE.labels("disk", "hit").inc()
            return blob.body
        if self._loop is None or threading.get_ident() == self._loop_thread:
            raise RuntimeError("remote originals are read from worker threads, never on the event loop")
        coroutine = self.block(file, index)
        try:
            fetch = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        except RuntimeError:  # the loop has closed: the server is gone
            coroutine.close()
            raise UpstreamTimeout("the original could not be read (shutting down)") from None
        give_up = time.monotonic() + 2 * self.wait_seconds + 5  # a fetch is bounded; so is waiting for one
        with waiting_for_io():  # this job's CPU slot serves another meanwhile
            while True:
                try:
                    return fetch.result(timeout=0.25)
                except concurrent.futures.TimeoutError:
                    if self._closed or time.monotonic() > give_up:
                        fetch.cancel()
                        raise UpstreamTimeout("the original could not be read in time (shutting down, or the "
                                              "upstream is too slow)") from None

    async def _fetch_block(self, file: EntryFile, index: int, key: str) -> bytes:
        length = self._block_length(file, index)
        cached = await self._cached_block(key, length)
        if cached is not None:
            return cached
        async with self.disk.exclusive(key, self.wait_seconds) as got:
            if got:  # another worker may have fetched it while this one waited
                cached = await self._cached_block(key, length)
                if cached is not None:
                    return cached
            start = index * self.block_bytes
            try:
                body = await self.origin.read_range(file, start, start + length - 1)
            except RangesIgnored:
                return await self._block_of_whole(file, index, key, length)
            except OriginalChanged:
                await self.forget(file.ref)
                await self.disk.drop_owned(file.owner)
                raise
            metrics.CACHE.labels("origin", "fetched").inc()
            await self.disk.write("originals", [(key, body, {})], owner=file.owner)
            return body

    async def _cached_block(self, key: str, length: int) -> bytes | None:
        blob = await self.disk.read("originals", key)
        if blob is None or len(blob.body) != length:
            metrics.CACHE.labels("disk", "miss").inc()
            return None
        metrics.CACHE.labels("disk", "hit").inc()
        return blob.body

    async def _block_of_whole(self, file: EntryFile, index: int, key: str, length: int) -> bytes:
        """The upstream ignores Range: the file is read once whole (for the node), cut into blocks as it comes.
        The blocks the readers waiting meanwhile asked for are handed to them from memory (the disk may refuse
        them: full, or a budget smaller than the file)."""
        wanted = self._wanted.setdefault(file.owner, set())
        wanted.add(index)
        handed = await self._wholes.run(file.owner, lambda: self._fetch_whole(file, wanted))
        if index in handed:
            return handed[index]
        cached = await self._cached_block(key, length)
        if cached is None:
            raise UpstreamFailed("the upstream does not answer Range requests and the block was not kept")
        return cached

    async def _fetch_whole(self, file: EntryFile, wanted: set[int]) -> dict[int, bytes]:
        last = self._last_block(file)
        handed: dict[int, bytes] = {}
        try:
            async with self.disk.exclusive("whole|" + file.owner, self.wait_seconds):
                if await self._cached_block(self._block_key(file, last), self._block_length(file, last)) is not None:
                    return handed  # another worker read it whole while this one waited (its last block goes last)
                pending, index = bytearray(), 0
                async for chunk in self.origin.read_whole(file):
                    pending += chunk
                    while index <= last and len(pending) >= self._block_length(file, index):
                        body = bytes(pending[:self._block_length(file, index)])
                        del pending[:len(body)]
                        if index in wanted:
                            handed[index] = body
                        await self.disk.write("originals", [(self._block_key(file, index), body, {})],
                                              owner=file.owner)
                        index += 1
                metrics.CACHE.labels("origin", "fetched").inc()
                return handed
        finally:
            self._wanted.pop(file.owner, None)

    def _block_key(self, file: EntryFile, index: int) -> str:
        return f"{file.owner}|{self.block_bytes}|{index}"

    def _block_length(self, file: EntryFile, index: int) -> int:
        return max(0, min(self.block_bytes, file.size - index * self.block_bytes))

    def _last_block(self, file: EntryFile) -> int:
        return max(0, (file.size - 1) // self.block_bytes)


def _entry_of_key(key: tuple[EntryRef, FileSelector]) -> str:
    return key[0].prefix


def _shared_key(ref: EntryRef, selector: FileSelector) -> str:
    return f"{ref.partner_id}/{ref.entry_id}/{selector.flavor_id}|{selector.version}|{selector.extension}"


def _read_all(open_file, file: EntryFile) -> bytes:
    with open_file(file) as handle:
        return handle.read()
