"""Sending a media body: a run of pieces (bytes built here, and ranges of an entry's file) with its length known
before the first byte, answered whole or by range (SPEC §4), validated with a strong ETag and Last-Modified.

A range of a local file goes out with sendfile; a range of a remote one as its blocks arrive from the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..origins.base import EntryFile
from ..responses import not_modified
from ..store import Store
from ..urls import redact_ks

log = logging.getLogger(__name__)

_SINGLE_RANGE = re.compile(r"bytes=(\d*)-(\d*)\Z")


@dataclass(frozen=True)
class FileRange:
    """Bytes [start, end] (inclusive) of an entry's file."""

    file: EntryFile
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


@dataclass(frozen=True)
class PathRange:
    """Bytes [start, end] (inclusive) of a file on this machine (a cached clip)."""

    path: Path
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


Piece = bytes | FileRange | PathRange


def total_length(pieces: Sequence[Piece]) -> int:
    return sum(_length(piece) for piece in pieces)


def _length(piece: Piece) -> int:
    return len(piece) if isinstance(piece, bytes) else piece.length


def slice_pieces(pieces: Sequence[Piece], first: int, last: int) -> list[Piece]:
    """The pieces that make bytes [first, last] of their concatenation, cut to fit."""
    cut: list[Piece] = []
    offset = 0
    for piece in pieces:
        length = _length(piece)
        low, high = max(first - offset, 0), min(last - offset, length - 1)
        if low <= high:
            if isinstance(piece, bytes):
                cut.append(piece[low:high + 1])
            else:
                cut.append(dataclasses.replace(piece, start=piece.start + low, end=piece.start + high))
        offset += length
    return cut


async def send(request: web.Request, store: Store, pieces: Sequence[Piece], headers: dict[str, str], *,
               etag: str, last_modified: float) -> web.StreamResponse:
    """Answer with the pieces: 304 when the client's copy is current, 206/416 for a range, else 200."""
    headers = {**headers, "ETag": etag, "Last-Modified": email.utils.formatdate(last_modified, usegmt=True),
               "Accept-Ranges": "bytes"}
    if not_modified(request, etag, last_modified):
        return web.Response(status=304, headers=headers)
    size = total_length(pieces)
    wanted = requested_range(request, size, etag, last_modified)
    if wanted is None:
        status, body = 200, list(pieces)
    elif wanted == "unsatisfiable":
        return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    else:
        first, last = wanted
        status, body = 206, slice_pieces(pieces, first, last)
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    first_remote = next((piece for piece in body if isinstance(piece, FileRange) and piece.file.path is None), None)
    if first_remote is not None and request.method != "HEAD":
        # its first block before the status line: a dead upstream is a clean 502/504, not a cut 200
        await store.block(first_remote.file, first_remote.start // store.block_bytes)
    return MediaBody(status, headers, body, store)


class MediaBody(web.StreamResponse):
    """A response that sends its pieces when aiohttp prepares it (as FileResponse does), so a client that goes
    away mid-body is the quiet disconnection aiohttp expects, and the access log sees the answer."""

    def __init__(self, status: int, headers: dict[str, str], pieces: list[Piece], store: Store) -> None:
        super().__init__(status=status, headers=headers)
        self.content_length = total_length(pieces)
        self._pieces = pieces
        self._store = store

    async def prepare(self, request: web.BaseRequest):
        writer = await super().prepare(request)
        if request.method == "HEAD":
            return writer
        try:
            for piece in self._pieces:
                await _send_piece(request, self, self._store, piece)
        except ConnectionError:
            raise
        except Exception as error:  # the status line is out: all that is left is to cut the connection short
            log.warning("%s %s: stopped sending after the headers: %s", request.method, redact_ks(request.path_qs),
                        getattr(error, "message", None) or repr(error))
            if request.transport is not None:
                request.transport.close()
            raise ConnectionResetError("the body could not be sent whole") from None
        await self.write_eof()
        return writer


async def _send_piece(request: web.BaseRequest, response: web.StreamResponse, store: Store, piece: Piece) -> None:
    if isinstance(piece, bytes):
        await response.write(piece)
    elif isinstance(piece, PathRange):
        await _sendfile(request, response, piece.path, piece.start, piece.length)
    elif piece.file.path is not None:
        await _sendfile(request, response, piece.file.path, piece.start, piece.length)
    else:
        async for chunk in store.stream(piece.file, piece.start, piece.end):
            await response.write(chunk)


async def _sendfile(request: web.BaseRequest, response: web.StreamResponse, path: Path, start: int,
                    length: int) -> None:
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("connection lost")
    with open(path, "rb") as source:  # noqa: ASYNC230 - opening is not reading; sendfile does that
        loop = asyncio.get_running_loop()
        try:
            await loop.sendfile(transport, source, start, length)
        except NotImplementedError:  # a transport without sendfile (TLS): through the writer
            source.seek(start)
            left = length
            while left > 0:
                chunk = await loop.run_in_executor(None, source.read, min(left, 1 << 20))
                if not chunk:
                    raise ConnectionResetError("the file ended early")
                await response.write(chunk)
                left -= len(chunk)


def requested_range(request: web.Request, size: int, etag: str,
                    last_modified: float) -> tuple[int, int] | str | None:
    """RFC 9110 §14: (first, last) of one satisfiable `bytes` range, "unsatisfiable", or None for the whole (no
    Range, a Range that is not one valid `bytes` range, or an `If-Range` that does not match this version)."""
    header = request.headers.get("Range")
    if header is None:
        return None
    if_range = request.headers.get("If-Range")
    if if_range is not None:
        if if_range.startswith(('"', "W/")):
            if if_range != etag:  # strong comparison: a weak tag never matches
                return None
        elif if_range != email.utils.formatdate(last_modified, usegmt=True):
            return None
    match = _SINGLE_RANGE.match(header.replace(" ", ""))
    if match is None or not (match[1] or match[2]):
        return None
    if match[1]:
        first = int(match[1])
        last = min(int(match[2]), size - 1) if match[2] else size - 1
        if match[2] and int(match[2]) < first:
            return None  # an invalid range is ignored
    else:
        suffix = int(match[2])
        if suffix == 0:
            return "unsatisfiable"
        first, last = max(size - suffix, 0), size - 1
    if first >= size:
        return "unsatisfiable"
    return first, last
