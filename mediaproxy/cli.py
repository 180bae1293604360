"""The `mediaproxy` command: serve (and small helpers as they come)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from aiohttp import web

from . import __version__
from .config import DEFAULT_CONFIG_PATH, Config, ConfigError, load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mediaproxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mediaproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_command = commands.add_parser("serve", help="serve the configured origin over HTTP")
    serve_command.add_argument("--config", type=Path, help="config file (default: $MEDIAPROXY_CONFIG, else the bundled "
                                                   "config.toml)")
    serve_command.add_argument("--host", help="listen address (overrides [server] host)")
    serve_command.add_argument("--port", type=int, help="listen port (overrides [server] port)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"mediaproxy: config error: {error}", file=sys.stderr)
        return 2
    server = config.server
    config = dataclasses.replace(config, server=dataclasses.replace(
        server, host=args.host or server.host, port=args.port if args.port is not None else server.port))
    return serve(config)


def load_config(path: Path | None) -> Config:
    if path is None and os.environ.get("MEDIAPROXY_CONFIG"):
        path = Path(os.environ["MEDIAPROXY_CONFIG"])
    if path is None and DEFAULT_CONFIG_PATH.is_file():
        path = DEFAULT_CONFIG_PATH
    return load(path)


def serve(config: Config) -> int:
    from .app import AccessLogger, make_app

    app = make_app(config)
    logging.getLogger(__name__).info(
        "mediaproxy %s serving %s origin %s on http://%s:%d/", __version__, config.origin.kind,
        config.origin.root if config.origin.kind == "local" else config.origin.url, config.server.host,
        config.server.port)
    web.run_app(app, host=config.server.host, port=config.server.port, print=None,
                access_log_class=AccessLogger, access_log=logging.getLogger("mediaproxy.access")
                if config.server.access_log else None, shutdown_timeout=10)
    return 0
