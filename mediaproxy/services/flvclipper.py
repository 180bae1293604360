"""flvclipper (SPEC §3): a real clip of an entry's video, cut by copying packets, served with Range.

Clips are written once into the disk cache (atomically, in a worker process: the remux loop holds the GIL) and
served from there by FileResponse, so a `<video>` element can seek in them; identical requests cut once.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from ..cache.disk import DiskCache
from ..cache.singleflight import SingleFlight
from ..config import Config
from ..errors import BadRequest, Unprocessable
from ..media.probe import MediaKind
from ..media.video import cut_clip
from ..origins.base import EntryFile
from ..refs import FileSelector
from ..responses import TIER, cache_control, server_timing
from ..urls import ClipRequest
from ..workpool import WorkPool
from . import bodies
from .sources import Sources

CONTENT_TYPES = {"mp4": "video/mp4", "flv": "video/x-flv"}


class ClipService:
    def __init__(self, sources: Sources, disk: DiskCache, processes: WorkPool, config: Config) -> None:
        self.sources = sources
        self.disk = disk
        self.processes = processes
        self.config = config
        self._cuts: SingleFlight = SingleFlight()

    async def handle(self, request: ClipRequest, http_request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        source = await self.sources.get(request.entry, FileSelector(flavor_id=request.flavor_id))
        if source.media.kind is MediaKind.OTHER:
            raise Unprocessable(f"flvclipper: the original of {request.entry.entry_id} cannot be decoded")
        if source.media.kind is not MediaKind.VIDEO:
            raise BadRequest(f"flvclipper: entry {request.entry.entry_id} is {source.media.kind}, not a video")
        info = await self.sources.video_info(source)
        start = request.clip_from_ms / 1000
        end = request.clip_to_ms / 1000 if request.clip_to_ms is not None else None
        if start >= info.duration:
            raise BadRequest(f"clip_from: {request.clip_from_ms} ms is past the end of the video "
                             f"({int(info.duration * 1000)} ms)")
        if end is not None and end >= info.duration:
            end = None
        source_container = "flv" if info.container == "flv" else "mp4"
        container = request.container or source_container
        headers = {
            "Content-Type": CONTENT_TYPES[container],
            "Cache-Control": cache_control(self.config.max_age("flvclipper", request.entry.partner_id)),
        }
        origin_ms = (time.perf_counter() - started) * 1000
        file = source.file
        if start == 0 and end is None and container == source_container and source.media.extension in (
                "mp4", "m4v", "flv"):
            headers["X-Clip-Start-Ms"] = "0"  # the whole file, as uploaded
            headers["Server-Timing"] = server_timing({"origin": origin_ms}, "file")
            http_request[TIER] = "file"
            etag = '"' + hashlib.blake2b(f"clip|{file.owner}".encode(), digest_size=16).hexdigest() + '"'
            return await bodies.send(http_request, self.sources.store, [bodies.FileRange(file, 0, file.size - 1)],
                                     headers, etag=etag, last_modified=file.mtime)
        key = f"{request.cache_key()}|{file.identity}|{container}|{start}|{end}"
        cut_started = time.perf_counter()
        clip, tier = await self._cuts.run(key, lambda: self._clip(key, file, start, end, container))
        timings = {"origin": origin_ms}
        if tier == "render":
            timings["remux"] = (time.perf_counter() - cut_started) * 1000
        headers["X-Clip-Start-Ms"] = str(clip.meta["start_ms"])
        headers["Server-Timing"] = server_timing(timings, tier)
        http_request[TIER] = tier
        etag = '"' + hashlib.blake2b(key.encode(), digest_size=16).hexdigest() + '"'
        pieces = [bodies.PathRange(clip.path, 0, clip.size - 1)] if clip.size else []
        return await bodies.send(http_request, self.sources.store, pieces, headers, etag=etag,
                                 last_modified=file.mtime)

    async def _clip(self, key: str, file: EntryFile, start: float, end: float | None, container: str):
        cached = await self.disk.open_file("results", key)
        if cached is not None:
            return cached, "disk"
        if file.path is not None:  # a local file: cut in a clip process (the remux loop holds the GIL)
            cut = await self.disk.write_file("results", key, _Cut(file.path, start, end, container),
                                             run=self.processes.run, owner=file.owner)
        else:  # a remote one is read through this process's store: cut on a work thread
            store = self.sources.store
            cut = await self.disk.write_file("results", key, lambda target: _Cut(None, start, end, container)(
                target, store.open(file)), run=self.sources.pool.run, owner=file.owner)
        return cut, "render"


class _Cut:
    """The remux job: picklable, so it can run in a worker process."""

    def __init__(self, source: Path | None, start: float, end: float | None, container: str) -> None:
        self.source, self.start, self.end, self.container = source, start, end, container

    def __call__(self, target: Path, opened: BinaryIO | None = None) -> dict:
        if opened is not None:
            with opened:
                clip = cut_clip(opened, target, self.start, self.end, self.container)
        else:
            clip = cut_clip(self.source, target, self.start, self.end, self.container)
        return {"start_ms": round(clip.start * 1000), "duration_ms": round(clip.duration * 1000)}
