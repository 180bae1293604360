"""flvclipper (SPEC §3): a real clip of an entry's video, cut by copying packets, served with Range.

Clips are written once into the disk cache (atomically, in a worker process: the remux loop holds the GIL) and
served from there by FileResponse, so a `<video>` element can seek in them; identical requests cut once.
"""

from __future__ import annotations

import time
from pathlib import Path

from aiohttp import web

from ..cache.disk import DiskCache
from ..cache.singleflight import SingleFlight
from ..config import Config
from ..errors import BadRequest, Unprocessable
from ..media.probe import MediaKind
from ..media.video import cut_clip
from ..refs import FileSelector
from ..responses import TIER, cache_control, server_timing
from ..urls import ClipRequest
from ..workpool import WorkPool
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
        if start == 0 and end is None and container == source_container and source.media.extension in (
                "mp4", "m4v", "flv"):
            headers["X-Clip-Start-Ms"] = "0"  # the whole file, as uploaded
            headers["Server-Timing"] = server_timing({"origin": origin_ms}, "file")
            http_request[TIER] = "file"
            return web.FileResponse(source.original.path, headers=headers)
        key = f"{request.cache_key()}|{source.original.identity}|{container}|{start}|{end}"
        cut_started = time.perf_counter()
        clip, tier = await self._cuts.run(key, lambda: self._clip(key, source.original.path, start, end, container))
        timings = {"origin": origin_ms}
        if tier == "render":
            timings["remux"] = (time.perf_counter() - cut_started) * 1000
        headers["X-Clip-Start-Ms"] = str(clip.meta["start_ms"])
        headers["Server-Timing"] = server_timing(timings, tier)
        http_request[TIER] = tier
        return web.FileResponse(clip.path, headers=headers)

    async def _clip(self, key: str, path: Path, start: float, end: float | None, container: str):
        cached = await self.disk.open(key)
        if cached is not None:
            return cached, "disk"
        cut = await self.disk.store_file(key, _Cut(path, start, end, container), run=self.processes.run)
        return cut, "render"


class _Cut:
    """The remux job: picklable, so it can run in a worker process."""

    def __init__(self, source: Path, start: float, end: float | None, container: str) -> None:
        self.source, self.start, self.end, self.container = source, start, end, container

    def __call__(self, target: Path) -> dict:
        clip = cut_clip(self.source, target, self.start, self.end, self.container)
        return {"start_ms": round(clip.start * 1000), "duration_ms": round(clip.duration * 1000)}
