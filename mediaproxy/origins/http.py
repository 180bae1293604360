"""Originals behind an upstream HTTP server: what it has (entry.json, HEAD), and its files' bytes by range.

The upstream cannot be listed, so a file is found from entry.json when the entry has one, else by asking (HEAD)
for each `original.{ext}` / `flavor_{id}.{ext}` of the configured extensions; what was found is remembered. A file
is identified by its validators (ETag, else Last-Modified and length); its bytes are read by `Range`, with
`If-Range` so that a file changed between two reads is noticed instead of stitched. Every request is bounded: a
connect and between-bytes time-out, an overall deadline, a cap on connections, and a per-entry share of them, so
one slow entry cannot starve the others. Every URL is built from the configured base and validated ids, so no
request can reach another host.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from cachetools import LRUCache
from yarl import URL

from .. import metrics
from ..errors import MediaProxyError, TooLarge, UpstreamFailed, UpstreamTimeout
from ..refs import ID_PATTERN, EntryRef, FileSelector
from .base import (MANIFEST_NAME, EntryFile, EntryManifest, ListedEntry, OriginalChanged, RangesIgnored,
                   candidate_names, not_found, parse_manifest)

log = logging.getLogger(__name__)
_CHUNK = 256 * 1024
_MANIFEST_LIMIT = 1_000_000
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)\Z")


class HttpOrigin:
    remote = True

    def __init__(self, base_url: str, extensions: tuple[str, ...], *, timeout_seconds: float,
                 deadline_seconds: float, connections: int, connections_per_entry: int, max_bytes: int,
                 entries_file: Path | None = None) -> None:
        self.base = URL(base_url.rstrip("/") + "/")
        self.extensions = extensions
        self.max_bytes = max_bytes
        self.entries_file = entries_file
        self._timeout = aiohttp.ClientTimeout(total=deadline_seconds, connect=timeout_seconds,
                                              sock_connect=timeout_seconds, sock_read=timeout_seconds)
        self._connections = connections
        self._per_entry = connections_per_entry
        self._entry_slots: weakref.WeakValueDictionary[EntryRef, asyncio.Semaphore] = weakref.WeakValueDictionary()
        self._session: aiohttp.ClientSession | None = None
        self._health_session: aiohttp.ClientSession | None = None
        self._found: LRUCache[tuple[EntryRef, FileSelector], str] = LRUCache(maxsize=100_000)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = _session(self._timeout, self._connections)
        return self._session

    async def close(self) -> None:
        for session in (self._session, self._health_session):
            if session is not None:
                await session.close()

    async def reachable(self) -> bool:
        """Any HTTP answer from the base URL counts (a 403 or 404 there is normal); no answer does not. Asked on a
        connection of its own, so busy or hung fetches cannot make the node look dead."""
        if self._health_session is None:
            self._health_session = _session(aiohttp.ClientTimeout(total=self._timeout.connect), 1)
        try:
            async with self._health_session.head(self.base, allow_redirects=False):
                return True
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            return False

    def url(self, ref: EntryRef, file_name: str) -> URL:
        return self.base / str(ref.partner_id) / ref.entry_id / file_name

    # ----------------------------------------------------------------------------------------------- locating

    async def locate(self, ref: EntryRef, selector: FileSelector) -> EntryFile:
        manifest = await self._manifest(ref) or EntryManifest()
        names = candidate_names(manifest, selector, self.extensions)
        remembered = self._found.get((ref, selector))
        if remembered in names:
            file = await self._head(ref, remembered, manifest)
            if file is not None:
                return file
        files = await asyncio.gather(*(self._head(ref, name, manifest) for name in names), return_exceptions=True)
        for name, file in zip(names, files):
            if isinstance(file, EntryFile):
                self._found[(ref, selector)] = name
                return file
        self._found.pop((ref, selector), None)
        for answer in files:
            if isinstance(answer, BaseException):
                raise answer  # the upstream failed: a 502/504, not a 404
        raise not_found(ref, selector)

    async def _manifest(self, ref: EntryRef) -> EntryManifest | None:
        url = self.url(ref, MANIFEST_NAME)
        async with self._request(ref, "GET", url) as response:
            if response.status in (404, 410):
                return None
            _check_status(response, url)
            body = await _read_whole(response, _MANIFEST_LIMIT, "entry.json")
        return parse_manifest(body, ref)

    async def _head(self, ref: EntryRef, file_name: str, manifest: EntryManifest) -> EntryFile | None:
        """The file as the upstream describes it (size, validators), or None when it has no such file."""
        url = self.url(ref, file_name)
        async with self._request(ref, "HEAD", url) as response:
            if response.status in (404, 410, 403):
                return None
            _check_status(response, url)
            size = response.content_length
            etag, last_modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
        if size is None:
            raise UpstreamFailed(f"upstream gave no Content-Length for {file_name}")
        if size > self.max_bytes:
            raise TooLarge(f"the original of {ref.entry_id} is {size} bytes (limit {self.max_bytes})")
        identity = etag or (f"{last_modified}|{size}" if last_modified else f"size {size}")
        return EntryFile(ref=ref, file_name=file_name, size=size, mtime=_http_date(last_modified) or 0.0,
                         identity=identity, manifest=manifest, url=str(url), etag=etag, last_modified=last_modified)

    async def list_entries(self) -> list[ListedEntry]:
        """The entries named in `[console] entries_file` (`partner/entry` lines): an http origin cannot be listed."""
        if self.entries_file is None:
            return []
        text = await asyncio.to_thread(self.entries_file.read_text, encoding="utf-8")
        found = []
        for line in text.splitlines():
            partner, _, entry = line.strip().partition("/")
            if partner.lstrip("-").isdigit() and ID_PATTERN.match(entry):
                found.append(ListedEntry(EntryRef(int(partner), entry)))
        return found

    # ----------------------------------------------------------------------------------------------- reading

    async def read_range(self, file: EntryFile, start: int, end: int) -> bytes:
        url = URL(file.url)
        headers = {"Range": f"bytes={start}-{end}"}
        validator = file.etag if file.etag and not file.etag.startswith("W/") else file.last_modified
        if validator:
            headers["If-Range"] = validator  # changed since located: the upstream sends the new whole file, a 200
        started = time.perf_counter()
        async with self._request(file.ref, "GET", url, headers) as response:
            if response.status == 206:
                if not _same_file(response, file) or _content_range(response) != (start, end, file.size):
                    raise OriginalChanged(file)
                body = await _read_exact(response, end - start + 1)
            elif response.status == 200:
                if _same_file(response, file) and response.content_length == file.size:
                    raise RangesIgnored()
                raise OriginalChanged(file)
            elif response.status in (404, 410, 412, 416):
                raise OriginalChanged(file)
            else:
                _check_status(response, url)
        metrics.UPSTREAM_BYTES.inc(len(body))
        metrics.UPSTREAM_SECONDS.observe(time.perf_counter() - started)
        return body

    async def read_whole(self, file: EntryFile) -> AsyncIterator[bytes]:
        url = URL(file.url)
        async with self._request(file.ref, "GET", url) as response:
            if response.status in (404, 410) or response.status == 200 and not _same_file(response, file):
                raise OriginalChanged(file)
            _check_status(response, url)
            if response.content_length is not None and response.content_length != file.size:
                raise OriginalChanged(file)
            received = 0
            async for chunk in response.content.iter_chunked(_CHUNK):
                received += len(chunk)
                if received > file.size:
                    raise OriginalChanged(file)
                metrics.UPSTREAM_BYTES.inc(len(chunk))
                yield chunk
            if received != file.size:
                metrics.UPSTREAM_ERRORS.labels("truncated").inc()
                raise UpstreamFailed(f"upstream sent a truncated body ({received} of {file.size} bytes)")

    # ----------------------------------------------------------------------------------------------- plumbing

    def _request(self, ref: EntryRef, method: str, url: URL, headers: dict[str, str] | None = None) -> _Upstream:
        slots = self._entry_slots.get(ref)
        if slots is None:
            slots = self._entry_slots[ref] = asyncio.Semaphore(self._per_entry)
        return _Upstream(slots, lambda: self.session.request(method, url, headers=headers, allow_redirects=False))


def _session(timeout: aiohttp.ClientTimeout, connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=timeout, auto_decompress=False,
                                 headers={"Accept-Encoding": "identity", "User-Agent": "mediaproxy"},
                                 connector=aiohttp.TCPConnector(limit=connections, ttl_dns_cache=60))


class _Upstream:
    """`async with` an upstream response, within the entry's share of connections, with connection faults and
    time-outs turned into 502 / 504."""

    def __init__(self, slots: asyncio.Semaphore, open_request) -> None:
        self._slots = slots
        self._open = open_request
        self._context = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        await self._slots.acquire()
        try:
            self._context = self._open()
            return await self._context.__aenter__()
        except BaseException as exc:
            self._slots.release()
            raise _translate(exc) from None

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        try:
            await self._context.__aexit__(exc_type, exc, tb)
        finally:
            self._slots.release()
        if exc is not None and not isinstance(exc, (MediaProxyError, RangesIgnored)):
            translated = _translate(exc)
            if translated is not exc:
                raise translated from None
        return False


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        metrics.UPSTREAM_ERRORS.labels("timeout").inc()
        return UpstreamTimeout("upstream origin timed out")
    if isinstance(exc, (aiohttp.ClientPayloadError, asyncio.IncompleteReadError)):
        metrics.UPSTREAM_ERRORS.labels("truncated").inc()
        return UpstreamFailed("upstream sent a truncated body")
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        metrics.UPSTREAM_ERRORS.labels("connection").inc()
        return UpstreamFailed(f"upstream origin unreachable ({type(exc).__name__})")
    return exc


def _check_status(response: aiohttp.ClientResponse, url: URL) -> None:
    if response.status not in (200, 206):
        metrics.UPSTREAM_ERRORS.labels("status").inc()
        log.warning("upstream answered %s for %s", response.status, url)
        raise UpstreamFailed(f"upstream origin answered {response.status}")


def _same_file(response: aiohttp.ClientResponse, file: EntryFile) -> bool:
    """Whether the response's validators (where it sends them) are those the file was located with."""
    etag, last_modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
    if file.etag and etag:
        return etag == file.etag
    return not (file.last_modified and last_modified) or last_modified == file.last_modified


def _content_range(response: aiohttp.ClientResponse) -> tuple[int, int, int] | None:
    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
    return None if match is None else (int(match[1]), int(match[2]), int(match[3]))


async def _read_exact(response: aiohttp.ClientResponse, length: int) -> bytes:
    if response.content_length is not None and response.content_length != length:
        raise UpstreamFailed(f"upstream sent {response.content_length} bytes for a range of {length}")
    body = await response.content.readexactly(length)
    if not response.content.at_eof() and await response.content.read(1):
        raise UpstreamFailed(f"upstream sent more than the {length} bytes of a range")
    return body


async def _read_whole(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """A small body to its end, however it is segmented or chunked; over `limit` is "too large"."""
    if response.content_length is not None and response.content_length > limit:
        raise UpstreamFailed(f"upstream {what} is too large (over {limit} bytes)")
    chunks, total = [], 0
    async for chunk in response.content.iter_any():
        total += len(chunk)
        if total > limit:
            raise UpstreamFailed(f"upstream {what} is too large (over {limit} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
