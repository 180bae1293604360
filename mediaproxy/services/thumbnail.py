"""thumbnail (SPEC §2): an image resized and cropped as asked, or a frame (or a strip of frames) of a video.

Every kind of source ends in the same media pipeline; this module picks the source, decides the output format
(`format/auto`: from the client's Accept), builds the canonical cache key, and answers with Cache-Control, a strong
ETag and Last-Modified (304 when the client's copy is current).
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cachetools import LRUCache
from PIL import Image

from ..cache.results import Result, ResultCache
from ..config import Config
from ..errors import FlavorNotFound, TooLarge, Unprocessable
from ..cache.memory import EntryKeys, MemoryCache
from ..media.animation import ANIMATED_SOURCES, within_budget
from ..media.decode import JPEG_SCALES
from ..media.encode import ANIMATES, equivalent_quality
from ..media.probe import MediaInfo, MediaKind, has_alpha
from ..media.thumbnail import (Rendered, RenderSettings, decode_and_render, decode_finer_and_render, decode_scale,
                               derive_and_render, plan_for, render_decoded, render_image, render_video)
from ..media.video import frame_times
from ..options import DEFAULT_QUALITY, OutputFormat
from ..refs import FileSelector, Purged
from ..request_keys import TIER
from ..responses import cache_control, http_date, not_modified, server_timing
from ..urls import ThumbnailRequest
from ..workpool import WorkPool
from .sources import Source, Sources

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
        self.animation_pixels = config.thumbnail.animation_pixels if config.thumbnail.keep_animation else 0
        self._limits = RenderSettings(DEFAULT_QUALITY, config.limits.max_source_pixels, config.limits.max_output_pixels)
        self._prepared: LRUCache = LRUCache(maxsize=20_000)
        self._prepared_keys = EntryKeys(self._prepared, lambda memo: memo[0].entry.prefix)

    async def handle(self, request: ThumbnailRequest, http_request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        source = await self._source(request)
        negotiated = self._negotiates(request)
        if negotiated:  # from here on the request names the format it is answered in
            request = request.in_format(self._negotiate(request, source, http_request.headers.get("Accept", "")))
        memo = (request, negotiated, source.file.identity, source.file.manifest.thumb_offset)
        prepared = self._prepared.get(memo)
        known = prepared is not None
        if not known:  # what repeated requests would recompute every time: the key, times, validators
            prepared = await self._prepare(request, source, negotiated)
        origin_ms = (time.perf_counter() - started) * 1000
        if not_modified(http_request, prepared.etag, source.file.mtime):
            if not known:
                self._keep_prepared(memo, prepared)
            return web.Response(status=304, headers=prepared.headers)
        result, tier = await self.results.get(prepared.key, lambda: self._render(request, source, prepared),
                                              owner=source.file.owner)
        http_request[TIER] = tier
        if not known and tier != "render":
            self._keep_prepared(memo, prepared)
        timings = {"origin": origin_ms, **(result.meta.get("timings", {}) if tier == "render" else {})}
        return web.Response(body=result.body, content_type=result.content_type,
                            headers={**prepared.headers, "Server-Timing": server_timing(timings, tier)})

    def _keep_prepared(self, memo: tuple, prepared: _Prepared) -> None:
        """For a request asked again (its result was there, or the client had it): most thumbnail URLs behind a
        CDN are asked once, and keeping theirs would cost more than it ever saves."""
        self._prepared[memo] = prepared
        self._prepared_keys.added(memo)

    def _negotiates(self, request: ThumbnailRequest) -> bool:
        """format/auto, or no format at all where the partner (or [http]) has auto_format on."""
        if request.format is OutputFormat.AUTO:
            return True
        return not request.format_given and self.config.auto_format(request.entry.partner_id)

    def _negotiate(self, request: ThumbnailRequest, source: Source, accept: str) -> OutputFormat:
        media = source.media
        alpha = media.alpha if media.kind is MediaKind.IMAGE else (
            self._placeholder_alpha if media.kind is MediaKind.AUDIO else False)
        return negotiate(accept, alpha=alpha, animated=self._animated(request, media))

    @functools.cached_property
    def _placeholder_alpha(self) -> bool:
        with Image.open(io.BytesIO(self.placeholder)) as picture:
            return has_alpha(picture)

    def _animated(self, request: ThumbnailRequest, media: MediaInfo) -> bool:
        """Whether an animated output keeps this source's animation (the format aside): kept, and within budget."""
        if not self.animation_pixels or media.container not in ANIMATED_SOURCES or media.frames < 2:
            return False
        size = (media.width, media.height)
        return within_budget(media.frames, size, plan_for(request.options, size, self._limits).output_size,
                             self.animation_pixels)

    def forget_purged(self, purged: Purged) -> None:
        """Drop what this worker prepared for purged entries (their decoded pictures are the runtime's memory)."""
        self._prepared_keys.forget(purged)

    async def _prepare(self, request: ThumbnailRequest, source: Source, negotiated: bool) -> _Prepared:
        partner = self.config.partner(request.entry.partner_id)
        quality = request.quality or partner.quality or DEFAULT_QUALITY
        if negotiated:  # the quality asked was meant for JPEG: the chosen format's setting of that fidelity
            quality = equivalent_quality(request.format, quality)
        key = f"{request.cache_key()}|q={quality if request.format in _LOSSY else '-'}|{source.file.identity}"
        animates = request.format in ANIMATES and self._animated(request, source.media)
        if animates:
            key += f"|animated={self.animation_pixels}"
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
                   "Last-Modified": http_date(source.file.mtime)}
        if negotiated:
            headers["Vary"] = "Accept"
        settings = RenderSettings(quality, self._limits.max_source_pixels, self._limits.max_output_pixels,
                                  self.animation_pixels if animates else 0)
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
        """Other sizes of a hot original skip the decode: decoded pictures are kept in memory by (file owner,
        JPEG scale). A picture kept at the scale this size needs gives the bytes a fresh decode gives; one kept at a
        finer scale is reduced to it (and that kept too), within the bound of SPEC §2. An original asked again in
        more detail than kept is decoded at full scale (or the finest that may be kept), so that every later size
        of it derives from that one decode, whatever order the sizes come in."""
        options = request.options
        if settings.animation_pixels or not self.decoded.item_limit:  # every frame, or nothing may be kept
            return await self.pool.run(render_image, options, await self.sources.read_bytes(source.file), settings)
        identity = source.file.owner  # the file and its identity: a purge of its entry drops them
        needed = decode_scale(options, source.media, settings)
        for scale in reversed([scale for scale in JPEG_SCALES if scale <= needed]):
            kept = self.decoded.get(("decoded", identity, scale))
            if kept is None:
                continue
            if scale == needed:
                return await self.pool.run(render_decoded, options, kept, settings)
            derived, rendered = await self.pool.run(derive_and_render, options, kept, needed // scale, settings)
            self.decoded.put(("decoded", identity, needed), derived)
            return rendered
        asked_before = any(self.decoded.get(("decoded", identity, coarser)) is not None
                           for coarser in JPEG_SCALES if coarser > needed)
        scale = self._finest_kept_scale(source.media, needed) if asked_before else needed
        data = await self.sources.read_bytes(source.file)
        if scale == needed:
            decoded, rendered = await self.pool.run(decode_and_render, options, data, scale, settings)
        else:
            decoded, derived, rendered = await self.pool.run(decode_finer_and_render, options, data, scale, needed,
                                                             settings)
            self.decoded.put(("decoded", identity, needed), derived)
        self.decoded.put(("decoded", identity, scale), decoded)
        return rendered

    def _finest_kept_scale(self, media: MediaInfo, needed: int) -> int:
        """The finest JPEG scale, down to `needed`, whose decoded picture (RGB: 4 bytes a pixel in Pillow) is small
        enough to be kept."""
        return next((scale for scale in JPEG_SCALES if scale < needed and math.ceil(media.width / scale)
                     * math.ceil(media.height / scale) * 4 <= self.decoded.item_limit), needed)

    async def _render(self, request: ThumbnailRequest, source: Source, prepared: _Prepared) -> Result:
        media, times, settings = source.media, prepared.times, prepared.settings
        if media.kind is MediaKind.IMAGE:
            _refuse_oversized(media, settings.max_source_pixels)  # before decoding or queueing
            rendered = await self._render_image(request, source, settings)
        elif media.kind is MediaKind.VIDEO:
            info = await self.sources.video_info(source)
            rendered = await self.sources.read(source.file, lambda opened: render_video(
                request.options, opened, times, (info.width, info.height), settings, info.keyframes))
        elif media.kind is MediaKind.AUDIO:
            rendered = await self.pool.run(render_image, request.options, self.placeholder, settings)
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


@functools.lru_cache(maxsize=1024)  # a few Accept strings make most of the traffic
def accepted_formats(accept: str) -> frozenset[OutputFormat]:
    """Which of AVIF and WebP an Accept header names with a quality above 0. `image/*` and `*/*` do not count:
    browsers that decode neither send them too."""
    named = set()
    for item in accept.split(","):
        media_type, *parameters = (part.strip() for part in item.split(";"))
        output = _NEGOTIABLE.get(media_type.lower())
        if output is None:
            continue
        quality = next((value for name, _, value in (parameter.partition("=") for parameter in parameters)
                        if name.strip().lower() == "q"), "1")
        try:
            if float(quality) > 0:
                named.add(output)
        except ValueError:
            pass  # a malformed q: as if the type were not named
    return frozenset(named)


_NEGOTIABLE = {"image/avif": OutputFormat.AVIF, "image/webp": OutputFormat.WEBP}


def negotiate(accept: str, *, alpha: bool, animated: bool) -> OutputFormat:
    """SPEC §2 format/auto: AVIF if the client takes it, then WebP, else JPEG (PNG for a picture with alpha). A
    source kept animated: WebP if taken, else GIF (every client shows a GIF's animation)."""
    accepted = accepted_formats(accept)
    if animated:
        return OutputFormat.WEBP if OutputFormat.WEBP in accepted else OutputFormat.GIF
    if OutputFormat.AVIF in accepted:
        return OutputFormat.AVIF
    if OutputFormat.WEBP in accepted:
        return OutputFormat.WEBP
    return OutputFormat.PNG if alpha else OutputFormat.JPG


def _refuse_oversized(media: MediaInfo, max_pixels: int) -> None:
    """SPEC §2: an image, or a video's frames, over the pixel limit as its header declares it: 413."""
    if media.width * media.height > max_pixels:
        what = "the original is" if media.kind is MediaKind.IMAGE else "the video's frames are"
        raise TooLarge(f"{what} {media.width}x{media.height} pixels (limit {max_pixels})")


def _result(rendered: Rendered) -> Result:
    return Result(rendered.body, rendered.content_type,
                  {"width": rendered.width, "height": rendered.height, "timings": rendered.timings})
