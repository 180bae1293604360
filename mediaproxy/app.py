"""make_app(config): wires origins, caches, the work pool and the services behind one aiohttp route.

Every request is parsed by `urls` into a typed request and handed to its service; every failure becomes the
SPEC §6 answer in `_errors` (a status, a one-line body, Kaltura's headers, never a traceback).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import time

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from . import __version__, metrics, urls
from .access import AccessPolicy
from .answers import HotAnswers
from .cache.disk import DiskCache
from .cache.memory import MemoryCache
from .config import Config
from .console import add_console
from .errors import BadRequest, MediaProxyError, MethodNotAllowed, NotFound, ProcessingTimeout, TooLarge
from .origins.base import Origin
from .origins.http import HttpOrigin
from .notifications import NotificationEndpoints
from .origins.local import LocalOrigin
from .purge import Purges
from .refs import entry_prefix
from .request_keys import DIRECT, ENTRY, HOT, PRIVATE, SERVICE, STARTED, TIER
from .responses import CORS_HEADERS, PREFLIGHT_HEADERS, error_response
from .cache.results import Result, ResultCache
from .services.flvclipper import ClipService
from .services.raw import RawService
from .services.thumbnail import ThumbnailService
from .services.sources import Sources
from .store import Store
from .workpool import WorkPool

log = logging.getLogger(__name__)
# aiohttp's connection-level messages (requests it could not parse, failures outside any handler)
server_log = logging.getLogger("mediaproxy.server")

RUNTIME = web.AppKey("runtime", "Runtime")

SERVER_HEADER = f"mediaproxy/{__version__}"
EVERY_ANSWER_HEADERS = {"Server": SERVER_HEADER, **CORS_HEADERS}  # as _finish_response adds them


class Runtime:
    """The long-lived parts of one server process, built from the config."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.started = time.time()
        self._health_checked = -1e9
        self._origin_ok = False
        cache = config.cache
        self.disk = DiskCache(cache.dir, {"originals": cache.originals_bytes, "results": cache.results_bytes,
                                          "indexes": cache.index_bytes})
        self.hot_originals: MemoryCache[bytes] = MemoryCache(
            cache.originals_memory_bytes, cache.memory_item_bytes, entry_of=entry_prefix)  # by owner
        self.result_memory: MemoryCache[Result] = MemoryCache(
            cache.results_memory_bytes, cache.memory_item_bytes, size_of=lambda result: result.size,
            entry_of=lambda key: entry_prefix(key[0]))  # by (owner, key)
        self.decoded: MemoryCache = MemoryCache(config.cache.decoded_bytes, config.cache.memory_item_bytes,
                                                size_of=_picture_size, entry_of=_entry_of_owner_key)
        processing = config.processing
        self.pool = WorkPool(config.thread_count, processing.queue, queue_timeout=processing.queue_timeout_seconds,
                             name="images")
        self.origin = _make_origin(config)
        self.store = Store(self.origin, self.disk, self.hot_originals, revalidate_seconds=config.origin.revalidate_seconds,
                           not_found_seconds=config.origin.not_found_seconds, block_bytes=config.origin.block_bytes,
                           wait_seconds=config.origin.deadline_seconds, timeout_seconds=config.origin.timeout_seconds)
        self.purges = Purges(self.disk, config.notifications.remember_seconds)
        self.store.withheld = self.purges.withheld
        self.access = AccessPolicy(config)
        self.sources = Sources(self.store, self.pool, config.limits.max_source_pixels)
        self.results = ResultCache(self.result_memory, self.disk, min_uses=cache.results_min_uses)
        self.services = {
            "raw": RawService(self.sources, config),
            "thumbnail": ThumbnailService(self.sources, self.results, self.pool, config, self.decoded),
            "flvclipper": ClipService(self.sources, self.disk, self.pool, config),
        }
        self.answers = HotAnswers(min(1.0, config.origin.revalidate_seconds), EVERY_ANSWER_HEADERS)
        self._tally: asyncio.Task | None = None
        self.purges.register(self.answers, self.store, self.sources, self.results, self.services["thumbnail"],
                             self.services["flvclipper"], self.hot_originals, self.result_memory, self.decoded)
        self.notifications = NotificationEndpoints(config, self.purges, self.access)

    async def start(self) -> None:
        await self.disk.start()
        await self.purges.start()
        await self.store.start()
        self._tally = asyncio.get_running_loop().create_task(metrics.TALLY.flush_every())

    async def origin_reachable(self) -> bool:
        """Checked at most every few seconds (health checks come often)."""
        now = time.monotonic()
        if now - self._health_checked > 5:
            self._health_checked = now
            self._origin_ok = await self.origin.reachable()
        return self._origin_ok

    async def close(self) -> None:
        if self._tally is not None:
            self._tally.cancel()
        await self.results.flush()
        await self.store.close()
        self.purges.close()
        await self.disk.close()
        self.pool.close()


def _entry_of_owner_key(key: tuple) -> str:
    """("decoded", owner, scale) → the owner's entry."""
    return entry_prefix(key[1])


def _picture_size(decoded) -> int:
    """Bytes a decoded picture holds: Pillow stores RGB (and RGBA, CMYK) pixels in 4 bytes, L and P in 1."""
    image = decoded.image
    return image.width * image.height * (1 if image.mode in ("1", "L", "P") else 2 if image.mode == "LA" else 4)


def _make_origin(config: Config) -> Origin:
    settings = config.origin
    if settings.kind == "http":
        return HttpOrigin(settings.url, settings.extensions, timeout_seconds=settings.timeout_seconds,
                          deadline_seconds=settings.deadline_seconds, connections=settings.connections,
                          connections_per_entry=settings.connections_per_entry,
                          max_bytes=config.limits.max_original_bytes, entries_file=config.console.entries_file)
    assert settings.root is not None  # config validation guarantees it
    return LocalOrigin(settings.root, settings.extensions, config.limits.max_original_bytes)


def make_app(config: Config) -> web.Application:
    runtime = Runtime(config)
    # Whatever runner serves the app, every request gets one line of mediaproxy's access log, in the configured
    # format, and aiohttp's own messages go to a logger that drops its tracebacks of unparsable requests.
    handler_args = {"access_log_class": AccessLogger, "access_log_format": config.server.log_format,
                    "logger": server_log}
    app = web.Application(middlewares=[_errors], client_max_size=1024, handler_args=handler_args)
    app._make_request = functools.partial(app._make_request, _cls=_Request)  # see _Request
    app[RUNTIME] = runtime

    async def lifecycle(app: web.Application):
        await runtime.start()
        yield
        await runtime.close()

    app.cleanup_ctx.append(lifecycle)
    app.on_response_prepare.append(_finish_response)
    app.router.add_get("/healthz", _health)
    app.router.add_get("/metrics", _metrics)
    if config.notifications_on:
        app.router.add_post(config.notifications.path, runtime.notifications.notifications)
    app.router.add_post("/admin/purge", runtime.notifications.admin_purge)
    if config.console.enabled:
        add_console(app, config, runtime.origin, runtime.sources, runtime.purges, runtime.access)
    app.router.add_route("*", r"/{path:[\s\S]*}", _dispatch)  # any path, even one with an encoded line feed
    app._handle = functools.partial(_hot_or_routed, runtime, app._handle)  # see _hot_or_routed
    return app


async def _hot_or_routed(runtime: Runtime, routed, request: web.Request) -> web.StreamResponse:
    """The answer kept for a hot URL (answers.py), and every other media GET (`/p/...`), before routing,
    middlewares and signals (aiohttp's handler of the app, replaced here: those cost as much as the whole answer);
    everything else as routed. A media request answered here is finished as a routed one is (_Request)."""
    if request.method == "GET" or request.method == "HEAD":
        # what another worker purged is dropped here first, for every media request (one memory read if nothing)
        await runtime.purges.catch_up()
        hot = runtime.answers.get(request, request.raw_path)
        if hot is not None:
            request[STARTED] = time.perf_counter()
            metrics.TALLY.count(metrics.child(metrics.CACHE, "memory", "hit"))
            request[SERVICE], request[ENTRY], request[TIER], request[HOT] = "thumbnail", hot.entry, "memory", True
            return hot.response(request)
        if request.raw_path.startswith("/p/"):
            request[DIRECT] = True
            return await _answered(runtime, request, _media)
    return await routed(request)


async def _dispatch(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    if request.method == "OPTIONS":
        return web.Response(status=204, headers=PREFLIGHT_HEADERS)
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed(f"method {request.method} is not allowed (use GET or HEAD)")
    return await _media(runtime, request)


async def _media(runtime: Runtime, request: web.Request) -> web.StreamResponse:
    """A media GET or HEAD: parsed, its access checked, answered by its service."""
    target = request.raw_path if request.raw_path.startswith("/") else str(request.rel_url)
    reading = urls.parse_target(target, runtime.config.defaults.partner_id)  # the KS beside the request, never in it
    parsed = reading.request
    request[SERVICE] = parsed.service
    request[ENTRY] = parsed.entry
    grant = runtime.access.check(parsed.service, parsed.entry.partner_id, parsed.entry.entry_id,
                                 reading.ks or request.headers.get("X-Kaltura-Ks"), path=request.path,
                                 remote=request.remote, forwarded_for=request.headers.get("X-Forwarded-For"))
    request[PRIVATE] = grant.private
    limit = runtime.config.limits.request_seconds
    try:
        async with asyncio.timeout(limit if limit > 0 else None):
            response = await runtime.services[parsed.service].handle(parsed, request)
    except TimeoutError:
        raise ProcessingTimeout(f"the answer took longer than {limit:g} s") from None
    if parsed.service == "thumbnail" and request.get(TIER) != "render":  # a URL asked again (see HotAnswers)
        runtime.answers.remember(request, target, parsed.entry, response, shared=not grant.private)
    return response


@web.middleware
async def _errors(request: web.Request, handler) -> web.StreamResponse:
    return await _answered(request.app[RUNTIME], request, lambda _, routed: handler(routed))


async def _answered(runtime: Runtime, request: web.Request, handler) -> web.StreamResponse:
    """`handler(runtime, request)`'s answer; any failure as its SPEC §6 answer (a status and one line, never a
    traceback)."""
    request[STARTED] = time.perf_counter()
    try:
        return await handler(runtime, request)
    except MediaProxyError as error:
        return error_response(error, runtime.config.http.error_max_age)
    except web.HTTPException as http_error:
        if http_error.status < 400:
            raise
        return error_response(_as_kaltura_error(http_error), runtime.config.http.error_max_age)
    except (asyncio.CancelledError, ConnectionError):  # the client went away: nobody to answer
        raise
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, urls.redact_ks(request.raw_path))
        return error_response(MediaProxyError("internal error (logged)"), 0)


def _as_kaltura_error(http_error: web.HTTPException) -> MediaProxyError:
    """aiohttp's own refusals (no route, a body too large...) in SPEC §6 form."""
    kind = {404: NotFound, 405: MethodNotAllowed, 413: TooLarge}.get(http_error.status, BadRequest)
    error = kind(http_error.reason or "bad request")
    error.status = http_error.status
    return error


class _Request(web.Request):
    """A request that also passes through mediaproxy when aiohttp answers it alone.

    A request whose line or headers aiohttp cannot parse (a bad HTTP version, a control character in the target,
    a NUL in a header) is answered 400 by aiohttp itself, before routing and middlewares, with the raw line quoted
    in the body. aiohttp has no public hook for that answer (aio-libs/aiohttp#3287); the prepare hook of the
    request is the one point it passes, so there it becomes the SPEC §6 answer that every other error is.
    """

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        if self.get(HOT):  # a hot answer: never routed, but ours, its headers all there (see HotAnswers)
            _count(self, response)
            return
        if self.get(DIRECT):  # a media request answered before routing: finished as the routed ones are
            await _finish_response(self, response)
            return
        if self._match_info is None and isinstance(response, web.Response):  # never routed: aiohttp's own answer
            _as_spec_error(response)
            await _finish_response(self, response)
            return
        await super()._prepare_hook(response)


# aiohttp's reasons for refusing a request, as its parsers word them (the raw bytes follow a blank line, except
# after "Got more than"), and what we say instead: the raw line it quotes (a KS in it too) never goes back out.
_UNPARSABLE_REASONS = (
    ("Got more than", "the request line or a header is too long"),
    ("HTTPS traffic", "HTTPS was sent to this HTTP port"),
    ("version", "the request line's HTTP version is not HTTP/1.0 or HTTP/1.1"),
    ("url", "the request target holds a character that is not allowed (a control character or a space)"),
    ("method", "the request method is not a valid token"),
    ("Host", "the Host header is missing or repeated"),
    ("Content-Length", "the Content-Length header is malformed"),
    ("header", "a request header is malformed (a control character, or a name that is not a token)"),
    ("status line", "the request line is not METHOD TARGET HTTP/1.x"),
)


def _as_spec_error(response: web.Response) -> None:
    said = (response.text or "").split("\n\n", 1)[0]
    reason = next((ours for theirs, ours in _UNPARSABLE_REASONS if theirs.lower() in said.lower()),
                  "the request is not valid HTTP/1.1")
    error = BadRequest(f"bad request: {reason}")
    error.status = response.status
    answer = error_response(error)
    response.body = answer.body
    response.headers.update(answer.headers)
    response.headers["Content-Length"] = str(len(answer.body))  # aiohttp counted its own body before this hook


class _UnparsableRequestTracebacks(logging.Filter):
    """aiohttp logs every request it cannot parse as an ERROR with a traceback quoting the raw request line or
    header: a client's mistake (or a scanner's) worth its access-log line, not a traceback, and never its KS."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, HttpProcessingError)


server_log.addFilter(_UnparsableRequestTracebacks())


async def _finish_response(request: web.Request, response: web.StreamResponse) -> None:
    """Headers every answer carries, and the request's metrics (status final here, even for 206/304/416)."""
    response.headers["Server"] = SERVER_HEADER  # over aiohttp's own
    for name, value in CORS_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.get(PRIVATE) and "Cache-Control" in response.headers:  # shown to one KS holder: no shared cache
        response.headers["Cache-Control"] = response.headers["Cache-Control"].replace("public", "private")
    _count(request, response)


def _count(request: web.Request, response: web.StreamResponse) -> None:
    """The request's metrics, its status final (even for 206/304/416)."""
    service = request.get(SERVICE, "other")
    metrics.TALLY.count(metrics.child(metrics.REQUESTS, service, str(response.status)))
    if STARTED in request:
        metrics.TALLY.observe(metrics.child(metrics.LATENCY, service), time.perf_counter() - request[STARTED])


async def _health(request: web.Request) -> web.Response:
    """200 with what a load balancer or a person wants to know; 503 when the origin cannot be reached."""
    runtime = request.app[RUNTIME]
    reachable = await runtime.origin_reachable()
    degraded = runtime.disk.degraded
    body = {"status": "ok" if reachable else "origin unreachable", "version": __version__,
            "uptime_seconds": round(time.time() - runtime.started, 1), "worker": os.getpid(),
            "origin": {"kind": runtime.config.origin.kind, "reachable": reachable},
            "cache": {"status": "degraded", "reason": degraded} if degraded else {"status": "ok"},
            "work_jobs": runtime.pool.pending}
    return web.json_response(body, status=200 if reachable else 503, headers={"Cache-Control": "no-store"})


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = metrics.exposition()
    response = web.Response(body=body, headers={"Cache-Control": "no-store", "Content-Type": content_type})
    return response


class AccessLogger(AbstractAccessLogger):
    """One line per request, the KS redacted from the path. `log_format` is `[server] log_format` ("json": one JSON
    object per line; anything else: text), given by make_app's handler_args.

    Requests aiohttp could not parse reach this too (as method UNKNOWN, path /), never routed: nothing here may
    ask for the app.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, elapsed: float) -> None:
        entry = request.get(ENTRY)
        fields = {
            "remote": request.remote, "method": request.method, "path": urls.redact_ks(request.raw_path),
            "status": response.status, "bytes": response.body_length, "ms": round(elapsed * 1000, 1),
            "service": request.get(SERVICE), "tier": request.get(TIER),
            "partner": entry.partner_id if entry else None, "entry": entry.entry_id if entry else None,
        }
        if self.log_format == "json":
            self.logger.info(json.dumps(fields, separators=(",", ":")))
        else:
            self.logger.info("%s %s %s %d %s %.1fms %s", fields["remote"], fields["method"], fields["path"],
                             fields["status"], fields["bytes"], fields["ms"], fields["tier"] or "-")
