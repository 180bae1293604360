"""thumbnail (SPEC §2): an image resized and cropped as asked, or a frame (or a strip of frames) of a video.

Every kind of source ends in the same media pipeline; this module picks the source, builds the canonical cache
key, and answers with Cache-Control, a strong ETag and Last-Modified (304 when the client's copy is current).
"""

from __future__ import annotations

import email.utils
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cachetools import LRUCache

from ..cache.results import Result, ResultCache
from ..config import Config
from ..errors import FlavorNotFound, TooLarge, Unprocessable
from ..cache.memory import EntryKeys, MemoryCache
from ..media.decode import JPEG_FORMATS, reduction
from ..media.probe import MediaInfo, MediaKind
from ..media.thumbnail import (Rendered, RenderSettings, decode_and_render, plan_for, render_decoded, render_image,
                               render_video)
from ..media.video import frame_times
from ..refs import FileSelector, Purged
from ..responses import TIER, cache_control, not_modified, server_timing
from ..urls import OutputFormat, ThumbnailRequest
from ..workpool import WorkPool
from .sources import Source, Sources

DEFAULT_QUALITY = 75
BUNDLED_AUDIO_PLACEHOLDER = Path(__file__).resolve().parent.parent / "assets" / "audio.png"
_LOSSY = frozenset({OutputFormat.JPG, OutputFormat.WEBP, OutputFormat.AVIF})


class ThumbnailService:
    def __init__(self, sources: Sources, results: ResultCache, pool: WorkPool, config: Config,
                 decoded: MemoryCache) -> None:
        self.sources = sources
        self.decoded = decoded  # decoded pictures of hot originals, by (owner, JPEG scale)
        self.results = results
        self.pool = pool
        self.config = config
        self.placeholder = (config.video.audio_placeholder or BUNDLED_AUDIO_PLACEHOLDER).read_bytes()
        self._prepared: LRUCache = LRUCache(maxsize=20_000)
        self._prepared_keys = EntryKeys(self._prepared, lambda memo: memo[0].entry.prefix)

    async def handle(self, request: ThumbnailRequest, http_request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        source = await self._source(request)
        memo = (request, source.file.identity, source.file.manifest.thumb_offset)
        prepared = self._prepared.get(memo)
        if prepared is None:  # what hot requests would recompute every time: the key, times, validators
            prepared = self._prepared[memo] = await self._prepare(request, source)
            self._prepared_keys.added(memo)
        origin_ms = (time.perf_counter() - started) * 1000
        if not_modified(http_request, prepared.etag, source.file.mtime):
            return web.Response(status=304, headers=prepared.headers)
        result, tier = await self.results.get(prepared.key, lambda: self._render(request, source, prepared),
                                              owner=source.file.owner)
        http_request[TIER] = tier
        timings = {"origin": origin_ms, **(result.meta.get("timings", {}) if tier == "render" else {})}
        return web.Response(body=result.body, content_type=result.content_type,
                            headers={**prepared.headers, "Server-Timing": server_timing(timings, tier)})

    def forget_purged(self, purged: Purged) -> None:
        """Drop what this worker prepared for purged entries (their decoded pictures are the runtime's memory)."""
        self._prepared_keys.forget(purged)

    async def _prepare(self, request: ThumbnailRequest, source: Source) -> _Prepared:
        partner = self.config.partner(request.entry.partner_id)
        quality = request.quality or partner.quality or DEFAULT_QUALITY
        key = f"{request.cache_key()}|q={quality if request.format in _LOSSY else '-'}|{source.file.identity}"
        max_age = self.config.max_age("thumbnail", request.entry.partner_id)
        times: list[float] = []
        if source.media.kind is MediaKind.VIDEO:
            # from the stream header, before video_info's probe decodes a first frame
            _refuse_oversized(source.media, self.config.limits.max_source_pixels)
            info = await self.sources.video_info(source)
            times = frame_times(info, vid_sec=request.vid_sec, thumb_offset=source.file.manifest.thumb_offset,
                                slices=request.vid_slices, slice_index=request.vid_slice,
                                start_sec=request.start_sec, end_sec=request.end_sec)
            key += f"|t={times}"
        elif source.media.kind is MediaKind.AUDIO:
            key += "|placeholder"
            max_age = min(max_age, self.config.http.placeholder_max_age)
        etag = '"' + hashlib.blake2b(key.encode(), digest_size=16).hexdigest() + '"'
        headers = {"Cache-Control": cache_control(max_age), "ETag": etag,
                   "Last-Modified": email.utils.formatdate(source.file.mtime, usegmt=True)}
        settings = RenderSettings(quality, self.config.limits.max_source_pixels, self.config.limits.max_output_pixels)
        return _Prepared(key, etag, headers, times, settings)

    async def _source(self, request: ThumbnailRequest) -> Source:
        """The flavor asked for; else the configured frame flavor when the entry has it; else the original."""
        if request.flavor_id is None and self.config.video.thumbnail_flavor:
            try:
                source = await self.sources.get(request.entry, FileSelector(
                    flavor_id=self.config.video.thumbnail_flavor))
                if source.media.kind is MediaKind.VIDEO:
                    return source
            except FlavorNotFound:
                pass
        return await self.sources.get(request.entry, FileSelector(flavor_id=request.flavor_id,
                                                                  version=request.version))

    async def _render_image(self, request: ThumbnailRequest, source: Source, settings: RenderSettings) -> Rendered:
        """Other sizes of a hot original skip the decode: the decoded picture (at the JPEG scale this size needs)
        is kept in memory, and rendering from it gives the same bytes as decoding again."""
        key = ("decoded", source.file.owner, _jpeg_scale(request, source.media, settings))
        decoded = self.decoded.get(key)
        if decoded is not None:
            return await self.pool.run(render_decoded, request, decoded, settings)
        data = await self.sources.read_bytes(source.file)
        decoded, rendered = await self.pool.run(decode_and_render, request, data, key[2], settings)
        self.decoded.put(key, decoded)
        return rendered

    async def _render(self, request: ThumbnailRequest, source: Source, prepared: _Prepared) -> Result:
        media, times, settings = source.media, prepared.times, prepared.settings
        if media.kind is MediaKind.IMAGE:
            _refuse_oversized(media, settings.max_source_pixels)  # before decoding or queueing
            rendered = await self._render_image(request, source, settings)
        elif media.kind is MediaKind.VIDEO:
            info = await self.sources.video_info(source)
            rendered = await self.sources.read(source.file, lambda opened: render_video(
                request, opened, times, (info.width, info.height), settings, info.keyframes))
        elif media.kind is MediaKind.AUDIO:
            rendered = await self.pool.run(render_image, request, self.placeholder, settings)
        else:
            raise Unprocessable(f"entry {request.entry.entry_id} is not an image, a video or audio")
        return _result(rendered)


@dataclass(frozen=True)
class _Prepared:
    key: str  # the canonical result key
    etag: str
    headers: dict[str, str]
    times: list[float]  # video: the frames to grab
    settings: RenderSettings


def _refuse_oversized(media: MediaInfo, max_pixels: int) -> None:
    """SPEC §2: an image, or a video's frames, over the pixel limit as its header declares it: 413."""
    if media.width * media.height > max_pixels:
        what = "the original is" if media.kind is MediaKind.IMAGE else "the video's frames are"
        raise TooLarge(f"{what} {media.width}x{media.height} pixels (limit {max_pixels})")


def _jpeg_scale(request: ThumbnailRequest, media: MediaInfo, settings: RenderSettings) -> int:
    """The JPEG reduction this thumbnail decodes at (1 for other formats): the key of a kept decoded picture."""
    if media.container not in JPEG_FORMATS:
        return 1
    stored = (media.width, media.height)
    oriented = (media.height, media.width) if media.orientation in (5, 6, 7, 8) else stored
    return reduction(stored, plan_for(request, oriented, settings))


def _result(rendered: Rendered) -> Result:
    return Result(rendered.body, rendered.content_type,
                  {"width": rendered.width, "height": rendered.height, "timings": rendered.timings})
