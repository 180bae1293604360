"""Hot answers: the last public thumbnail answers to exact request targets, kept for a moment, so that a hot URL —
what a CDN origin and a busy page see most — skips parsing, the access check, the store, the result cache and
the timer, and is answered from one lookup.

Only what may be shared is kept: a 200 of the thumbnail service that needed no KS (an answer that needed one is
private and never kept, so a request without it still meets the access check), and only for a URL asked again
(its result already rendered, app.py): most URLs behind a CDN are asked once, and keeping theirs costs every cold
request a copy of its headers for nothing. An answer that varies on Accept (`format/auto`) is kept per Accept
string. Entries live at most `ttl` seconds (a second, and never longer than `revalidate_seconds`: a changed
original is not noticed later than without them), and all go at a purge.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web
from cachetools import LRUCache

from .refs import EntryRef, Purged
from .responses import etag_matches

_MAX_ENTRIES = 20_000
_MAX_BODY = 256 * 1024
_VARIES = object()  # under (target, None): the answers of this target are kept per Accept


@dataclass(frozen=True, slots=True)
class HotAnswer:
    entry: EntryRef
    body: bytes
    headers: dict[str, str]  # as the service answered, with Server-Timing saying where this one comes from
    etag: str
    expires: float  # time.monotonic()

    def response(self, request: web.Request) -> web.Response:
        # If-None-Match only: a request with If-Modified-Since is never answered from here (see HotAnswers.get)
        if "If-None-Match" in request.headers and etag_matches(request, self.etag):
            return web.Response(status=304, headers=self.headers)
        return web.Response(body=self.body, headers=self.headers)


class HotAnswers:
    def __init__(self, ttl: float, always: dict[str, str]) -> None:
        """`always`: the headers every answer of the server carries (a hot answer skips the step that adds them)."""
        self.ttl = ttl
        self.always = always
        self._answers: LRUCache = LRUCache(maxsize=_MAX_ENTRIES)

    def get(self, request: web.Request, target: str) -> HotAnswer | None:
        """The answer kept for this request, if it is fresh and the request asks nothing it cannot say (a range, a
        date-conditional request)."""
        if not self.ttl or "Range" in request.headers or "If-Modified-Since" in request.headers:
            return None
        found = self._answers.get((target, None))
        if found is _VARIES:
            found = self._answers.get((target, request.headers.get("Accept", "")))
        if found is None or found.expires < time.monotonic():
            return None
        return found

    def remember(self, request: web.Request, target: str, entry: EntryRef, response: web.StreamResponse,
                 shared: bool) -> None:
        """Keep a thumbnail answer that any client asking this target may get."""
        if (not self.ttl or not shared or response.status != 200 or not isinstance(response, web.Response)
                or request.method != "GET" or "Range" in request.headers):
            return
        body = response.body
        if not isinstance(body, bytes) or len(body) > _MAX_BODY:
            return
        headers = {**self.always, **{name: value for name, value in response.headers.items()
                                     if name != "Server-Timing"}}
        headers["Server-Timing"] = "cache;desc=memory"
        answer = HotAnswer(entry, body, headers, headers.get("ETag", ""), time.monotonic() + self.ttl)
        if "Accept" in headers.get("Vary", ""):
            self._answers[(target, None)] = _VARIES
            self._answers[(target, request.headers.get("Accept", ""))] = answer
        else:
            self._answers[(target, None)] = answer

    def forget_purged(self, purged: Purged) -> None:
        """A purge drops every hot answer: they live a second, purges are rare."""
        self._answers.clear()
