"""Sending a media body: a run of pieces (bytes built here, and ranges of an entry's file) with its length known
before the first byte, answered whole or by range (SPEC §4), validated with a strong ETag and Last-Modified.

A range of a local file goes out with sendfile; a range of a remote one as its blocks arrive from the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Self, TypeVar

from aiohttp import web

from .. import ranges
from ..errors import RangeNotSatisfiable
from ..media.clipparts import FlvTags, part_bytes
from ..origins.base import EntryFile
from ..responses import http_date, not_modified
from ..store import Store
from ..urls import redact_ks

log = logging.getLogger(__name__)
T = TypeVar("T")
_WATCH_SECONDS = 0.25  # how often a request waiting for upstream bytes looks whether its client is still there


class _Span:
    """Bytes [start, end] (inclusive) of something: their length, and a part of them."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def cut(self, low: int, high: int) -> Self:
        return replace(self, start=self.start + low, end=self.start + high)


@dataclass(frozen=True)
class FileRange(_Span):
    """Bytes [start, end] (inclusive) of an entry's file."""

    file: EntryFile
    start: int
    end: int


@dataclass(frozen=True)
class PathRange(_Span):
    """Bytes [start, end] (inclusive) of a file on this machine (a cached clip)."""

    path: Path
    start: int
    end: int


@dataclass(frozen=True)
class RebasedTags:
    """FLV tags of an entry's file whose timestamps are rewritten on their way out (a clip by index)."""

    file: EntryFile
    tags: FlvTags

    @property
    def length(self) -> int:
        return self.tags.size

    def cut(self, low: int, high: int) -> RebasedTags:
        return RebasedTags(self.file, self.tags.cut(low, high + 1))


Piece = bytes | FileRange | PathRange | RebasedTags


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
            whole = (low, high) == (0, length - 1)
            cut.append(piece if whole else piece[low:high + 1] if isinstance(piece, bytes) else piece.cut(low, high))
        offset += length
    return cut


async def send(request: web.Request, store: Store, pieces: Sequence[Piece], headers: dict[str, str], *,
               etag: str, last_modified: float) -> web.StreamResponse:
    """Answer with the pieces: 304 when the client's copy is current, 206/416 for a range, else 200."""
    headers = {**headers, "ETag": etag, "Last-Modified": http_date(last_modified),
               "Accept-Ranges": "bytes"}
    if not_modified(request, etag, last_modified):
        return web.Response(status=304, headers=headers)
    size = total_length(pieces)
    wanted = ranges.decide(request.headers.get("Range"), request.headers.get("If-Range"), size, etag, last_modified)
    if isinstance(wanted, ranges.Unsatisfiable):
        raise RangeNotSatisfiable(f"Range: {request.headers['Range'][:60]!r} is outside the {size} bytes", size)
    if isinstance(wanted, ranges.Partial):
        status, body = 206, slice_pieces(pieces, wanted.start, wanted.end)
        headers["Content-Range"] = wanted.headers["Content-Range"]
    else:
        status, body = 200, list(pieces)
    first_remote = next((piece for piece in body if isinstance(piece, FileRange) and piece.file.path is None), None)
    if first_remote is not None and request.method != "HEAD":
        # its first block before the status line: a dead upstream is a clean 502/504, not a cut 200
        try:
            await _while_connected(request, store.block(first_remote.file, first_remote.start // store.block_bytes))
        except ConnectionResetError:
            pass  # the client went away meanwhile: MediaBody.prepare finds it gone and sends nothing
    return MediaBody(status, headers, body, store)


async def _while_connected(request: web.BaseRequest, work: Awaitable[T]) -> T:
    """`work`'s result, or ConnectionResetError (`work` cancelled) as soon as the client's connection is gone.

    The server does not cancel a handler whose client disconnects (aiohttp's default), so a request waiting for an
    upstream block would keep its fetch (and an upstream connection) alive for nobody until the block came or its
    deadline passed; watched here, the fetch is left to the store, which abandons it when nobody else waits."""
    if _gone(request):  # gone already (while the original was located or probed): nothing is started for it
        if asyncio.iscoroutine(work):
            work.close()
        raise ConnectionResetError("the client went away")
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait([task], timeout=_WATCH_SECONDS)
            if done:
                return task.result()
            if _gone(request):
                raise ConnectionResetError("the client went away")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait([task])  # ended before anyone touches what it was using (a stream's generator)


def _gone(request: web.BaseRequest) -> bool:
    return request.transport is None or request.transport.is_closing()


class MediaBody(web.StreamResponse):
    """A response that sends its pieces when aiohttp prepares it (as FileResponse does), so a client that goes
    away mid-body is the quiet disconnection aiohttp expects, and the access log sees the answer."""

    def __init__(self, status: int, headers: dict[str, str], pieces: list[Piece], store: Store) -> None:
        super().__init__(status=status, headers=headers)
        self.content_length = total_length(pieces)
        self._pieces = pieces
        self._store = store

    async def prepare(self, request: web.BaseRequest):
        if _gone(request):  # aiohttp would only find out at the first write, after fetching for nobody
            raise ConnectionResetError("the client went away")
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
    elif isinstance(piece, RebasedTags):
        await _send_produced(response, _rebased(store, piece))
    elif isinstance(piece, PathRange):
        await _sendfile(request, response, piece.path, piece.start, piece.length)
    elif piece.file.path is not None:
        await _sendfile(request, response, piece.file.path, piece.start, piece.length)
    else:
        chunks = store.stream(piece.file, piece.start, piece.end)
        try:
            while (chunk := await _while_connected(request, _next(chunks))) is not None:
                await response.write(chunk)
        finally:
            await chunks.aclose()


async def _next(chunks: AsyncIterator[bytes]) -> bytes | None:
    return await anext(chunks, None)


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


def _rebased(store: Store, piece: RebasedTags) -> Iterator[bytes]:
    with store.open(piece.file) as source:
        yield from part_bytes(piece.tags, source)


async def _send_produced(response: web.StreamResponse, produced: Iterator[bytes]) -> None:
    """Bytes from a blocking generator, each step on a worker thread (it reads the file)."""
    try:
        while (chunk := await asyncio.to_thread(next, produced, None)) is not None:
            await response.write(chunk)
    finally:
        await asyncio.to_thread(produced.close)
