"""The `mediaproxy` command: serve (one process, or workers sharing the port); purge an entry; ks, url, warm, explain
and check helpers."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

from . import __version__
from .config import DEFAULT_CONFIG_PATH, Config, ConfigError, load

log = logging.getLogger("mediaproxy.cli")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mediaproxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mediaproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_command = commands.add_parser("serve", help="serve the configured origin over HTTP")
    serve_command.add_argument("--config", type=Path, help="config file (default: $MEDIAPROXY_CONFIG, else the "
                                                           "bundled config.toml)")
    serve_command.add_argument("--host", help="listen address (overrides [server] host)")
    serve_command.add_argument("--port", type=int, help="listen port (overrides [server] port)")
    serve_command.add_argument("--workers", type=int, help="processes sharing the port (overrides [server] workers)")
    ks_command = commands.add_parser("ks", help="print a Kaltura session (KS) for testing")
    ks_command.add_argument("--partner", type=int, required=True, help="partner id")
    ks_command.add_argument("--secret", required=True, help="the partner's admin secret")
    ks_command.add_argument("--privileges", default="", help='e.g. "sview:0_abc,download:*,iprestrict:10.0.0.0/8"')
    ks_command.add_argument("--expiry", type=int, default=86400, help="seconds from now (default 86400)")
    ks_command.add_argument("--type", type=int, default=0, choices=(0, 2), help="0 user (default), 2 admin")
    ks_command.add_argument("--user", default="", help="user id")
    ks_command.add_argument("--v2", action="store_true", help="make a v2 (AES) KS instead of v1")
    ks_command.add_argument("--widget", action="store_true", help='a widget session, what embedded players send: '
                            'type 0, no user, "view:*,widget:1" (--privileges adds to it, e.g. limitentry:0_abc)')
    purge_command = commands.add_parser(
        "purge", help="drop what this node keeps of an entry, on every worker (as a notification does), and serve "
                      "it again if a notification deleted or blocked it")
    purge_command.add_argument("--partner", type=int, required=True, help="partner id")
    purge_command.add_argument("--entry", required=True, help="entry id")
    purge_command.add_argument("--config", type=Path, help="config file (its cache dir is the node's), as for serve")
    purge_command.add_argument("--json", action="store_true", help="print what was dropped as JSON")
    warm_command = commands.add_parser("warm", help="fetch a list of URLs (from a file or stdin) so the caches "
                                                      "hold them; progress and a summary")
    warm_command.add_argument("file", nargs="?", default="-", help="one URL or path per line (default: stdin)")
    warm_command.add_argument("--base", default="http://127.0.0.1:8080", help="prefix of lines that are paths")
    warm_command.add_argument("--concurrency", type=int, default=8, help="requests at a time (default 8)")
    url_command = commands.add_parser("url", help="print a URL of the Kaltura grammar",
                                      description="e.g. mediaproxy url thumbnail --entry 0_abc width=320 type=3")
    url_command.add_argument("service", choices=("thumbnail", "flvclipper", "raw"))
    url_command.add_argument("--entry", required=True, help="entry id")
    url_command.add_argument("--partner", type=int, default=100, help="partner id (default 100)")
    url_command.add_argument("--sp", type=int, help="sub-partner id (default partner × 100)")
    url_command.add_argument("--base", default="http://127.0.0.1:8080", help="scheme and host ('' for a path)")
    url_command.add_argument("params", nargs="*", metavar="key=value", help="parameters, in order")
    explain_command = commands.add_parser("explain", help="how a media link (any host) is read, in words",
                                          description="e.g. mediaproxy explain 'https://cdnapisec.kaltura.com/p/123/"
                                                      "sp/12300/thumbnail/entry_id/0_abc/width/320'")
    explain_command.add_argument("link", help="a media URL of any host, or a path")
    explain_command.add_argument("--config", type=Path, help="config file (partners, defaults), as for serve")
    explain_command.add_argument("--base", default="http://127.0.0.1:8080", help="this mediaproxy, for the local URL")
    explain_command.add_argument("--json", action="store_true", help="print /explain's JSON instead of words")
    check_command = commands.add_parser("check", help="check every media link of a page (or a list of URLs) "
                                                      "against a mediaproxy; a table, exit status 1 if any fails")
    check_command.add_argument("source", help="an HTML file, a file of URLs, - for stdin, or the URL of a page")
    check_command.add_argument("--base", default="http://127.0.0.1:8080", help="the mediaproxy to ask, whatever "
                                                                               "host the links name")
    check_command.add_argument("--concurrency", type=int, default=8, help="requests at a time (default 8)")
    check_command.add_argument("--timeout", type=float, default=60.0, help="seconds per link (default 60)")
    check_command.add_argument("--json", action="store_true", help="print the results as JSON")
    args, extra = parser.parse_known_args(argv)  # `url` takes key=value pairs anywhere among its options
    if extra and args.command != "url" or any(item.startswith("-") for item in extra):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "url":
        args.params += extra
    if args.command == "warm":
        return _warm(args)
    if args.command == "url":
        return _url(args)
    if args.command == "explain":
        return _explain(args)
    if args.command == "check":
        from .check import main as check

        return check(args.source, base=args.base, concurrency=args.concurrency, timeout=args.timeout,
                     json_output=args.json)
    if args.command == "ks":
        return _ks(args)
    if args.command == "purge":
        return _purge(args)

    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"mediaproxy: config error: {error}", file=sys.stderr)
        return 2
    _configure_logging(config.server.log_level)
    server = config.server
    config = dataclasses.replace(config, server=dataclasses.replace(
        server, host=args.host or server.host, port=args.port if args.port is not None else server.port,
        workers=args.workers if args.workers is not None else server.workers))
    return serve(config)


def _ks(args: argparse.Namespace) -> int:
    from .access import make_ks

    privileges = args.privileges
    if args.widget:
        if args.type != 0 or args.user:
            print("mediaproxy ks: a widget session is a user KS (type 0) of no user", file=sys.stderr)
            return 2
        given = [item.strip() for item in privileges.split(",") if item.strip()]
        view = [] if any(item.startswith("view:") for item in given) else ["view:*"]
        privileges = ",".join([*view, "widget:1", *(item for item in given if item != "widget:1")])
    print(make_ks(args.partner, args.secret, privileges=privileges, expiry=int(time.time()) + args.expiry,
                  type=args.type, user_id=args.user, v2=args.v2))
    return 0


def _purge(args: argparse.Namespace) -> int:
    """Purge from this machine's node: its shared index and cache dir; running workers notice at their next
    request (purge.py). The same as POST /admin/purge, without a KS: whoever can run this can read the cache."""
    import asyncio
    import json

    from .cache.disk import DiskCache
    from .purge import Purges
    from .refs import ID_PATTERN, EntryRef

    if not ID_PATTERN.match(args.entry):
        print(f"mediaproxy purge: {args.entry!r} is not an entry id", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"mediaproxy: config error: {error}", file=sys.stderr)
        return 2

    async def purge():
        cache = config.cache
        disk = DiskCache(cache.dir, {"originals": cache.originals_bytes, "results": cache.results_bytes,
                                     "indexes": cache.index_bytes})
        purges = Purges(disk, config.notifications.remember_seconds)
        try:
            await purges.start()
            return await purges.purge(EntryRef(args.partner, args.entry), withhold=None, source="operator")
        finally:
            purges.close()
            await disk.close()

    outcome = asyncio.run(purge())
    print(json.dumps(outcome.as_json(), indent=2) if args.json else outcome.words())
    return 0


def _warm(args: argparse.Namespace) -> int:
    import asyncio

    from .warm import report, targets, warm

    source = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
    with source:
        urls = targets(source, args.base)
    summary = asyncio.run(warm(urls, concurrency=args.concurrency))
    print(report(summary))
    return 0 if summary.ok else 1


def _url(args: argparse.Namespace) -> int:
    from .errors import MediaProxyError
    from .urls import build

    params = {}
    for item in args.params:
        key, separator, value = item.partition("=")
        if not separator or not key:
            print(f"mediaproxy url: {item!r} is not key=value", file=sys.stderr)
            return 2
        params[key] = value
    try:
        path = build(args.service, args.partner, args.entry, params, subpartner_id=args.sp)
    except MediaProxyError as error:
        print(f"mediaproxy url: {error.message}", file=sys.stderr)
        return 2
    print(args.base.rstrip("/") + path)
    return 0


def _explain(args: argparse.Namespace) -> int:
    import json

    from .access import AccessPolicy
    from .explain import explain

    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"mediaproxy: config error: {error}", file=sys.stderr)
        return 2
    explanation = explain(args.link, config, AccessPolicy(config), base_url=args.base, client="127.0.0.1")
    print(json.dumps(explanation.as_json(), indent=2) if args.json else explanation.words())
    return 0 if explanation.error is None else 1


def load_config(path: Path | None) -> Config:
    if path is None and os.environ.get("MEDIAPROXY_CONFIG"):
        path = Path(os.environ["MEDIAPROXY_CONFIG"])
    if path is None and DEFAULT_CONFIG_PATH.is_file():
        path = DEFAULT_CONFIG_PATH
    return load(path)


def serve(config: Config) -> int:
    workers = config.worker_count
    origin = config.origin.root if config.origin.kind == "local" else config.origin.url
    log.info("mediaproxy %s serving %s origin %s on http://%s:%d/ (%d worker%s)", __version__, config.origin.kind,
             origin, config.server.host, config.server.port, workers, "" if workers == 1 else "s")
    if workers == 1:
        run_worker(config, reuse_port=False)
        return 0
    return _supervise(config, workers)


def run_worker(config: Config, *, reuse_port: bool, parent: int | None = None) -> None:
    from .app import AccessLogger, make_app

    app = make_app(config)
    gc.freeze()  # what the server is built of lives as long as the process: out of the collector's full sweeps
    if parent is not None:
        app.on_startup.append(lambda app: _exit_with_parent(app, parent))
    access_log = logging.getLogger("mediaproxy.access") if config.server.access_log else None
    web.run_app(app, host=config.server.host, port=config.server.port, reuse_port=reuse_port, print=None,
                access_log_class=AccessLogger, access_log=access_log, shutdown_timeout=config.server.shutdown_seconds)


async def _exit_with_parent(app: web.Application, parent: int) -> None:
    """A worker whose supervisor died (even by kill -9) stops instead of holding the port forever."""
    import asyncio

    async def watch() -> None:
        while os.getppid() == parent:
            await asyncio.sleep(1)
        log.warning("the supervisor is gone; worker %d stops", os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)

    app["parent_watch"] = asyncio.get_running_loop().create_task(watch())


def _worker_main(config: Config, parent: int) -> None:
    _configure_logging(config.server.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the supervisor decides
    run_worker(config, reuse_port=True, parent=parent)


def _supervise(config: Config, count: int) -> int:
    """Run `count` workers on one port (SO_REUSEPORT); restart any that dies; stop them all on SIGTERM/SIGINT."""
    metrics_dir = _metrics_directory()  # before anything imports prometheus_client: workers share their values
    from . import metrics

    context = multiprocessing.get_context("spawn")
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def start() -> multiprocessing.Process:
        process = context.Process(target=_worker_main, args=(config, os.getpid()), name="mediaproxy-worker")
        process.start()
        return process

    workers = [start() for _ in range(count)]
    restarts: list[float] = []
    while not stopping:
        multiprocessing.connection.wait([worker.sentinel for worker in workers], timeout=0.5)
        for index, worker in enumerate(workers):
            if worker.is_alive() or stopping:
                continue
            now = time.monotonic()
            restarts = [moment for moment in restarts if now - moment < 60] + [now]
            log.error("worker %d exited with %s; starting another", worker.pid, worker.exitcode)
            metrics.worker_exited(worker.pid)
            metrics.WORKER_RESTARTS.inc()
            if len(restarts) > 5 * count:
                log.error("workers keep dying; waiting before the next restart")
                time.sleep(5)
            workers[index] = start()
    for worker in workers:
        if worker.is_alive():
            worker.terminate()  # SIGTERM: each worker finishes its requests in flight
    # aiohttp waits up to shutdown_seconds for requests in flight, then as long again after cancelling them
    deadline = time.monotonic() + 3 * config.server.shutdown_seconds + 5
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            worker.kill()
    if metrics_dir is not None:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _metrics_directory() -> str | None:
    """The folder where worker processes keep their Prometheus values: $PROMETHEUS_MULTIPROC_DIR (emptied), else
    a fresh one that is removed at the end (returned)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        for stale in Path(directory).glob("*.db"):
            stale.unlink(missing_ok=True)
        return None
    directory = tempfile.mkdtemp(prefix="mediaproxy-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    return directory


def _configure_logging(level: str = "info") -> None:
    logging.basicConfig(level=level.upper(), format=f"%(asctime)s %(levelname)s [{os.getpid()}] %(name)s: %(message)s")
