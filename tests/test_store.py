"""The store of originals (issue 10, SPEC §7) against real upstreams: what each request costs the origin.

An nginx upstream serves generated media with an access log of its own format (method, path, status, body bytes
sent, the Range and If-Range asked), so every test can say how many bytes and which ranges came over. Where several
workers are the point, real `python -m mediaproxy serve` processes share one cache directory; where a fault is the
point, a small Python upstream misbehaves on purpose.

The large video is made once per module: 10 s of noisy 640x360 H.264 (4 Mbit/s) and AAC, looped by stream copy
to ten minutes (~300 MB) with its moov at the end, like an upload straight from an encoder.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import re
import time
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from mediaproxy.app import make_app

from .conftest import FIXTURE_MEDIA, cache_entries, free_port, make_config, require_tool, until
from .test_resilience import Server, unlimited_session

MB = 1 << 20
BLOCK = MB  # the default block_bytes


# --------------------------------------------------------------------------------------------------- media


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """A ~300 MB, 10 minute MP4 with its moov at the end, made in about two seconds."""
    ffmpeg = require_tool("ffmpeg")
    folder = tmp_path_factory.mktemp("long-video")
    source, looped = folder / "ten-seconds.mp4", folder / "long.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=640x360:rate=25,noise=alls=30:allf=t", "-f", "lavfi", "-i", "sine=frequency=441:sample_rate=44100", "-t", "10", "-c:v", "libx264",
                    "-preset", "ultrafast", "-g", "50", "-keyint_min", "50", "-sc_threshold", "0", "-b:v", "4M",
                    "-maxrate", "4M", "-bufsize", "2M", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k",
                    str(source)], check=True)
    subprocess.run([ffmpeg, "-v", "error", "-y", "-stream_loop", "59", "-i", str(source), "-c", "copy",
                    str(looped)], check=True)
    source.unlink()
    yield looped
    shutil.rmtree(folder, ignore_errors=True)


def boxes(path: Path) -> dict[str, tuple[int, int]]:
    """Top-level MP4 boxes: type → (offset, size)."""
    found, offset, end = {}, 0, path.stat().st_size
    with open(path, "rb") as file:
        while offset < end:
            file.seek(offset)
            head = file.read(16)
            size, kind = int.from_bytes(head[:4], "big"), head[4:8].decode("latin-1")
            if size == 1:
                size = int.from_bytes(head[8:16], "big")
            found[kind] = (offset, size)
            offset += size
    return found


def link_entry(root: Path, entry: str, files: dict[str, Path | bytes], partner: int = 100) -> Path:
    """An entry folder in an upstream root: big files hard-linked (never copied), small ones written."""
    folder = root / str(partner) / entry
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if isinstance(content, Path):
            os.link(content, folder / name)
        else:
            (folder / name).write_bytes(content)
    return folder


# --------------------------------------------------------------------------------------------------- nginx


@dataclass(frozen=True)
class Logged:
    method: str
    path: str
    status: int
    sent: int  # body bytes
    range: str  # the Range header asked ("" for none)
    if_range: str


class RangeNginx:
    """nginx serving `root`, logging what the store's requests cost: status, body bytes, Range and If-Range.
    `server` adds directives to its server block (`limit_rate 4m;`...)."""

    def __init__(self, root: Path, workdir: Path, server: str = "") -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "access.log"
        conf = workdir / "nginx.conf"
        conf.write_text(f"""
daemon off;
master_process off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log;
events {{ worker_connections 512; }}
http {{
    log_format store '$request_method\t$uri\t$status\t$body_bytes_sent\t$http_range\t$http_if_range';
    access_log {self.log} store;
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
        {server}
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

    def requests(self, path_end: str = "") -> list[Logged]:
        if not self.log.exists():
            return []
        found = []
        for line in self.log.read_text().splitlines():
            method, path, status, sent, asked, if_range = line.split("\t")
            if path.endswith(path_end):
                found.append(Logged(method, path, int(status), int(sent), "" if asked == "-" else asked,
                                    "" if if_range == "-" else if_range))
        return found

    def gets(self, path_end: str) -> list[Logged]:
        return [line for line in self.requests(path_end) if line.method == "GET"]

    def sent(self, path_end: str) -> int:
        return sum(line.sent for line in self.gets(path_end))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def upstream(tmp_path):
    """An empty nginx upstream (tests link their entries into `upstream.root`)."""
    root = tmp_path / "upstream"
    root.mkdir()
    server = RangeNginx(root, tmp_path / "nginx")
    yield server
    server.stop()


def http_origin(url: str, **settings) -> str:
    settings = {"timeout_seconds": 5, "extensions": ["mp4", "jpg"], **settings}
    return f'kind = "http"\nurl = "{url}"\n' + "".join(f"{key} = {json.dumps(value)}\n"
                                                      for key, value in settings.items())


def block_ranges(offset: int, length: int, size: int, block: int = BLOCK) -> list[str]:
    """The Range headers of the blocks that cover bytes [offset, offset + length)."""
    first, last = offset // block, (offset + length - 1) // block
    return [f"bytes={index * block}-{min((index + 1) * block, size) - 1}" for index in range(first, last + 1)]


async def local_client(aiohttp_client, tmp_path: Path, video: Path):
    """A server reading the same video from a local origin: what the http origin's answers must equal."""
    root = tmp_path / "local-origin"
    link_entry(root, "0_long", {"original.mp4": video})
    (tmp_path / "local").mkdir()
    return await aiohttp_client(make_app(make_config(tmp_path / "local", f'kind = "local"\nroot = "{root}"')))


def decoded(body: bytes) -> Image.Image:
    with Image.open(io.BytesIO(body)) as picture:
        picture.load()
        return picture.copy()


# =============================================================================================================
# 1. frame grabs read the index and one GOP
# =============================================================================================================


async def test_a_cold_frame_grab_reads_the_moov_and_one_gop_not_the_file(serve, aiohttp_client, tmp_path,
                                                                        upstream, long_video):
    size = long_video.stat().st_size
    link_entry(upstream.root, "0_long", {"original.mp4": long_video})
    client = await serve(make_config(tmp_path, http_origin(upstream.url)))
    local = await local_client(aiohttp_client, tmp_path, long_video)
    moov_offset, moov_size = boxes(long_video)["moov"]
    assert moov_offset > size - moov_size - 16  # at the end: the whole mdat lies before it

    spent = 0
    for vid_sec in (3, 300):
        path = f"/p/100/thumbnail/entry_id/0_long/vid_sec/{vid_sec}/width/320"
        response = await client.get(path)
        assert response.status == 200, await response.text()
        body = await response.read()
        expected = await (await local.get(path)).read()
        assert body == expected  # the same frame as read from the file itself
        gets = upstream.gets("/0_long/original.mp4")
        assert gets and all(line.status == 206 and line.range for line in gets)  # by Range only, never whole
        assert len({line.range for line in gets}) == len(gets)  # no block twice
        fetched = upstream.sent("/0_long/original.mp4") - spent
        spent += fetched
        # the moov (388 KB, one or two blocks), the first block (ftyp, mdat header, what probing decodes) and the
        # GOP at that time (2 s at 4 Mbit/s ≈ 1 MB: one or two blocks)
        print(f"vid_sec {vid_sec}: {fetched / MB:.1f} MB from upstream of {size / MB:.0f} MB "
              f"({len(gets)} blocks so far)")
        assert fetched <= (6 if vid_sec == 3 else 3) * BLOCK
    assert spent <= 0.03 * size


# =============================================================================================================
# 2. raw from an http origin: streamed, by range, sized from the upstream
# =============================================================================================================


@pytest.fixture(scope="module")
def random_32mb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("random") / "original.bin"
    path.write_bytes(os.urandom(32 * MB))
    return path


async def test_raw_sends_its_first_byte_after_the_first_block_not_the_whole_file(serve, tmp_path, random_32mb):
    root = tmp_path / "upstream"
    link_entry(root, "0_bin", {"original.bin": random_32mb, "entry.json": b'{"original": "original.bin"}'})
    slow = RangeNginx(root, tmp_path / "nginx", "limit_rate 4m;")  # per connection: 0.25 s a block
    try:
        client = await serve(make_config(tmp_path, http_origin(slow.url)))
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with client.session.get(client.make_url("/p/100/raw/entry_id/0_bin")) as response:
            assert response.status == 200
            assert int(response.headers["Content-Length"]) == 32 * MB  # from the upstream's size, up front
            first = await response.content.readany()
            first_byte = loop.time() - started
            blocks_done = len(slow.gets("/original.bin"))  # nginx logs a request when it has sent it whole
            rest = await response.read()
        whole = loop.time() - started
        assert first + rest == random_32mb.read_bytes()
        print(f"first byte after {first_byte:.2f} s ({blocks_done} blocks sent), whole body after {whole:.2f} s")
        assert blocks_done <= 2  # its own block (and perhaps the next, read ahead): not the 32 of the file
        assert first_byte < whole / 4
        ranges = [line.range for line in slow.gets("/original.bin")]
        assert sorted(ranges) == sorted(block_ranges(0, 32 * MB, 32 * MB))  # each block once, by Range
    finally:
        slow.stop()


async def test_a_range_in_the_middle_of_a_big_original_fetches_only_its_blocks(serve, tmp_path, upstream,
                                                                              long_video):
    size = long_video.stat().st_size
    link_entry(upstream.root, "0_long", {"original.mp4": long_video})
    client = await serve(make_config(tmp_path, http_origin(upstream.url)))
    first, last = 200 * MB + 12_345, 201 * MB + 54_321  # two blocks' worth, straddling three
    response = await client.get("/p/100/raw/entry_id/0_long", headers={"Range": f"bytes={first}-{last}"})
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
    with open(long_video, "rb") as original:
        original.seek(first)
        assert await response.read() == original.read(last - first + 1)
    # probing the original (what it is, for Content-Type) reads its first block and its moov; the range, its own
    probed = block_ranges(0, 1, size) + block_ranges(boxes(long_video)["moov"][0], boxes(long_video)["moov"][1], size)
    asked = [line.range for line in upstream.gets("/0_long/original.mp4")]
    assert sorted(asked) == sorted(probed + block_ranges(first, last - first + 1, size)), asked
    assert upstream.sent("/0_long/original.mp4") <= 5 * BLOCK


async def test_head_of_raw_fetches_no_body_and_gives_the_upstream_size(serve, tmp_path, upstream, long_video):
    size = long_video.stat().st_size
    link_entry(upstream.root, "0_long", {"original.mp4": long_video})
    client = await serve(make_config(tmp_path, http_origin(upstream.url)))
    response = await client.head("/p/100/raw/entry_id/0_long")
    assert response.status == 200
    assert int(response.headers["Content-Length"]) == size
    assert response.headers["Accept-Ranges"] == "bytes" and response.headers["Content-Type"] == "video/mp4"
    # the Content-Type is the file's real type: probing it reads the first block and the moov, nothing else
    moov = boxes(long_video)["moov"]
    probed = sorted(block_ranges(0, 1, size) + block_ranges(*moov, size))
    assert sorted(line.range for line in upstream.gets("/original.mp4")) == probed
    before = len(upstream.requests())
    ranged = await client.head("/p/100/raw/entry_id/0_long", headers={"Range": f"bytes={100 * MB}-{101 * MB}"})
    assert ranged.status == 206 and ranged.headers["Content-Length"] == str(MB + 1)
    whole = await client.head("/p/100/raw/entry_id/0_long")
    assert whole.status == 200 and int(whole.headers["Content-Length"]) == size
    assert upstream.requests()[before:] == []  # probed once: a HEAD costs the origin nothing more


# =============================================================================================================
# 3. one fetch per block for the node
# =============================================================================================================


@asynccontextmanager
async def servers(tmp_path: Path, origin: str, extra: str = "", *, count: int = 1, workers: int = 1):
    """`count` real `mediaproxy serve --workers N` processes on one config (so one cache directory)."""
    make_config(tmp_path, origin, extra)
    started = [Server(tmp_path / "config.toml", tmp_path / f"server{index}.log", workers=workers)
               for index in range(count)]
    try:
        await asyncio.gather(*(server.wait_up() for server in started))
        if workers > 1:
            await asyncio.gather(*(all_listening(server, workers) for server in started))
        yield started
    finally:
        for server in started:
            server.stop()


async def all_listening(server: Server, workers: int, timeout: float = 30) -> None:
    """Until /healthz has been answered by `workers` different processes (each listens on the shared port)."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    async with unlimited_session() as session:
        while len(seen) < workers:
            assert time.monotonic() < deadline, f"only workers {seen} answer"
            async with session.get(server.url + "/healthz") as response:
                seen.add((await response.json())["worker"])


def answering_workers(server: Server, path_part: str) -> Counter:
    """pid → how many requests whose path holds `path_part` it answered (from the access log lines)."""
    pids: Counter = Counter()
    for line in server.output().splitlines():
        match = re.search(r"\[(\d+)\] mediaproxy.access: .* (GET|HEAD) (\S+) ", line)
        if match and path_part in match[3]:
            pids[int(match[1])] += 1
    return pids


async def fetch(session, url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with session.get(url, headers=headers) as response:
        return response.status, await response.read()


async def test_concurrent_cold_requests_on_two_workers_fetch_each_block_once(tmp_path, upstream, long_video):
    size = long_video.stat().st_size
    link_entry(upstream.root, "0_long", {"original.mp4": long_video})
    ranges = [(150 * MB + 5, 151 * MB), (151 * MB - 7, 152 * MB + 3)]  # overlapping: block 151 is wanted twice
    async with servers(tmp_path, http_origin(upstream.url), workers=2) as (server,):
        urls = [(f"{server.url}/p/100/thumbnail/entry_id/0_long/vid_sec/{second}/width/160", None)
                for second in (3, 100, 200, 300, 450)]
        urls += [(f"{server.url}/p/100/raw/entry_id/0_long", {"Range": f"bytes={first}-{last}"})
                 for first, last in ranges]
        async with unlimited_session() as session:  # a connection per request: the kernel spreads them
            answers = await asyncio.gather(*(fetch(session, url, headers) for url, headers in urls * 3))
        workers = answering_workers(server, "/0_long")
    for (url, headers), (status, body) in zip(urls * 3, answers):
        assert status == 200 or headers and status == 206, (url, status, body[:200])
    for index in range(len(urls)):  # the three answers to one URL are the same bytes
        assert len({answers[index + len(urls) * copy][1] for copy in range(3)}) == 1
    with open(long_video, "rb") as original:
        for (first, last), (_, body) in zip(ranges, answers[5:7]):
            original.seek(first)
            assert body == original.read(last - first + 1)
    assert len(workers) == 2, workers  # both workers took part
    gets = upstream.gets("/0_long/original.mp4")
    asked = Counter(line.range for line in gets)
    assert all(line.status == 206 for line in gets)
    assert max(asked.values()) == 1, [r for r, n in asked.items() if n > 1]  # every block once for the node
    heads = [line for line in upstream.requests("/0_long/original.mp4") if line.method == "HEAD"]
    assert len(heads) == 1 and len(upstream.gets("/0_long/entry.json")) == 1  # located once for the node
    fetched = upstream.sent("/0_long/original.mp4")
    print(f"{len(urls) * 3} requests on {dict(workers)}: {len(gets)} blocks, {fetched / MB:.1f} MB "
          f"({100 * fetched / size:.1f}% of {size / MB:.0f} MB)")
    assert fetched <= 0.06 * size


# =============================================================================================================
# 4. recency from every read, on every worker; evicted blocks are fetched again
# =============================================================================================================


PHOTO = FIXTURE_MEDIA / "100" / "0_photo" / "original.jpg"


def bin_entry(root: Path, entry: str, body: bytes) -> None:
    link_entry(root, entry, {"original.bin": body, "entry.json": b'{"original": "original.bin"}'})


def cached_blocks(cache: Path) -> dict[str, list[int]]:
    """entry id → indexes of its blocks in the originals namespace on disk."""
    found: dict[str, list[int]] = {}
    for entry in cache_entries(cache):
        if entry["ns"] == "originals":
            owner, _, index = entry["key"].rpartition("|")
            found.setdefault(owner.split("/")[1], []).append(int(index))
    return {key: sorted(value) for key, value in found.items()}


def last_use(cache: Path, entry_id: str) -> float:
    """The latest `used` the node's index holds for the blocks of an entry (read as another process would)."""
    import sqlite3

    names = [entry["path"].name for entry in cache_entries(cache)
             if entry["ns"] == "originals" and f"/{entry_id}/" in entry["key"]]
    with sqlite3.connect(f"file:{cache / 'index.sqlite'}?mode=ro", uri=True, timeout=10) as db:
        rows = db.execute(f"SELECT max(used) FROM entries WHERE name IN ({','.join('?' * len(names))})",
                          names).fetchone()
    return rows[0] or 0.0


async def test_a_hot_original_is_not_evicted_first_reads_on_any_worker_refresh_it(tmp_path, upstream):
    link_entry(upstream.root, "0_hot", {"original.jpg": PHOTO})  # 244 KB: 4 blocks of 64 KB
    bodies = {f"0_c{index}": os.urandom(300_000) for index in range(1, 4)}  # 5 blocks each
    for entry, body in bodies.items():
        bin_entry(upstream.root, entry, body)
    cache = tmp_path / "cache"
    origin = http_origin(upstream.url, block_bytes=65_536)
    async with servers(tmp_path, origin, "originals_bytes = 1_000_000", count=2) as (first, second):
        async with unlimited_session() as session:
            for path in ("0_hot", "0_c1", "0_c2"):  # written in this order: the hot one is the oldest
                status, body = await fetch(session, f"{first.url}/p/100/raw/entry_id/{path}")
                assert status == 200
            assert sorted(cached_blocks(cache)) == ["0_c1", "0_c2", "0_hot"]
            newest_write = last_use(cache, "0_c2")
            status, body = await fetch(session, f"{second.url}/p/100/raw/entry_id/0_hot")  # a hit, on the other
            assert status == 200 and body == PHOTO.read_bytes()
            assert len(upstream.gets("/0_hot/original.jpg")) == 4  # worker: from the disk cache
            await until(lambda: last_use(cache, "0_hot") > newest_write, timeout=10)  # its recency is shared
            status, _ = await fetch(session, f"{first.url}/p/100/raw/entry_id/0_c3")  # over the budget now
            assert status == 200
            await until(lambda: len(cached_blocks(cache).get("0_c1", [])) < 5)  # evicted block by block
            kept = cached_blocks(cache)
            # the least recently used went, not the first written
            assert kept["0_hot"] == [0, 1, 2, 3] and kept["0_c2"] == kept["0_c3"] == [0, 1, 2, 3, 4], kept
            before = len(upstream.gets("/0_hot/original.jpg"))
            status, body = await fetch(session, f"{first.url}/p/100/raw/entry_id/0_hot")
            assert status == 200 and body == PHOTO.read_bytes()
            assert len(upstream.gets("/0_hot/original.jpg")) == before  # still cached


async def test_evicted_or_deleted_blocks_are_fetched_again_never_a_404_or_500(serve, aiohttp_client, tmp_path,
                                                                            upstream, long_video):
    size = long_video.stat().st_size
    link_entry(upstream.root, "0_long", {"original.mp4": long_video})
    cache = tmp_path / "cache"
    budget = 2_500_000  # two blocks: a frame grab needs three (first block, GOP, moov), evicting as it reads
    client = await serve(make_config(tmp_path, http_origin(upstream.url), f"originals_bytes = {budget}"))
    local = await local_client(aiohttp_client, tmp_path, long_video)
    first, last = 100 * MB + 1, 103 * MB - 1  # three blocks: more than the budget, streamed anyway

    async def check_all(vid_sec: int) -> None:
        path = f"/p/100/thumbnail/entry_id/0_long/vid_sec/{vid_sec}/width/200"
        thumbnail = await client.get(path)
        assert thumbnail.status == 200, await thumbnail.text()
        assert await thumbnail.read() == await (await local.get(path)).read()
        raw = await client.get("/p/100/raw/entry_id/0_long", headers={"Range": f"bytes={first}-{last}"})
        assert raw.status == 206
        with open(long_video, "rb") as original:
            original.seek(first)
            assert await raw.read() == original.read(last - first + 1)
        clip = await client.get(f"/p/100/flvclipper/entry_id/0_long/clip_from/{vid_sec * 1000}/clip_to/"
                                f"{vid_sec * 1000 + 2000}")
        assert clip.status == 200 and await clip.read() == await (await local.get(
            f"/p/100/flvclipper/entry_id/0_long/clip_from/{vid_sec * 1000}/clip_to/{vid_sec * 1000 + 2000}")).read()
        on_disk = sum(entry["path"].stat().st_size for entry in cache_entries(cache) if entry["ns"] == "originals")
        assert on_disk <= budget

    await check_all(3)
    fetched = Counter(line.range for line in upstream.gets("/original.mp4"))
    assert max(fetched.values()) >= 2  # evicted while in use, and fetched again
    for path in (cache / "data").glob("*/*"):  # gone behind the server's back
        path.unlink()
    await check_all(300)
    again = Counter(line.range for line in upstream.gets("/original.mp4"))
    assert all(again[asked] > fetched[asked] for asked in block_ranges(first, last - first + 1, size))
    print(f"{sum(again.values())} block fetches, {upstream.sent('/original.mp4') / MB:.1f} MB, "
          f"for a budget of {budget / MB:.1f} MB")


# =============================================================================================================
# 5. one byte budget for the node
# =============================================================================================================


def originals_on_disk(cache: Path) -> int:
    return sum(entry["path"].stat().st_size for entry in cache_entries(cache) if entry["ns"] == "originals")


async def test_the_originals_budget_holds_across_two_workers(tmp_path, upstream):
    budget = 2_000_000
    bodies = {f"0_b{index}": os.urandom(1_000_000 + index * 1000) for index in range(8)}  # 4 blocks each
    for entry, body in bodies.items():
        bin_entry(upstream.root, entry, body)
    cache = tmp_path / "cache"
    async with servers(tmp_path, http_origin(upstream.url, block_bytes=262_144), f"originals_bytes = {budget}",
                       count=2) as pair:
        async with unlimited_session() as session:
            for _ in range(2):  # every original from both workers at once, twice
                requests = [(server, entry) for entry in bodies for server in pair]
                answers = await asyncio.gather(*(fetch(session, f"{server.url}/p/100/raw/entry_id/{entry}")
                                                 for server, entry in requests))
                for (_, entry), (status, body) in zip(requests, answers):
                    assert status == 200 and body == bodies[entry]
                assert originals_on_disk(cache) <= budget
    sizes = [entry["path"].stat().st_size for entry in cache_entries(cache) if entry["ns"] == "originals"]
    import sqlite3
    with sqlite3.connect(cache / "index.sqlite") as db:
        total = db.execute("SELECT bytes FROM totals WHERE namespace = 'originals'").fetchone()[0]
    print(f"{len(upstream.gets('/original.bin'))} block fetches; {sum(sizes)} bytes in {len(sizes)} blocks on disk")
    assert sum(sizes) == total <= budget  # the index counts what is on disk, and both workers kept to one budget


# =============================================================================================================
# a Python upstream for faults: Range and If-Range like an object store, and whatever a test makes it do wrong
# =============================================================================================================


class PyUpstream:
    """A loopback HTTP/1.1 origin (one request per connection) for the tests' faults.

    `files[path] = body`, served under `etags[path]` (change both to change the file): HEAD, GET, `Range` (206) and
    `If-Range` (a validator that no longer matches: the whole current file, 200), as object stores answer.
    `behave(method, path, range_header)` may return what to do instead: "drip" (the body, a byte every
    `drip_seconds`), "500", "reset" (close after the headers), "truncated" (half the body, then close),
    "whole" (200 and the whole file: an upstream that ignores Range), or raw bytes to send as the answer
    (`list` of segments: each sent on its own, a pause between). Records every request (`log`), the connections
    of each path open now (`open`) and at most (`most`), and when each closed (`closed`, loop time).
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.etags = {path: f'"v1-{len(body)}"' for path, body in files.items()}
        self.behave = lambda method, path, asked: None
        self.drip_seconds = 0.2
        self.log: list[tuple[str, str, str, str, int]] = []  # method, path, Range, If-Range, status
        self.open: Counter = Counter()
        self.most: Counter = Counter()
        self.closed: list[tuple[str, float]] = []
        self.stopping = False
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> PyUpstream:
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        self.server.close()
        self.stopping = True
        for writer in list(self._writers):
            writer.close()
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 10)

    def gets(self, path: str) -> list[tuple[str, str, str, str, int]]:
        return [line for line in self.log if line[0] == "GET" and line[1] == path]

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())
        self._writers.add(writer)
        path = None
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ", 2)
            path = path.lstrip("/")
            headers = {name.lower(): value.strip() for name, _, value in
                       (line.partition(":") for line in head[1:] if line)}
            self.open[path] += 1
            self.most[path] = max(self.most[path], self.open[path])
            gone = asyncio.ensure_future(reader.read(1))  # b"": the client closed its end
            answer = asyncio.ensure_future(self._answer(method, path, headers, writer))
            await asyncio.wait([gone, answer], return_when=asyncio.FIRST_COMPLETED)
            answer.cancel()
            gone.cancel()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            if path is not None:
                self.open[path] -= 1
                self.closed.append((path, asyncio.get_running_loop().time()))
            self._tasks.discard(asyncio.current_task())
            self._writers.discard(writer)

    async def _answer(self, method: str, path: str, headers: dict[str, str], writer: asyncio.StreamWriter) -> None:
        asked, if_range = headers.get("range", ""), headers.get("if-range", "")
        body = self.files.get(path)
        behaviour = self.behave(method, path, asked)
        status = 404 if body is None else 200
        first, last = 0, (len(body) - 1 if body else 0)
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", asked)
        if body is not None and method == "GET" and match and behaviour != "whole" and \
                (not if_range or if_range == self.etags[path]):
            first, last, status = int(match[1]), min(int(match[2]), len(body) - 1), 206
        if isinstance(behaviour, (bytes, list)):
            status = int((behaviour if isinstance(behaviour, bytes) else behaviour[0]).split(b" ", 2)[1])
        elif behaviour == "500":
            status = 500
        self.log.append((method, path, asked, if_range, status))
        if isinstance(behaviour, (bytes, list)):
            for segment in behaviour if isinstance(behaviour, list) else [behaviour]:
                writer.write(segment)
                await writer.drain()
                await asyncio.sleep(0.02)
            return
        if status in (404, 500):
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            return
        lines = [f"HTTP/1.1 {'206 Partial Content' if status == 206 else '200 OK'}",
                 f"Content-Length: {last - first + 1}", f"ETag: {self.etags[path]}", "Accept-Ranges: bytes",
                 "Connection: close"]
        if status == 206:
            lines.append(f"Content-Range: bytes {first}-{last}/{len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        if method == "HEAD":
            return
        part = body[first:last + 1]
        if behaviour == "reset":
            return
        if behaviour == "truncated":
            part = part[:len(part) // 2]
        if behaviour == "drip":
            for offset in range(len(part)):
                if self.stopping:
                    return
                writer.write(part[offset:offset + 1])
                await writer.drain()
                await asyncio.sleep(self.drip_seconds)
            return
        writer.write(part)
        await writer.drain()
        if behaviour == "truncated":
            return
        await asyncio.sleep(0)


@asynccontextmanager
async def py_upstream(files: dict[str, bytes]):
    upstream = await PyUpstream(files).start()
    try:
        yield upstream
    finally:
        await upstream.stop()


def bin_files(entry: str, body: bytes) -> dict[str, bytes]:
    return {f"100/{entry}/entry.json": b'{"original": "original.bin"}', f"100/{entry}/original.bin": body}


# =============================================================================================================
# 6. a dripping entry holds its share of the upstream, and lets go when nobody waits
# =============================================================================================================


async def test_a_dripping_entry_holds_only_its_share_and_lets_go_when_its_clients_leave(tmp_path):
    """Against a real `mediaproxy serve` (aiohttp's test server cancels handlers when their client goes; the real
    one does not, unless told)."""
    import aiohttp

    drip = PHOTO.read_bytes() + os.urandom(1_000_000)  # a JPEG to the probe (its first block), then 16 blocks
    fine = os.urandom(200_000)
    timeout = 1.0
    path = "100/0_drip/original.bin"
    async with py_upstream({**bin_files("0_drip", drip), **bin_files("0_fine", fine)}) as upstream:
        # every block past the first few drips, a byte every 0.2 s: never a time-out between bytes
        upstream.behave = lambda method, asked_path, asked: "drip" if method == "GET" and asked_path == path \
            and int(asked[6:].partition("-")[0]) >= 5 * 65_536 else None
        origin = http_origin(upstream.url, block_bytes=65_536, timeout_seconds=timeout, connections=8,
                             connections_per_entry=2)
        async with servers(tmp_path, origin) as (server,), unlimited_session() as session:
            loop = asyncio.get_running_loop()
            leaving = aiohttp.ClientSession()
            ranged = [asyncio.ensure_future(leaving.get(f"{server.url}/p/100/raw/entry_id/0_drip", headers={
                "Range": f"bytes={n * 65_536}-{n * 65_536 + 9}"})) for n in range(6, 12)]  # each another block
            streamed = asyncio.ensure_future(leaving.get(f"{server.url}/p/100/raw/entry_id/0_drip"))  # a 200
            await until(lambda: upstream.open[path] == 2)
            for _ in range(3):  # meanwhile, another entry and /healthz answer at once
                started = loop.time()
                assert await fetch(session, f"{server.url}/p/100/raw/entry_id/0_fine") == (200, fine)
                async with session.get(f"{server.url}/healthz") as health:
                    assert health.status == 200 and (await health.json())["status"] == "ok"
                assert loop.time() - started < 2
            assert upstream.most[path] == 2  # connections_per_entry, never more
            assert not any(task.done() for task in ranged)
            asked_before = len(upstream.gets(path))
            await leaving.close()  # the clients go away
            left = loop.time()
            await until(lambda: upstream.open[path] == 0, timeout=timeout + 30)
            closed = max(when for closed_path, when in upstream.closed if closed_path == path) - left
            print(f"upstream connections of the dripping entry closed {closed:.2f} s after its clients left; "
                  f"at most {upstream.most[path]} at once; {len(upstream.gets(path)) - asked_before} asked after")
            # the fetches nobody waits for are abandoned (the store's orphan grace is 1 s), those queued for the
            # entry's share too (one may start as another's slot frees, and goes with it)
            assert closed < timeout + 1.5
            await asyncio.gather(*ranged, streamed, return_exceptions=True)


async def test_a_dripping_entry_lets_go_when_request_seconds_is_over(serve, tmp_path):
    drip = PHOTO.read_bytes() + os.urandom(1_000_000)
    timeout, path = 1.0, "100/0_drip/original.bin"
    async with py_upstream(bin_files("0_drip", drip)) as upstream:
        upstream.behave = lambda method, asked_path, asked: "drip" if method == "GET" and asked_path == path \
            and int(asked[6:].partition("-")[0]) >= 5 * 65_536 else None
        client = await serve(make_config(tmp_path, http_origin(upstream.url, block_bytes=65_536,
                                                               timeout_seconds=timeout),
                                         "[limits]\nrequest_seconds = 1.5"))
        answers = await asyncio.gather(*(client.get("/p/100/raw/entry_id/0_drip", headers={
            "Range": f"bytes={n * 65_536}-{n * 65_536 + 9}"}) for n in range(6, 9)))
        answered = asyncio.get_running_loop().time()
        assert [answer.status for answer in answers] == [504] * 3
        await until(lambda: upstream.open[path] == 0, timeout=timeout + 10)
        closed = max(when for closed_path, when in upstream.closed if closed_path == path) - answered
        assert closed < timeout + 1.5, closed


async def test_more_dripping_entries_than_connections_let_go_when_their_clients_leave(tmp_path):
    """The issue's 70 dripping paths, scaled down: ten entries, two clients each, 8 connections. While the clients
    wait, the dripping fetches hold the worker's connections (another entry's cold fetch waits for one: see the
    report) but /healthz answers; when they leave, every connection is let go and the other entry answers."""
    import aiohttp

    drips = {f"0_drip{index}": PHOTO.read_bytes() + os.urandom(400_000) for index in range(10)}
    fine = os.urandom(200_000)
    files = {**bin_files("0_fine", fine)}
    for entry, body in drips.items():
        files.update(bin_files(entry, body))
    timeout = 1.0
    async with py_upstream(files) as upstream:
        upstream.behave = lambda method, asked_path, asked: "drip" if method == "GET" and "0_drip" in asked_path \
            and asked_path.endswith("original.bin") and int(asked[6:].partition("-")[0]) >= 5 * 65_536 else None
        origin = http_origin(upstream.url, block_bytes=65_536, timeout_seconds=timeout, connections=8,
                             connections_per_entry=2)
        async with servers(tmp_path, origin) as (server,), unlimited_session() as session:
            loop = asyncio.get_running_loop()
            leaving = aiohttp.ClientSession()
            ranged = [asyncio.ensure_future(leaving.get(f"{server.url}/p/100/raw/entry_id/{entry}", headers={
                "Range": f"bytes={n * 65_536}-{n * 65_536 + 9}"})) for entry in drips for n in (6, 7)]

            def dripping() -> int:
                return sum(upstream.open[f"100/{entry}/original.bin"] for entry in drips)

            await until(lambda: dripping() == 8)  # every connection of the worker
            for _ in range(3):
                async with session.get(f"{server.url}/healthz") as health:
                    assert health.status == 200 and (await health.json())["origin"]["reachable"]
            during = await fetch(session, f"{server.url}/p/100/raw/entry_id/0_fine")
            await leaving.close()
            left = loop.time()
            await until(lambda: dripping() == 0, timeout=timeout + 10)
            print(f"another entry while they dripped: {during[0]}; all let go {loop.time() - left:.2f} s after "
                  f"their clients left")
            assert loop.time() - left < timeout + 2
            assert await fetch(session, f"{server.url}/p/100/raw/entry_id/0_fine") == (200, fine)
            await asyncio.gather(*ranged, return_exceptions=True)


# =============================================================================================================
# 7. an unknown entry: a bounded number of upstream requests, remembered for the node
# =============================================================================================================


async def test_an_unknown_entry_costs_a_bounded_number_of_requests_remembered_across_workers(tmp_path, upstream):
    extensions = ["mp4", "jpg", "png"]
    not_found = 3.0
    origin = http_origin(upstream.url, extensions=extensions, not_found_seconds=not_found)
    async with servers(tmp_path, origin, count=2) as (first, second), unlimited_session() as session:
        loop = asyncio.get_running_loop()
        urls = [f"{server.url}/p/100/{service}/entry_id/0_none" for server in (first, second)
                for service in ("raw", "thumbnail", "flvclipper")]
        before = loop.time()
        answers = await asyncio.gather(*(fetch(session, url) for url in urls * 3))  # at once, on both workers
        assert {status for status, _ in answers} == {404}
        cost = [(line.method, line.path) for line in upstream.requests() if "/0_none/" in line.path]
        # entry.json, then a HEAD for each configured extension: once for the node, not once a request or a worker
        assert sorted(cost) == sorted([("GET", "/100/0_none/entry.json")] +
                                      [("HEAD", f"/100/0_none/original.{ext}") for ext in extensions])
        seen = len(upstream.requests())
        for url in urls:  # remembered, by either worker
            assert (await fetch(session, url))[0] == 404
        assert len(upstream.requests()) == seen
        while len(upstream.requests()) == seen:  # asked again once not_found_seconds are over, not before
            assert (await fetch(session, urls[1]))[0] == 404
            assert loop.time() - before < not_found + 10
            await asyncio.sleep(0.05)  # polling
        assert loop.time() - before >= not_found - 0.1
        assert len(upstream.requests()) - seen == 1 + len(extensions)
