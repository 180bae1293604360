"""Shared test fixtures: configs, a server on loopback (aiohttp's test server), nginx as a real upstream."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from mediaproxy.app import make_app
from mediaproxy.config import Config, load

REPO = Path(__file__).resolve().parent.parent
FIXTURE_MEDIA = REPO / "fixtures" / "media"


def require_tool(name: str) -> str:
    """The path of a system tool; tests that need a missing one skip, or fail where CI demands every tool."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        message = f"{name} is not installed (.ci/run installs it)"
        if os.environ.get("MEDIAPROXY_REQUIRE_TOOLS"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_config(tmp_path: Path, origin: str | None = None, extra: str = "") -> Config:
    """A config file in tmp_path (cache there too); `origin` is the [origin] table's body."""
    origin = origin or f'kind = "local"\nroot = "{FIXTURE_MEDIA}"'
    path = tmp_path / "config.toml"
    path.write_text(f'[origin]\n{origin}\n\n[cache]\ndir = "{tmp_path / "cache"}"\n\n{extra}\n')
    return load(path, environ={})


@pytest.fixture
def serve(aiohttp_client, tmp_path):
    """serve(config=None) → a test client of a real mediaproxy server on a loopback port."""
    async def start(config: Config | None = None):
        return await aiohttp_client(make_app(config or make_config(tmp_path)))
    return start


@pytest.fixture
async def client(serve):
    """A server on the bundled fixtures."""
    return await serve()


def make_entry(root: Path, partner_id: int, entry_id: str, files: dict[str, bytes | str]) -> Path:
    folder = root / str(partner_id) / entry_id
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content.encode() if isinstance(content, str) else content)
    return folder


class Nginx:
    """nginx serving `root` on a loopback port, with an access log the tests read."""

    def __init__(self, root: Path, workdir: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "access.log"
        conf = workdir / "nginx.conf"
        conf.write_text(f"""
daemon off;
master_process off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log;
events {{ worker_connections 256; }}
http {{
    log_format requests '$request_method $uri $status';
    access_log {self.log} requests;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    types {{ image/jpeg jpg; video/mp4 mp4; application/json json; }}
    server {{
        listen 127.0.0.1:{self.port};
        root {root};
        etag on;
    }}
}}
""")
        self.process = subprocess.Popen([require_tool("nginx"), "-c", str(conf), "-p", str(workdir)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"nginx did not start: {self.process.stderr.read().decode()}")
                time.sleep(0.05)
        raise RuntimeError("nginx did not start listening")

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request nginx answered so far."""
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        return [(m, p, int(s)) for m, p, s in (line.split() for line in lines)]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def nginx(tmp_path):
    """An nginx upstream whose document root is a copy of the bundled fixtures (tests may change it)."""
    root = tmp_path / "upstream"
    shutil.copytree(FIXTURE_MEDIA, root)
    workdir = tmp_path / "nginx"
    workdir.mkdir()
    server = Nginx(root, workdir)
    yield server
    server.stop()


async def send_raw(client, target: str, method: str = "GET", headers: dict[str, str] | None = None):
    """Send a request target exactly as given (HTTP clients normalise `..`, `//` and escapes; attackers don't).

    Returns (status, headers with lower-case names, body).
    """
    import asyncio

    reader, writer = await asyncio.open_connection(client.host, client.port)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {client.host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), parsed, body


def cache_entries(cache_dir: Path) -> list[dict]:
    """The trailer headers (ns, key, size, digest, meta; plus "path") of every entry file in a disk cache, read
    from the documented format: body, JSON header, its 4-byte big-endian length, b"MPB2"."""
    import json

    entries = []
    for path in sorted((cache_dir / "data").glob("*/*")):
        try:
            raw = path.read_bytes()
        except FileNotFoundError:  # evicted meanwhile
            continue
        if len(raw) < 8 or raw[-4:] != b"MPB2":
            continue
        length = int.from_bytes(raw[-8:-4], "big")
        entries.append({**json.loads(raw[-8 - length:-8]), "path": path})
    return entries


async def until(predicate, timeout: float = 5.0) -> None:
    """Let the event loop run until predicate() holds (thread callbacks and evictions finish in the background)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)
