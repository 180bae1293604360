"""Originals behind an upstream HTTP server, fetched once into the disk cache and revalidated from there.

The upstream cannot be listed, so a file is found from entry.json when the entry has one, else by asking (HEAD,
all at once) for each `original.{ext}` / `flavor_{id}.{ext}` of the configured extensions; what was found is
remembered. Bodies are checked against Content-Length and the byte limit before they count as cached. Every URL is
built from the configured base and validated ids, so no request can reach another host.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
from cachetools import LRUCache
from yarl import URL

from .. import metrics
from ..cache.disk import CachedFile, DiskCache, SizeMismatch, TooBig
from ..errors import MediaProxyError, TooLarge, UpstreamFailed, UpstreamTimeout
from ..refs import EntryRef, FileSelector
from .base import MANIFEST_NAME, EntryManifest, Original, candidate_names, not_found, parse_manifest

log = logging.getLogger(__name__)
_CHUNK = 256 * 1024
_MANIFEST_LIMIT = 1_000_000


class HttpOrigin:
    def __init__(self, base_url: str, extensions: tuple[str, ...], disk: DiskCache, *,
                 timeout_seconds: float, max_bytes: int) -> None:
        self.base = URL(base_url.rstrip("/") + "/")
        self.extensions = extensions
        self.disk = disk
        self.max_bytes = max_bytes
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout_seconds, sock_connect=timeout_seconds,
                                              sock_read=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None
        self._found: LRUCache[tuple[EntryRef, FileSelector], str] = LRUCache(maxsize=100_000)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, auto_decompress=False,
                headers={"Accept-Encoding": "identity", "User-Agent": "mediaproxy"},
                connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=60))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def reachable(self) -> bool:
        """Any HTTP answer from the base URL counts (a 403 or 404 there is normal); no answer does not."""
        try:
            async with self.session.head(self.base, allow_redirects=False):
                return True
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            return False

    def url(self, ref: EntryRef, file_name: str) -> URL:
        return self.base / str(ref.partner_id) / ref.entry_id / file_name

    async def fetch(self, ref: EntryRef, selector: FileSelector) -> Original:
        manifest = await self._manifest(ref) or EntryManifest()
        names = candidate_names(manifest, selector, self.extensions)
        remembered = self._found.get((ref, selector))
        if remembered in names:
            original = await self._get(ref, remembered, manifest)
            if original is not None:
                return original
        if len(names) > 1:
            names = await self._existing(ref, names)
        for name in names:
            original = await self._get(ref, name, manifest)
            if original is not None:
                self._found[(ref, selector)] = name
                return original
        self._found.pop((ref, selector), None)
        raise not_found(ref, selector)

    async def _manifest(self, ref: EntryRef) -> EntryManifest | None:
        url = self.url(ref, MANIFEST_NAME)
        async with self._request("GET", url) as response:
            if response.status in (404, 410):
                return None
            _check_status(response, url)
            body = await _read_limited(response, _MANIFEST_LIMIT)
        return parse_manifest(body, ref)

    async def _existing(self, ref: EntryRef, names: list[str]) -> list[str]:
        """The names (in order) that the upstream has, asked all at once with HEAD."""
        async def exists(name: str) -> bool:
            url = self.url(ref, name)
            async with self._request("HEAD", url) as response:
                if response.status in (404, 410, 403):
                    return False
                _check_status(response, url)
                return True

        answers = await asyncio.gather(*(exists(name) for name in names), return_exceptions=True)
        found = [name for name, answer in zip(names, answers) if answer is True]
        if not found:
            for answer in answers:
                if isinstance(answer, BaseException):
                    raise answer  # the upstream failed: a 502/504, not a 404
        return found

    async def _get(self, ref: EntryRef, file_name: str, manifest: EntryManifest) -> Original | None:
        """GET (conditional when cached) one file into the disk cache; None when the upstream has no such file."""
        url = self.url(ref, file_name)
        key = f"original|{url}"
        cached = await self.disk.open(key)
        headers = {}
        if cached is not None:
            if cached.meta.get("etag"):
                headers["If-None-Match"] = cached.meta["etag"]
            if cached.meta.get("last_modified"):
                headers["If-Modified-Since"] = cached.meta["last_modified"]
        started = time.perf_counter()
        async with self._request("GET", url, headers=headers) as response:
            if response.status == 304 and cached is not None:
                metrics.CACHE.labels("origin", "revalidated").inc()
                metrics.UPSTREAM_SECONDS.observe(time.perf_counter() - started)
                return self._original(ref, file_name, manifest, cached)
            if response.status in (404, 410):
                if cached is not None:
                    await self.disk.discard(key)
                return None
            _check_status(response, url)
            entry = await self._store(key, response, url)
        metrics.CACHE.labels("origin", "fetched").inc()
        metrics.UPSTREAM_BYTES.inc(entry.size)
        metrics.UPSTREAM_SECONDS.observe(time.perf_counter() - started)
        return self._original(ref, file_name, manifest, entry)

    async def _store(self, key: str, response: aiohttp.ClientResponse, url: URL) -> CachedFile:
        length = response.content_length
        if length is not None and length > self.max_bytes:
            raise TooLarge(f"the original is {length} bytes (limit {self.max_bytes})")
        last_modified = response.headers.get("Last-Modified")
        meta = {"url": str(url), "etag": response.headers.get("ETag"), "last_modified": last_modified}
        try:
            return await self.disk.store_stream(key, _chunks(response), meta, expected_size=length,
                                                max_bytes=self.max_bytes, mtime=_http_date(last_modified))
        except TooBig:
            raise TooLarge(f"the original is over the limit of {self.max_bytes} bytes") from None
        except SizeMismatch as exc:
            metrics.UPSTREAM_ERRORS.labels("truncated").inc()
            raise UpstreamFailed(f"upstream sent a truncated body ({exc})") from None

    def _original(self, ref: EntryRef, file_name: str, manifest: EntryManifest, entry: CachedFile) -> Original:
        return Original(ref=ref, file_name=file_name, path=entry.path, size=entry.size,
                        mtime=entry.mtime_ns / 1e9, identity=entry.digest, manifest=manifest)

    def _request(self, method: str, url: URL, headers: dict[str, str] | None = None) -> _Upstream:
        return _Upstream(self.session.request(method, url, headers=headers, allow_redirects=False))


class _Upstream:
    """`async with` an upstream response, with connection faults and time-outs turned into 502 / 504."""

    def __init__(self, context) -> None:
        self._context = context

    async def __aenter__(self) -> aiohttp.ClientResponse:
        try:
            return await self._context.__aenter__()
        except BaseException as exc:
            raise _translate(exc) from None

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        await self._context.__aexit__(exc_type, exc, tb)
        if exc is not None and not isinstance(exc, MediaProxyError):
            translated = _translate(exc)
            if translated is not exc:
                raise translated from None
        return False


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        metrics.UPSTREAM_ERRORS.labels("timeout").inc()
        return UpstreamTimeout("upstream origin timed out")
    if isinstance(exc, aiohttp.ClientPayloadError):
        metrics.UPSTREAM_ERRORS.labels("truncated").inc()
        return UpstreamFailed("upstream sent a truncated body")
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        metrics.UPSTREAM_ERRORS.labels("connection").inc()
        return UpstreamFailed(f"upstream origin unreachable ({type(exc).__name__})")
    return exc


def _check_status(response: aiohttp.ClientResponse, url: URL) -> None:
    if response.status != 200:
        metrics.UPSTREAM_ERRORS.labels("status").inc()
        log.warning("upstream answered %s for %s", response.status, url)
        raise UpstreamFailed(f"upstream origin answered {response.status}")


async def _chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    async for chunk in response.content.iter_chunked(_CHUNK):
        yield chunk


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    body = await response.content.read(limit + 1)
    if len(body) > limit:
        raise UpstreamFailed("upstream entry.json is too large")
    return body


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
