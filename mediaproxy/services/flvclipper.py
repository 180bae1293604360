"""flvclipper (SPEC §3): a real clip of an entry's video, served with Range, its length known before the first byte.

An MP4 or FLV clip in its own container is cut by rewriting the index (as nginx's mp4 module and nginx-vod-module
do): a new header, then the original's own bytes for the clip's range (sendfile from a local file, blocks for a
remote one). Only the small built index is cached, keyed by the original's identity and the snapped window, so
two requests that snap to the same keyframe and last sample are one clip, one ETag. Anything the index rewrite
refuses (fragmented MP4, several `mdat`, another container, an MP4 asked as FLV) falls back to a packet-copy
remux, written once into the disk cache (or kept in memory when the disk refuses it).
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import io
import logging
import time
from pathlib import Path
from typing import BinaryIO

from aiohttp import web
from cachetools import LRUCache

from ..cache.disk import DiskCache
from ..cache.memory import EntryKeys, MemoryCache
from ..cache.singleflight import SingleFlight
from ..config import Config
from ..errors import BadRequest, Unprocessable
from ..media.clipindex import (ClipIndex, FlvTags, Layout, Literal, NotIndexable, SourceRange, layout_from_blob,
                               layout_to_blob, read_clip_index)
from ..media.probe import MediaKind
from ..media.video import cut_clip
from ..origins.base import EntryFile
from ..refs import FileSelector, Purged, entry_prefix
from ..request_keys import TIER
from ..responses import cache_control, server_timing
from ..urls import ClipRequest
from ..workpool import WorkPool
from . import bodies
from .sources import Source, Sources

log = logging.getLogger(__name__)

CLIP_CONTENT_TYPES = {"mp4": "video/mp4", "flv": "video/x-flv"}
# The index of a window this short is built in well under a millisecond: right here, kept in memory only (a thread
# hop or a disk write would cost more than building it again). Longer windows are built on the work pool and
# their index is stored in the disk cache too.
_QUICK_WINDOW_SECONDS = 60.0
_WHOLE_FILE_EXTENSIONS = ("mp4", "m4v", "flv")


class ClipService:
    def __init__(self, sources: Sources, disk: DiskCache, pool: WorkPool, config: Config) -> None:
        self.sources = sources
        self.disk = disk
        self.pool = pool
        self.config = config
        self._indexes: MemoryCache = MemoryCache(config.cache.clip_index_memory_bytes,
                                                 config.cache.clip_index_memory_bytes,
                                                 size_of=lambda index: index.approx_bytes, entry_of=entry_prefix)
        self._layouts: MemoryCache = MemoryCache(config.cache.clip_index_memory_bytes // 4,
                                                 config.cache.memory_item_bytes, size_of=lambda layout: _bytes(layout),
                                                 entry_of=entry_prefix)  # keys start with the file's owner
        self._not_indexable: LRUCache[str, str] = LRUCache(maxsize=10_000)  # owner → why
        self._not_indexable_keys = EntryKeys(self._not_indexable, entry_prefix)
        self._reading: SingleFlight = SingleFlight()
        self._building: SingleFlight = SingleFlight()
        self._cuts: SingleFlight = SingleFlight()
        self._writes: set[asyncio.Task] = set()

    async def handle(self, request: ClipRequest, http_request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        source = await self.sources.get(request.entry, FileSelector(flavor_id=request.flavor_id))
        if source.media.kind is MediaKind.OTHER:
            raise Unprocessable(f"flvclipper: the original of {request.entry.entry_id} cannot be decoded")
        if source.media.kind is not MediaKind.VIDEO:
            raise BadRequest(f"flvclipper: entry {request.entry.entry_id} is {source.media.kind}, not a video")
        duration = source.media.duration
        start = request.clip_from_ms / 1000
        end = request.clip_to_ms / 1000 if request.clip_to_ms is not None else None
        if duration and start >= duration:
            raise BadRequest(f"clip_from: {request.clip_from_ms} ms is past the end of the video "
                             f"({int(duration * 1000)} ms)")
        if end is not None and duration and end >= duration:
            end = None
        source_container = "flv" if source.media.container == "flv" else "mp4"
        container = request.container or source_container
        headers = {
            "Content-Type": CLIP_CONTENT_TYPES[container],
            "Cache-Control": cache_control(self.config.max_age("flvclipper", request.entry.partner_id)),
        }
        timings = {"origin": (time.perf_counter() - started) * 1000}
        file = source.file
        if start == 0 and end is None and container == source_container and source.media.extension in \
                _WHOLE_FILE_EXTENSIONS:
            headers["X-Clip-Start-Ms"] = "0"  # the whole file, as uploaded
            return await self._answer(http_request, headers, timings, "file", f"whole|{file.owner}", file,
                                      [bodies.FileRange(file, 0, file.size - 1)] if file.size else [])
        if container == source_container:
            index = await self._index(file)
            if index is not None:
                window = index.snap(start, end)
                key = f"{file.owner}|{container}|{window.key()}"
                try:
                    layout, tier = await self._layout(key, file, index, window, timings)
                except NotIndexable as why:
                    self._not_indexable[file.owner] = why.message
                    self._not_indexable_keys.added(file.owner)
                else:
                    headers["X-Clip-Start-Ms"] = str(round(window.start_seconds * 1000))
                    return await self._answer(http_request, headers, timings, tier, key, file,
                                              _pieces(layout, file))
        return await self._remuxed(http_request, source, start, end, container, headers, timings)

    async def _answer(self, http_request: web.Request, headers: dict[str, str], timings: dict[str, float],
                      tier: str, key: str, file: EntryFile, pieces: list[bodies.Piece]) -> web.StreamResponse:
        http_request[TIER] = tier
        headers["Server-Timing"] = server_timing(timings, tier)
        etag = '"' + hashlib.blake2b(key.encode(), digest_size=16).hexdigest() + '"'
        return await bodies.send(http_request, self.sources.store, pieces, headers, etag=etag, last_modified=file.mtime)

    # ----------------------------------------------------------------------------------------------- by index

    async def _index(self, file: EntryFile) -> ClipIndex | None:
        """The original's parsed index (read once per identity: the moov, or FLV tag headers), or None when the
        file cannot be clipped by index rewrite."""
        if file.owner in self._not_indexable:
            return None
        index = self._indexes.get(file.owner)
        if index is None:
            try:
                index = await self._reading.run(file.owner, lambda: self.sources.read(
                    file, lambda opened: read_clip_index(opened, file.size)))
            except NotIndexable as why:
                log.info("%s: clipped by remux (%s)", file.owner, why.message)
                self._not_indexable[file.owner] = why.message
                self._not_indexable_keys.added(file.owner)
                return None
            self._indexes.put(file.owner, index)
        return index

    def forget_purged(self, purged: Purged) -> None:
        """Drop the parsed indexes and clip layouts of purged entries (purge.py)."""
        self._indexes.forget_purged(purged)
        self._layouts.forget_purged(purged)
        self._not_indexable_keys.forget(purged)

    async def _layout(self, key: str, file: EntryFile, index: ClipIndex, window,
                      timings: dict[str, float]) -> tuple[Layout, str]:
        """The clip's virtual file: from memory, from the disk cache's `indexes`, or built (and stored)."""
        layout = self._layouts.get(key)
        if layout is not None:
            return layout, "memory"
        return await self._building.run(key, lambda: self._load_or_build(key, file, index, window, timings))

    async def _load_or_build(self, key: str, file: EntryFile, index: ClipIndex, window,
                             timings: dict[str, float]) -> tuple[Layout, str]:
        found = None if window.duration <= _QUICK_WINDOW_SECONDS else await self.disk.read("indexes", key)
        if found is not None:
            try:
                layout = layout_from_blob(found.body, found.meta)
            except ValueError as error:
                log.warning("clip index %s is unusable (%s): built again", key, error)
            else:
                self._layouts.put(key, layout)
                return layout, "disk"
        built = time.perf_counter()
        quick = window.duration <= _QUICK_WINDOW_SECONDS
        layout = index.layout(window) if quick else await self.pool.run(index.layout, window)
        timings["index"] = (time.perf_counter() - built) * 1000
        self._layouts.put(key, layout)
        if quick:
            return layout, "index"
        body, meta = layout_to_blob(layout)
        # written behind the answer: the first byte waits for the index, never for the disk
        writing = asyncio.get_running_loop().create_task(self.disk.write("indexes", [(key, body, meta)],
                                                                         owner=file.owner))
        self._writes.add(writing)
        writing.add_done_callback(self._writes.discard)
        return layout, "index"

    # ----------------------------------------------------------------------------------------------- by remux

    async def _remuxed(self, http_request: web.Request, source: Source, start: float, end: float | None,
                       container: str, headers: dict[str, str], timings: dict[str, float]):
        file = source.file
        info = await self.sources.video_info(source)
        snapped = _snapped(info.keyframes, start)
        key = f"{file.owner}|{container}|remux|{snapped}|{end}"
        cut_started = time.perf_counter()
        clip, tier = await self._cuts.run(key, lambda: self._cut(key, file, start, end, container))
        if tier == "remux":
            timings["remux"] = (time.perf_counter() - cut_started) * 1000
        headers["X-Clip-Start-Ms"] = str(clip.meta["start_ms"])
        if isinstance(clip, _MemoryClip):
            pieces: list[bodies.Piece] = [clip.body] if clip.body else []
        else:
            pieces = [bodies.PathRange(clip.path, 0, clip.size - 1)] if clip.size else []
        return await self._answer(http_request, headers, timings, tier, key, file, pieces)

    async def _cut(self, key: str, file: EntryFile, start: float, end: float | None, container: str):
        cached = await self.disk.open_file("results", key)
        if cached is not None:
            return cached, "disk"
        store = self.sources.store
        try:
            cut = await self.disk.write_file("results", key, lambda target: _cut_from(store.open(file), target, start,
                                                                                        end, container),
                                             run=self.pool.run, owner=file.owner)
        except OSError:  # the disk refused it (full): cut into memory and serve it uncached
            memory = io.BytesIO()
            meta = await self.pool.run(lambda: _cut_from(store.open(file), memory, start, end, container))
            return _MemoryClip(memory.getvalue(), meta), "remux"
        return cut, "remux"


class _MemoryClip:
    def __init__(self, body: bytes, meta: dict) -> None:
        self.body, self.meta = body, meta


def _cut_from(opened: BinaryIO, target: Path | BinaryIO, start: float, end: float | None, container: str) -> dict:
    with opened:
        clip = cut_clip(opened, target, start, end, container)
    return {"start_ms": round(clip.start * 1000), "duration_ms": round(clip.duration * 1000)}


def _snapped(keyframes: tuple[float, ...], start: float) -> float:
    """The keyframe a remux starts at (as cut_clip chooses it), where the container indexes keyframes: requests
    that snap to the same one are one clip."""
    if not keyframes:
        return start
    at = bisect.bisect_right(keyframes, start + 1e-3) - 1
    return keyframes[max(at, 0)]


def _pieces(layout: Layout, file: EntryFile) -> list[bodies.Piece]:
    pieces: list[bodies.Piece] = []
    for part in layout.parts:
        if isinstance(part, Literal):
            pieces.append(part.data)
        elif isinstance(part, SourceRange):
            pieces.append(bodies.FileRange(file, part.offset, part.offset + part.length - 1))
        elif isinstance(part, FlvTags):
            pieces.append(bodies.RebasedTags(file, part))
    return [piece for piece in pieces if bodies.total_length([piece])]


def _bytes(layout: Layout) -> int:
    return sum(len(part.data) if isinstance(part, Literal) else 64 for part in layout.parts)
