"""thumbnail (SPEC §2): an image entry resized, cropped and encoded as asked; cached, shared, revalidatable."""

from __future__ import annotations

import hashlib

from aiohttp import web

from ..cache.results import Result, ResultCache
from ..config import Config
from ..errors import TooLarge, Unprocessable
from ..media.probe import MediaKind
from ..media.thumbnail import RenderSettings, render_image
from ..refs import FileSelector
from ..responses import cache_control, not_modified
from ..urls import OutputFormat, ThumbnailRequest
from ..workpool import WorkPool
from .sources import Source, Sources

DEFAULT_QUALITY = 75
_LOSSY = frozenset({OutputFormat.JPG, OutputFormat.WEBP, OutputFormat.AVIF})


class ThumbnailService:
    def __init__(self, sources: Sources, results: ResultCache, pool: WorkPool, config: Config) -> None:
        self.sources = sources
        self.results = results
        self.pool = pool
        self.config = config

    async def handle(self, request: ThumbnailRequest, http_request: web.Request) -> web.StreamResponse:
        source = await self.sources.get(request.entry, FileSelector(version=request.version))
        partner = self.config.partner(request.entry.partner_id)
        quality = request.quality or partner.quality or DEFAULT_QUALITY
        key = f"{request.cache_key()}|q={quality if request.format in _LOSSY else '-'}|{source.original.identity}"
        etag = '"' + hashlib.blake2b(key.encode(), digest_size=16).hexdigest() + '"'
        response = web.Response(headers={
            "Cache-Control": cache_control(self.config.max_age("thumbnail", request.entry.partner_id)),
            "ETag": etag,
        })
        response.last_modified = source.original.mtime
        if not_modified(http_request, etag, source.original.mtime):
            response.set_status(304)
            return response
        result, _tier = await self.results.get(key, lambda: self._render(request, source, quality))
        response.body = result.body
        response.content_type = result.content_type
        return response

    async def _render(self, request: ThumbnailRequest, source: Source, quality: int) -> Result:
        media = source.media
        if media.kind is not MediaKind.IMAGE:
            raise Unprocessable(f"entry {request.entry.entry_id} is not an image ({media.kind})")
        limit = self.config.limits.max_source_pixels
        if media.width * media.height > limit:  # refused before any decoding or queueing
            raise TooLarge(f"the original is {media.width}x{media.height} pixels (limit {limit})")
        data = await self.sources.store.read(source.original)
        settings = RenderSettings(quality, limit, self.config.limits.max_output_pixels)
        rendered = await self.pool.run(render_image, request, data, settings)
        return Result(rendered.body, rendered.content_type, {"width": rendered.width, "height": rendered.height})
