"""raw (SPEC §4): the original file (or a flavor) as uploaded, streamed with Range and conditional requests.

A local original goes out with sendfile; an http origin's as its blocks arrive (the first byte after the first
block, never after the whole file), and a Range request fetches only the blocks that cover it.
"""

from __future__ import annotations

import hashlib
import time

from aiohttp import web

from ..config import Config
from ..request_keys import TIER
from ..responses import cache_control, content_disposition, download_name, server_timing
from ..urls import RawRequest
from . import bodies
from .sources import Sources


class RawService:
    def __init__(self, sources: Sources, config: Config) -> None:
        self.sources = sources
        self.config = config

    async def handle(self, request: RawRequest, http_request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        source = await self.sources.get(request.entry, request.selector)
        file = source.file
        http_request[TIER] = "file"
        headers = {
            "Content-Type": source.media.mime_type,
            "Cache-Control": cache_control(self.config.max_age("raw", request.entry.partner_id)),
            "Server-Timing": server_timing({"origin": (time.perf_counter() - started) * 1000}, "file"),
        }
        if not request.direct_serve:
            extension = source.media.extension or file.extension
            name = download_name(request.file_name, file.manifest.name, request.entry.entry_id, extension)
            headers["Content-Disposition"] = content_disposition(name)
        etag = '"' + hashlib.blake2b(f"raw|{file.owner}".encode(), digest_size=16).hexdigest() + '"'
        pieces = [bodies.FileRange(file, 0, file.size - 1)] if file.size else []
        return await bodies.send(http_request, self.sources.store, pieces, headers, etag=etag,
                                 last_modified=file.mtime)
