"""HTTP response building shared by the services and the app: errors (SPEC §6), caching headers, downloads."""

from __future__ import annotations

import email.utils
import functools
import re
import unicodedata
from urllib.parse import quote

from aiohttp import web

from .errors import MediaProxyError

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": ("Content-Length, Content-Range, Content-Disposition, ETag, Server-Timing, "
                                      "X-Kaltura, X-Kaltura-App, X-Clip-Start-Ms"),
}
PREFLIGHT_HEADERS = {
    **CORS_HEADERS,
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Range, X-Kaltura-Ks, Cache-Control, If-None-Match, If-Modified-Since",
    "Access-Control-Max-Age": "86400",
}


def error_response(error: MediaProxyError, max_age: int = 0) -> web.Response:
    code, description = error.kaltura_code, error.kaltura_description
    headers = {
        "X-Kaltura-App": f"exiting on error {code} - {description}",
        "X-Kaltura": f"error-{code}",
        "Cache-Control": f"public, max-age={max_age}" if max_age > 0 else "no-store",
        **error.headers,
    }
    return web.Response(status=error.status, text=error.message + "\n", headers=headers)


@functools.lru_cache(maxsize=4096)  # asked for every answer; originals' mtimes repeat
def http_date(timestamp: float) -> str:
    """Last-Modified's spelling of a time (`Tue, 01 Dec 2026 14:38:12 GMT`)."""
    return email.utils.formatdate(timestamp, usegmt=True)


def cache_control(max_age: int, *, private: bool = False) -> str:
    return f"{'private' if private else 'public'}, max-age={max_age}"


def not_modified(request: web.Request, etag: str, last_modified: float) -> bool:
    """Whether the client's copy is current (If-None-Match wins over If-Modified-Since, RFC 9110 §13.2.2).

    `etag` is the quoted strong tag sent; the comparison is weak, as RFC 9110 asks for If-None-Match.
    """
    if request.if_none_match is not None:
        return etag_matches(request, etag)
    since = request.if_modified_since
    return since is not None and int(last_modified) <= since.timestamp()


def etag_matches(request: web.Request, etag: str) -> bool:
    """Whether If-None-Match names `etag` (the quoted strong tag sent), or `*`: the weak comparison of RFC 9110."""
    bare = etag.strip('"')
    return any(tag.value in (bare, "*") for tag in request.if_none_match or ())


def content_disposition(name: str, attachment: bool = True) -> str:
    """`attachment; filename="..."`, safe for any name: ASCII fallback, and the real name as RFC 5987 filename*."""
    disposition = "attachment" if attachment else "inline"
    fallback = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    fallback = re.sub(r"[^A-Za-z0-9 ._()+,-]", "_", fallback).strip(" .") or "download"
    header = f'{disposition}; filename="{fallback}"'
    if fallback != name:
        header += f"; filename*=UTF-8''{quote(name, safe='')}"
    return header


def download_name(requested: str | None, entry_name: str | None, entry_id: str, extension: str) -> str:
    """The file name a download is saved under: sanitised, with the real extension added if missing."""
    for candidate in (requested, entry_name):
        name = _clean_name(candidate or "")
        if name:
            break
    else:
        name = entry_id
    if extension and not name.lower().endswith("." + extension.lower()):
        name = f"{name}.{extension}"
    return name


def _clean_name(name: str) -> str:
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")  # control and invisible characters
    name = re.sub(r'["\\/:*?<>|]+', "_", name)
    return " ".join(name.split()).strip(" .")[:200]


def server_timing(durations: dict[str, float], tier: str | None = None) -> str:
    """`Server-Timing` (shown by browsers' developer tools): where the time went, in milliseconds."""
    parts = [f"{name};dur={milliseconds:.1f}" for name, milliseconds in durations.items()]
    if tier:
        parts.append(f"cache;desc={tier}")
    return ", ".join(parts)
