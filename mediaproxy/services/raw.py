"""raw (SPEC §4): the original file (or a flavor) as uploaded, streamed with Range and conditional requests."""

from __future__ import annotations

import time

from aiohttp import web

from ..config import Config
from ..responses import TIER, cache_control, content_disposition, download_name, server_timing
from ..urls import RawRequest
from .sources import Sources


class RawService:
    def __init__(self, sources: Sources, config: Config) -> None:
        self.sources = sources
        self.config = config

    async def handle(self, request: RawRequest, http_request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        source = await self.sources.get(request.entry, request.selector)
        original = source.original
        http_request[TIER] = "file"
        headers = {
            "Content-Type": source.media.mime_type,
            "Cache-Control": cache_control(self.config.max_age("raw", request.entry.partner_id)),
            "Server-Timing": server_timing({"origin": (time.perf_counter() - started) * 1000}, "file"),
        }
        if not request.direct_serve:
            extension = source.media.extension or original.extension
            name = download_name(request.file_name, original.manifest.name, request.entry.entry_id, extension)
            headers["Content-Disposition"] = content_disposition(name)
        # FileResponse streams with sendfile and answers Range (206/416), HEAD, If-None-Match/If-Modified-Since
        return web.FileResponse(original.path, headers=headers)
