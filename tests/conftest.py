"""Shared test fixtures: configs, a server on loopback (aiohttp's test server), nginx as a real upstream."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fixtures import servers
from fixtures.servers import free_port, wait_until  # noqa: F401 - for the tests: a port; until() without a loop
from mediaproxy.app import make_app
from mediaproxy.config import Config, load

REPO = Path(__file__).resolve().parent.parent
FIXTURE_MEDIA = REPO / "fixtures" / "media"


def require_tool(name: str) -> str:
    """The path of a system tool; tests that need a missing one skip, or fail where CI demands every tool."""
    path = servers.find_tool(name)
    if path is None:
        message = f"{name} is not installed (.ci/run installs it)"
        if os.environ.get("MEDIAPROXY_REQUIRE_TOOLS"):
            pytest.fail(message)
        pytest.skip(message)
    return path


# Every way a Kaltura URL may name the service and the photo entry (each service's tests add their own forms)
URL_FORMS = [
    "/p/100/sp/10000/{service}/entry_id/0_photo",
    "/p/100/{service}/entry_id/0_photo",
    "/s/p/100/sp/10000/{service}/entry_id/0_photo",
    "/p/100/sp/10000/{service}?entry_id=0_photo",
    "/p/100/sp/10000/{service}/entry_id/0_photo/name.jpg",
    "/p/100/sp/10000/{service}/entryId/0_photo",
    "/p//100/sp/10000///{service}/entry_id/0_photo/",
]


def url_forms(service: str) -> list[str]:
    return [form.format(service=service) for form in URL_FORMS]


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


@contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` ("1m") mounted at the new folder `mount`: a disk that really fills up."""
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the full-disk tests: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


class Nginx(servers.Nginx):
    """nginx serving `root` on a loopback port, with an access log the tests read."""

    def __init__(self, root: Path, workdir: Path) -> None:
        super().__init__(root, workdir, log=("$request_method", "$uri", "$status"), executable=require_tool("nginx"))

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request nginx answered so far."""
        return [(method, path, int(status)) for method, path, status in self.logged()]


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


class Server(servers.Mediaproxy):
    """A real `mediaproxy serve` process (fixtures.servers.Mediaproxy) for async tests: its waits keep the test's
    event loop running, for the requests in flight and any upstream served from it."""

    async def up(self, timeout: float = 30) -> None:
        await asyncio.to_thread(self.wait_up, timeout)

    async def __aenter__(self) -> Server:
        """Up (every worker); stopped at the end of the block, whatever happened (SIGTERM, then SIGKILL)."""
        try:
            await self.up()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop()

    async def exited(self, timeout: float) -> int | None:
        """The exit code, or None if still running after `timeout`."""
        try:
            await until(lambda: self.process.poll() is not None, timeout, interval=0.05)
        except AssertionError:
            return None
        return self.process.returncode


class LoopbackUpstream:
    """A misbehaving HTTP upstream on a loopback port, written on asyncio streams: a subclass's `handle(reader,
    writer)` serves each connection (closed after it). stop() sets `stopping` (for answers that hang until then),
    closes every connection and waits until each one's answer has finished."""

    def __init__(self, port: int = 0) -> None:
        self.port = port  # 0: any free port
        self.stopping = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self):
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.stopping.set()
        self.server.close()
        for writer in list(self._writers):
            writer.close()
        await until(lambda: not self._writers, 10)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self.handle(reader, writer)
        finally:
            writer.close()
            self._writers.discard(writer)


async def send_raw(client, target: str, method: str = "GET", headers: dict[str, str] | None = None):
    """Send a request target exactly as given (HTTP clients normalise `..`, `//` and escapes; attackers don't).

    Returns (status, headers with lower-case names, body).
    """
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


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        sample_name, _, label_text = sample.partition("{")
        if sample_name == name and ",".join(sorted(label_text.rstrip("}").split(","))) == wanted:
            return float(value)
    return 0.0


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


async def until(predicate, timeout: float = 5.0, interval: float = 0.005,
                failure: str = "condition not reached in time") -> None:
    """Let the event loop run until predicate() holds (thread callbacks and evictions finish in the background);
    AssertionError(failure) after `timeout` seconds. predicate() may return an awaitable (it asks a server). For
    code without an event loop: wait_until, its twin."""

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        held = predicate()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if loop.time() > deadline:
            raise AssertionError(failure)
        await asyncio.sleep(interval)
