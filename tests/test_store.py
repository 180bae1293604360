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
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import av
import pytest
from PIL import Image

from fixtures import servers
from mediaproxy.app import RUNTIME, make_app
from mediaproxy.refs import EntryRef
from mediaproxy.store.reader import BlockReader

from .conftest import (FIXTURE_MEDIA, LoopbackUpstream, Server, cache_entries, make_config, require_tool, tmpfs,
                       until)
from .test_resilience import unlimited_session

MB = 1 << 20
BLOCK = MB  # the default block_bytes


# --------------------------------------------------------------------------------------------------- media


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """A ~300 MB, 10 minute MP4 with its moov at the end, made in about two seconds."""
    ffmpeg = require_tool("ffmpeg")
    folder = tmp_path_factory.mktemp("long-video")
    source, looped = folder / "ten-seconds.mp4", folder / "long.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-y",
                    "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25,noise=alls=30:allf=t",
                    "-f", "lavfi", "-i", "sine=frequency=441:sample_rate=44100", "-t", "10",
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", "50", "-keyint_min", "50", "-sc_threshold", "0",
                    "-b:v", "4M", "-maxrate", "4M", "-bufsize", "2M", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-b:a", "64k", str(source)], check=True)
    subprocess.run([ffmpeg, "-v", "error", "-y", "-stream_loop", "59", "-i", str(source), "-c", "copy",
                    str(looped)], check=True)
    source.unlink()
    yield looped
    shutil.rmtree(folder, ignore_errors=True)


def boxes(path: Path) -> dict[str, tuple[int, int]]:
    """Top-level MP4 boxes: type → (offset, size)."""
    with open(path, "rb") as file:
        return _boxes(file, path.stat().st_size)


def boxes_of(data: bytes) -> dict[str, tuple[int, int]]:
    return _boxes(io.BytesIO(data), len(data))


def _boxes(file, end: int) -> dict[str, tuple[int, int]]:
    found, offset = {}, 0
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


class RangeNginx(servers.Nginx):
    """nginx serving `root`, logging what the store's requests cost: status, body bytes, Range and If-Range.
    `server` adds directives to its server block (`limit_rate 4m;`...)."""

    def __init__(self, root: Path, workdir: Path, server: str = "") -> None:
        super().__init__(root, workdir, server_extra=server, executable=require_tool("nginx"), log=(
            "$request_method", "$uri", "$status", "$body_bytes_sent", "$http_range", "$http_if_range"))

    def requests(self, path_end: str = "") -> list[Logged]:
        return [Logged(method, path, int(status), int(sent), "" if asked == "-" else asked,
                       "" if if_range == "-" else if_range)
                for method, path, status, sent, asked, if_range in self.logged() if path.endswith(path_end)]

    def gets(self, path_end: str) -> list[Logged]:
        return [line for line in self.requests(path_end) if line.method == "GET"]

    def sent(self, path_end: str) -> int:
        return sum(line.sent for line in self.gets(path_end))


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
    slow = RangeNginx(root, tmp_path / "nginx", "limit_rate 4m;")  # per connection: 1/4 s a block
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
        assert first_byte < whole / 3  # the whole body needs 32 blocks, fetched 4 at a time: about 2 s
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
        await asyncio.gather(*(server.up() for server in started))  # together: each waits in a thread
        yield started
    finally:
        for server in started:
            server.stop()


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
                for second in (3, 150, 300, 450)]
        urls += [(f"{server.url}/p/100/raw/entry_id/0_long", {"Range": f"bytes={first}-{last}"})
                 for first, last in ranges]
        async with unlimited_session() as session:  # a connection per request: the kernel spreads them
            answers = await asyncio.gather(*(fetch(session, url, headers) for url, headers in urls * 2))
        workers = answering_workers(server, "/0_long")
    for (url, headers), (status, body) in zip(urls * 2, answers):
        assert status == 200 or headers and status == 206, (url, status, body[:200])
    for index in range(len(urls)):  # the two answers to one URL are the same bytes
        assert answers[index][1] == answers[index + len(urls)][1]
    with open(long_video, "rb") as original:
        for (first, last), (_, body) in zip(ranges, answers[4:6]):
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
    print(f"{len(urls) * 2} requests on {dict(workers)}: {len(gets)} blocks, {fetched / MB:.1f} MB "
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
            requests = [(server, entry) for entry in bodies for server in pair]  # every original from both at once
            answers = await asyncio.gather(*(fetch(session, f"{server.url}/p/100/raw/entry_id/{entry}")
                                             for server, entry in requests))
            for (_, entry), (status, body) in zip(requests, answers):
                assert status == 200 and body == bodies[entry]
    sizes = [entry["path"].stat().st_size for entry in cache_entries(cache) if entry["ns"] == "originals"]
    with sqlite3.connect(cache / "index.sqlite") as db:
        total = db.execute("SELECT bytes FROM totals WHERE namespace = 'originals'").fetchone()[0]
    print(f"{len(upstream.gets('/original.bin'))} block fetches; {sum(sizes)} bytes in {len(sizes)} blocks on disk")
    assert sum(sizes) == total <= budget  # the index counts what is on disk, and both workers kept to one budget


# =============================================================================================================
# a Python upstream for faults: Range and If-Range like an object store, and whatever a test makes it do wrong
# =============================================================================================================


class PyUpstream(LoopbackUpstream):
    """A loopback HTTP/1.1 origin (one request per connection) for the tests' faults.

    `files[path] = body`, served under `etags[path]` (change both to change the file): HEAD, GET, `Range` (206) and
    `If-Range` (a validator that no longer matches: the whole current file, 200), as object stores answer.
    `behave(method, path, range_header)` may return what to do instead: "drip" (the body, a byte every
    `drip_seconds`), "500", "reset" (close after the headers), "truncated" (half the body, then close), "stall"
    (half the body, then nothing),
    "whole" (200 and the whole file: an upstream that ignores Range), or raw bytes to send as the answer
    (`list` of segments: each sent on its own, a pause between). Records every request (`log`), the connections
    of each path open now (`open`) and at most (`most`), and when each closed (`closed`, loop time).
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__()
        self.files = dict(files)
        self.etags = {path: f'"v1-{len(body)}"' for path, body in files.items()}
        self.behave = lambda method, path, asked: None
        self.drip_seconds = 0.2
        self.log: list[tuple[str, str, str, str, int]] = []  # method, path, Range, If-Range, status
        self.open: Counter = Counter()
        self.most: Counter = Counter()
        self.closed: list[tuple[str, float]] = []

    def gets(self, path: str) -> list[tuple[str, str, str, str, int]]:
        return [line for line in self.log if line[0] == "GET" and line[1] == path]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
            answering = asyncio.ensure_future(self._answer(method, path, headers, writer))
            await asyncio.wait([gone, answering], return_when=asyncio.FIRST_COMPLETED)
            answering.cancel()
            gone.cancel()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            if path is not None:
                self.open[path] -= 1
                self.closed.append((path, asyncio.get_running_loop().time()))

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
        if behaviour in ("truncated", "stall"):
            part = part[:len(part) // 2]
        if behaviour == "drip":
            for offset in range(len(part)):
                if self.stopping.is_set():
                    return
                writer.write(part[offset:offset + 1])
                await writer.drain()
                await asyncio.sleep(self.drip_seconds)
            return
        writer.write(part)
        await writer.drain()
        if behaviour == "stall":  # half the body, then nothing until the upstream stops
            await self.stopping.wait()


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


async def test_dripping_entries_hold_only_their_share_and_let_go_when_their_clients_leave(tmp_path):
    """Against a real `mediaproxy serve`: aiohttp's test server cancels a handler whose client goes, the real one
    does not. First one dripping entry and its seven clients; then the issue's 70 dripping paths, scaled down: ten
    entries, two clients each, for the worker's 8 connections."""
    drip = PHOTO.read_bytes() + os.urandom(1_000_000)  # a JPEG to the probe (its first block), then 15 blocks
    drips = {f"0_drip{index}": PHOTO.read_bytes() + os.urandom(400_000) for index in range(10)}
    fine, cold = os.urandom(200_000), os.urandom(200_000)
    files = {**bin_files("0_drip", drip), **bin_files("0_fine", fine), **bin_files("0_cold", cold)}
    for entry, body in drips.items():
        files.update(bin_files(entry, body))
    timeout = 1.0
    path = "100/0_drip/original.bin"
    async with py_upstream(files) as upstream:
        # every block of a 0_drip* original past its first five drips, a byte every 0.2 s: never a time-out
        upstream.behave = lambda method, asked_path, asked: "drip" if method == "GET" and "/0_drip" in asked_path \
            and asked_path.endswith("/original.bin") and int(asked[6:].partition("-")[0]) >= 5 * 65_536 else None
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

            leaving = aiohttp.ClientSession()
            ranged = [asyncio.ensure_future(leaving.get(f"{server.url}/p/100/raw/entry_id/{entry}", headers={
                "Range": f"bytes={n * 65_536}-{n * 65_536 + 9}"})) for entry in drips for n in (6, 7)]

            def dripping() -> int:
                return sum(upstream.open[f"100/{entry}/original.bin"] for entry in drips)

            await until(lambda: dripping() == 8)  # every connection of the worker
            async with session.get(f"{server.url}/healthz") as health:
                assert health.status == 200 and (await health.json())["origin"]["reachable"]
            assert await fetch(session, f"{server.url}/p/100/raw/entry_id/0_fine") == (200, fine)  # cached
            during = await fetch(session, f"{server.url}/p/100/raw/entry_id/0_cold")  # waits for a connection
            await leaving.close()
            left = loop.time()
            await until(lambda: dripping() == 0, timeout=timeout + 10)
            print(f"a cold entry while ten dripped: {during[0]}; all let go {loop.time() - left:.2f} s after "
                  f"their clients left")
            assert loop.time() - left < timeout + 2
            assert await fetch(session, f"{server.url}/p/100/raw/entry_id/0_cold") == (200, cold)
            await asyncio.gather(*ranged, return_exceptions=True)


async def test_a_dripping_entry_lets_go_when_request_seconds_is_over(serve, tmp_path):
    drip = PHOTO.read_bytes() + os.urandom(1_000_000)
    timeout, path = 1.0, "100/0_drip/original.bin"
    async with py_upstream(bin_files("0_drip", drip)) as upstream:
        upstream.behave = lambda method, asked_path, asked: "drip" if method == "GET" and asked_path == path \
            and int(asked[6:].partition("-")[0]) >= 5 * 65_536 else None
        client = await serve(make_config(tmp_path, http_origin(upstream.url, block_bytes=65_536,
                                                               timeout_seconds=timeout),
                                         "[limits]\nrequest_seconds = 1"))
        answers = await asyncio.gather(*(client.get("/p/100/raw/entry_id/0_drip", headers={
            "Range": f"bytes={n * 65_536}-{n * 65_536 + 9}"}) for n in range(6, 9)))
        answered = asyncio.get_running_loop().time()
        assert [answer.status for answer in answers] == [504] * 3
        await until(lambda: upstream.open[path] == 0, timeout=timeout + 10)
        closed = max(when for closed_path, when in upstream.closed if closed_path == path) - answered
        assert closed < timeout + 1.5, closed


# =============================================================================================================
# 7. an unknown entry: a bounded number of upstream requests, remembered for the node
# =============================================================================================================


async def test_an_unknown_entry_costs_a_bounded_number_of_requests_remembered_across_workers(tmp_path, upstream):
    extensions = ["mp4", "jpg", "png"]
    not_found = 1.5
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

        async def asked_again() -> bool:  # once not_found_seconds are over, not before
            assert (await fetch(session, urls[1]))[0] == 404
            return len(upstream.requests()) > seen

        await until(asked_again, not_found + 10, interval=0.05)
        assert loop.time() - before >= not_found - 0.1
        assert len(upstream.requests()) - seen == 1 + len(extensions)


# =============================================================================================================
# 8. entry.json read to its end, however it arrives
# =============================================================================================================


def segmented(body: bytes, *, chunked: bool = False, pieces: int = 5) -> list[bytes]:
    """An entry.json answer cut into TCP segments sent apart (headers cut too), plainly sized or chunked."""
    if chunked:
        step = -(-len(body) // 3)
        framed = b"".join(f"{len(body[i:i + step]):x}\r\n".encode() + body[i:i + step] + b"\r\n"
                          for i in range(0, len(body), step)) + b"0\r\n\r\n"
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n" \
               b"Connection: close\r\n\r\n"
    else:
        framed = body
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nContent-Type: application/json\r\n" \
               f"Connection: close\r\n\r\n".encode()
    whole = head + framed
    step = -(-len(whole) // pieces)
    return [whole[i:i + step] for i in range(0, len(whole), step)]


@pytest.mark.parametrize("chunked", [False, True], ids=["sized", "chunked"])
async def test_an_entry_json_in_several_segments_is_read_whole(serve, tmp_path, chunked):
    manifest = json.dumps({"original": "clip.jpg", "name": "Harbour at dusk", "thumb_offset": 1,
                           "flavors": {f"0_f{index}": f"flavor{index}.mp4" for index in range(40)}}).encode()
    files = {"100/0_seg/entry.json": manifest, "100/0_seg/clip.jpg": PHOTO.read_bytes()}
    async with py_upstream(files) as upstream:
        upstream.behave = lambda method, path, asked: segmented(manifest, chunked=chunked) \
            if path.endswith("entry.json") else None
        client = await serve(make_config(tmp_path, http_origin(upstream.url)))
        response = await client.get("/p/100/raw/entry_id/0_seg")
        assert response.status == 200, await response.text()
        assert response.headers["Content-Disposition"] == 'attachment; filename="Harbour at dusk.jpg"'
        assert await response.read() == PHOTO.read_bytes()  # the file entry.json names: it was parsed


@pytest.mark.parametrize("chunked", [False, True], ids=["sized", "chunked"])
async def test_an_entry_json_over_1_mb_is_too_large_not_invalid(serve, tmp_path, chunked):
    manifest = json.dumps({"original": "clip.jpg", "name": "x" * 1_100_000}).encode()  # valid JSON, too big
    async with py_upstream({"100/0_big/entry.json": manifest, "100/0_big/clip.jpg": PHOTO.read_bytes()}) as upstream:
        upstream.behave = lambda method, path, asked: segmented(manifest, chunked=chunked, pieces=20) \
            if path.endswith("entry.json") else None
        client = await serve(make_config(tmp_path, http_origin(upstream.url)))
        response = await client.get("/p/100/raw/entry_id/0_big")
        text = await response.text()
        assert response.status == 502 and response.headers["X-Kaltura"] == "error-5"
        assert "too large" in text and "JSON" not in text, text
        assert not upstream.gets("100/0_big/clip.jpg")


# =============================================================================================================
# 9. an original that changes between two blocks: one version per answer, never stitched
# =============================================================================================================


async def test_a_file_changed_at_nginx_is_noticed_by_if_range_and_never_stitched(serve, tmp_path, upstream):
    old, new = os.urandom(8 * MB), os.urandom(8 * MB + 1000)
    folder = link_entry(upstream.root, "0_chg", {"original.bin": old, "entry.json": b'{"original": "original.bin"}'})
    client = await serve(make_config(tmp_path, http_origin(upstream.url, revalidate_seconds=600)))
    response = await client.get("/p/100/raw/entry_id/0_chg", headers={"Range": "bytes=0-99"})
    assert response.status == 206 and await response.read() == old[:100]
    (folder / "original.tmp").write_bytes(new)  # replaced as uploads are: a new file renamed into place
    os.replace(folder / "original.tmp", folder / "original.bin")
    # still trusted as located (revalidate_seconds): the next block is asked If-Range the old ETag
    changed = await client.get("/p/100/raw/entry_id/0_chg", headers={"Range": f"bytes={5 * MB}-{5 * MB + 99}"})
    assert changed.status == 502 and changed.headers["X-Kaltura"] == "error-5"
    # nginx: not that version any more, here is the whole new file (logged once nginx sees the store hang up)
    await until(lambda: [line for line in upstream.gets("/0_chg/original.bin") if line.status == 200])
    asked, = [line for line in upstream.gets("/0_chg/original.bin") if line.status == 200]
    assert asked.if_range and asked.range == f"bytes={5 * MB}-{6 * MB - 1}"
    print(f"the 200 nginx began with cost {asked.sent / MB:.1f} MB before the store closed it")
    again = await client.get("/p/100/raw/entry_id/0_chg")
    assert again.status == 200 and int(again.headers["Content-Length"]) == len(new)
    assert await again.read() == new  # located again: the new file whole, nothing of the old one
    assert all(f"|{asked.if_range}" not in entry["key"] for entry in cache_entries(tmp_path / "cache"))


async def test_a_file_that_changes_mid_stream_cuts_the_answer_and_the_next_one_is_the_new_file(serve, tmp_path):
    old = PHOTO.read_bytes() + os.urandom(1_000_000)  # probed from its first block (a JPEG header)
    new = PHOTO.read_bytes() + os.urandom(1_000_000)
    path = "100/0_chg/original.bin"
    async with py_upstream(bin_files("0_chg", old)) as upstream:
        def behave(method, asked_path, asked):
            if asked_path == path and method == "GET" and int(asked[6:].partition("-")[0]) >= 8 * 65_536:
                upstream.files[path], upstream.etags[path] = new, '"v2"'  # from the ninth block on
            return None
        upstream.behave = behave
        client = await serve(make_config(tmp_path, http_origin(upstream.url, block_bytes=65_536,
                                                               revalidate_seconds=600)))
        response = await client.get("/p/100/raw/entry_id/0_chg")
        assert response.status == 200 and int(response.headers["Content-Length"]) == len(old)
        received = bytearray()
        with pytest.raises(aiohttp.ClientPayloadError):  # cut: the status line was out, the rest is not this file
            async for chunk in response.content.iter_any():
                received += chunk
        assert len(received) < len(old) and old.startswith(bytes(received))  # only the old version's bytes
        assert any(if_range.startswith('"v1-') and status == 200 for _, _, _, if_range, status in upstream.gets(path))
        again = await client.get("/p/100/raw/entry_id/0_chg")
        assert again.status == 200 and await again.read() == new
        await until(lambda: not [entry for entry in cache_entries(tmp_path / "cache") if "v1-" in entry["key"]])


@pytest.fixture(scope="module")
def short_video(long_video, tmp_path_factory) -> bytes:
    """The first 30 s of the long video (~15 MB), moov at the end: small enough to serve from memory."""
    path = tmp_path_factory.mktemp("short-video") / "short.mp4"
    subprocess.run([require_tool("ffmpeg"), "-v", "error", "-y", "-i", str(long_video), "-t", "30", "-c", "copy",
                    str(path)], check=True)
    return path.read_bytes()


async def test_a_video_that_changes_while_a_frame_is_grabbed_is_a_502_and_then_the_new_frame(serve, tmp_path,
                                                                                           short_video):
    path = "100/0_vid/original.mp4"
    changed = short_video[:-16] + b"\0" * 16  # same size, other bytes (its moov's tail): another version
    async with py_upstream({path: short_video}) as upstream:
        def behave(method, asked_path, asked):
            start = int(asked[6:].partition("-")[0]) if asked.startswith("bytes=") else 0
            if asked_path == path and method == "GET" and 4 * MB <= start < len(short_video) - 2 * MB and \
                    upstream.etags[path].startswith('"v1-'):
                upstream.files[path], upstream.etags[path] = changed, '"v2"'  # under the frame grab's feet
            return None
        upstream.behave = behave
        client = await serve(make_config(tmp_path, http_origin(upstream.url, revalidate_seconds=600)))
        response = await client.get("/p/100/thumbnail/entry_id/0_vid/vid_sec/20/width/160")
        assert response.status == 502, (response.status, await response.text())
        assert response.headers["X-Kaltura"] == "error-5"
        gop = upstream.gets(path)[-1]
        assert gop[3].startswith('"v1-') and gop[4] == 200  # the GOP's block, asked If-Range the old version
        upstream.files[path], upstream.etags[path] = short_video, '"v3"'  # a valid video again
        response = await client.get("/p/100/thumbnail/entry_id/0_vid/vid_sec/20/width/160")
        assert response.status == 200
        decoded(await response.read())


# =============================================================================================================
# 10. a block fetch that fails: that request fails (502/504), nothing partial is kept, the next one fetches again
# =============================================================================================================


def assert_blocks_whole(cache: Path, original: bytes, block: int) -> int:
    """Every block of the originals namespace on disk is the original's bytes at its place, whole; how many."""
    count = 0
    for entry in cache_entries(cache):
        if entry["ns"] == "originals":
            index = int(entry["key"].rpartition("|")[2])
            body = entry["path"].read_bytes()[:entry["size"]]
            assert body == original[index * block:(index + 1) * block], f"block {index} is not the original's"
            count += 1
    return count


@pytest.mark.parametrize("fault, status", [("500", 502), ("reset", 502), ("truncated", 502), ("stall", 504)])
async def test_a_failed_block_fetch_fails_that_request_keeps_nothing_and_is_fetched_again(serve, tmp_path,
                                                                                        short_video, fault, status):
    path, size = "100/0_vid/original.mp4", len(short_video)
    moov_block = boxes_of(short_video)["moov"][0] // MB
    failed: list[int] = []
    armed = []
    async with py_upstream({path: short_video}) as upstream:
        def behave(method, asked_path, asked):
            start = int(asked[6:].partition("-")[0]) if asked.startswith("bytes=") else -1
            if armed and asked_path == path and start // MB not in (-1, 0, moov_block) and start not in failed:
                armed.clear()  # the next block fetched (not the probe's first block or moov) fails, once
                failed.append(start)
                return fault
            return None
        upstream.behave = behave
        client = await serve(make_config(tmp_path, http_origin(upstream.url, timeout_seconds=0.5)))
        cache = tmp_path / "cache"

        armed.append(True)  # a Range whose block fails: before the status line, a clean error
        ranged = await client.get("/p/100/raw/entry_id/0_vid", headers={"Range": f"bytes={6 * MB + 5}-{6 * MB + 99}"})
        assert ranged.status == status and ranged.headers["X-Kaltura"] == "error-5"
        assert failed == [6 * MB]
        armed.append(True)  # a block of the GOP a frame grab reads
        thumbnail = await client.get("/p/100/thumbnail/entry_id/0_vid/vid_sec/20/width/160")
        assert thumbnail.status == status and thumbnail.headers["X-Kaltura"] == "error-5"
        assert len(failed) == 2
        armed.append(True)  # a block in the middle of a stream: the status line is out, the body is cut short
        whole = await client.get("/p/100/raw/entry_id/0_vid")
        assert whole.status == 200
        received = bytearray()
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in whole.content.iter_any():
                received += chunk
        assert len(received) < size and short_video.startswith(bytes(received))  # cut, never a short "whole"
        assert len(failed) == 3
        assert_blocks_whole(cache, short_video, MB)  # what is kept is whole; nothing of the failed fetches

        ranged = await client.get("/p/100/raw/entry_id/0_vid", headers={"Range": f"bytes={6 * MB + 5}-{6 * MB + 99}"})
        assert ranged.status == 206 and await ranged.read() == short_video[6 * MB + 5:6 * MB + 100]
        thumbnail = await client.get("/p/100/thumbnail/entry_id/0_vid/vid_sec/20/width/160")
        assert thumbnail.status == 200
        decoded(await thumbnail.read())
        whole = await client.get("/p/100/raw/entry_id/0_vid")
        assert whole.status == 200 and await whole.read() == short_video
        for start in failed:  # asked again after the fault
            assert len([line for line in upstream.gets(path) if line[2].startswith(f"bytes={start}-")]) == 2
        await until(lambda: assert_blocks_whole(cache, short_video, MB) == -(-size // MB))


# =============================================================================================================
# 11. a full disk: served without caching, reported by /healthz, logged once
# =============================================================================================================


@pytest.fixture
def full_cache_disk(tmp_path: Path):
    """A 4 MB tmpfs where the server's cache goes (tmp_path / "cache"); `fill()` leaves it no byte free."""
    with tmpfs(tmp_path / "cache", "4m") as mount:
        def fill() -> None:
            with open(mount / "filler", "wb") as filler:
                try:
                    while True:
                        filler.write(b"\0" * 65_536)
                        filler.flush()
                except OSError:
                    pass

        yield fill


async def test_a_full_disk_serves_everything_uncached_reports_degraded_and_logs_once(serve, tmp_path, nginx,
                                                                                  full_cache_disk, caplog):
    video = FIXTURE_MEDIA / "100/0_video/original.mp4"
    client = await serve(make_config(tmp_path, http_origin(nginx.url)))
    health = await (await client.get("/healthz")).json()
    assert health["cache"] == {"status": "ok"}
    full_cache_disk()
    for round_ in range(3):
        raw = await client.get("/p/100/raw/entry_id/0_photo")
        assert raw.status == 200 and await raw.read() == PHOTO.read_bytes()
        ranged = await client.get("/p/100/raw/entry_id/0_video", headers={"Range": "bytes=100-199"})
        assert ranged.status == 206 and await ranged.read() == video.read_bytes()[100:200]
        photo = await client.get(f"/p/100/thumbnail/entry_id/0_photo/width/{100 + round_}")
        assert photo.status == 200 and decoded(await photo.read()).width == 100 + round_
        frame = await client.get(f"/p/100/thumbnail/entry_id/0_video/vid_sec/{1 + round_}/width/80")
        assert frame.status == 200 and decoded(await frame.read()).width == 80
        clip = await client.get(f"/p/100/flvclipper/entry_id/0_video/clip_from/{1000 * round_}/clip_to/"
                                f"{1000 * round_ + 2000}")
        body = await clip.read()
        assert clip.status == 200 and body[4:8] == b"ftyp" and len(body) == int(clip.headers["Content-Length"])
    health = await client.get("/healthz")
    report = await health.json()
    assert health.status == 200 and report["cache"]["status"] == "degraded", report
    assert "No space left" in report["cache"]["reason"] or "full" in report["cache"]["reason"], report
    assert [entry for entry in cache_entries(tmp_path / "cache")] == []  # nothing was cached
    assert [method for method, path, _ in nginx.requests() if path == "/100/0_photo/original.jpg"].count("GET") >= 3
    warnings = [record for record in caplog.records if "serving without caching" in record.getMessage()]
    assert len(warnings) == 1, [record.getMessage() for record in warnings]  # once, not per request
    assert not [record for record in caplog.records if record.levelname == "ERROR"]


# =============================================================================================================
# 12. an upstream that ignores Range: one whole read for the node, then the cache
# =============================================================================================================


async def test_an_upstream_that_ignores_range_is_read_whole_once_for_the_node(tmp_path, random_32mb):
    root = tmp_path / "upstream"
    link_entry(root, "0_bin", {"original.bin": random_32mb, "entry.json": b'{"original": "original.bin"}'})
    body = random_32mb.read_bytes()
    ignoring = RangeNginx(root, tmp_path / "nginx", "max_ranges 0;")  # 200 and the whole file to any Range
    try:
        async with servers(tmp_path, http_origin(ignoring.url), count=2) as pair, unlimited_session() as session:
            ranges = [(0, 99), (20 * MB, 20 * MB + 99), (31 * MB, 32 * MB - 1)]
            answers = await asyncio.gather(*(fetch(session, f"{server.url}/p/100/raw/entry_id/0_bin",
                                                   {"Range": f"bytes={first}-{last}"})
                                             for server in pair for first, last in ranges))
            for (first, last), (status, answer) in zip(ranges * 2, answers):
                assert status == 206 and answer == body[first:last + 1]
            gets = ignoring.gets("/0_bin/original.bin")
            whole = [line for line in gets if not line.range]
            assert len(whole) == 1 and whole[0].status == 200 and whole[0].sent == len(body)  # one for the node
            # each worker learns it from a Range answered 200, which it drops unread
            assert all(line.status == 200 for line in gets)
            dropped = [line for line in gets if line.range]
            print(f"one whole read; {len(dropped)} Range requests answered whole and dropped, "
                  f"{sum(line.sent for line in dropped) / MB:.1f} MB of them sent")
            assert 1 <= len(dropped) <= 2 * 4
            before = len(ignoring.requests())
            for server in pair:
                assert await fetch(session, f"{server.url}/p/100/raw/entry_id/0_bin") == (200, body)
                status, answer = await fetch(session, f"{server.url}/p/100/raw/entry_id/0_bin",
                                             {"Range": f"bytes={10 * MB}-{12 * MB}"})
                assert status == 206 and answer == body[10 * MB:12 * MB + 1]
            assert ignoring.requests()[before:] == []  # later requests: from the cache
    finally:
        ignoring.stop()


# =============================================================================================================
# 13. a remote original as a file object: its size without a fetch
# =============================================================================================================


def test_a_block_reader_knows_its_size_without_fetching():
    data = os.urandom(300_000)
    asked: list[int] = []

    def block(index: int) -> bytes:
        asked.append(index)
        return data[index * 65_536:(index + 1) * 65_536]

    reader = BlockReader(len(data), 65_536, block)
    assert reader.seek(0, os.SEEK_END) == len(data) and reader.tell() == len(data)  # how FFmpeg asks for a size
    assert reader.seek(-10, os.SEEK_END) == len(data) - 10 and reader.seek(5, os.SEEK_CUR) == len(data) - 5
    assert reader.seekable() and reader.readable()
    assert asked == []  # no block for any of that
    assert reader.read(100) == data[-5:] and asked == [4]  # past the end: what there is
    reader.seek(65_530)
    assert reader.read(10) == data[65_530:65_540] and asked == [4, 0, 1]  # across a block boundary
    reader.seek(65_536 + 7)
    assert reader.read(3) == data[65_543:65_546] and asked == [4, 0, 1]  # the block read last is kept
    reader.seek(0)
    assert reader.read() == data


async def test_pyav_opens_a_remote_original_reading_only_what_it_needs(serve, tmp_path, upstream, long_video):
    """Through Store.open, as the services do (in a worker thread): the size comes from the store, not a fetch."""
    size = long_video.stat().st_size
    link_entry(upstream.root, "0_long", {"original.mp4": long_video})
    client = await serve(make_config(tmp_path, http_origin(upstream.url)))
    store = client.app[RUNTIME].store
    file = await store.get(EntryRef(100, "0_long"))
    assert file.size == size and file.path is None

    def open_and_seek() -> tuple[int, int, float]:
        with store.open(file) as opened:
            at_end = opened.seek(0, os.SEEK_END)  # what FFmpeg's size query becomes
            fetched_for_size = len(upstream.gets("/original.mp4"))
            opened.seek(0)
            with av.open(opened, options={"probesize": "32", "analyzeduration": "0"}) as container:
                return at_end, fetched_for_size, float(container.duration / av.time_base)

    at_end, fetched_for_size, duration = await asyncio.to_thread(open_and_seek)
    assert at_end == size and fetched_for_size == 0
    assert 599 < duration < 601
    moov = boxes(long_video)["moov"]
    assert sorted(line.range for line in upstream.gets("/original.mp4")) == sorted(
        block_ranges(0, 1, size) + block_ranges(*moov, size))  # the first block and the moov: nothing else



# =============================================================================================================
# clips by index rewrite of a remote MP4: the moov and the clip's own byte range
# =============================================================================================================


async def test_a_clip_of_a_remote_mp4_reads_the_moov_and_its_own_range(serve, aiohttp_client, tmp_path, upstream,
                                                                       long_video):
    size = long_video.stat().st_size
    link_entry(upstream.root, "0_long", {"original.mp4": long_video})
    client = await serve(make_config(tmp_path, http_origin(upstream.url)))
    local = await local_client(aiohttp_client, tmp_path, long_video)
    path = "/p/100/flvclipper/entry_id/0_long/clip_from/300000/clip_to/310000"
    response = await client.get(path)
    assert response.status == 200, await response.text()
    body = await response.read()
    assert body == await (await local.get(path)).read()  # the same clip as cut from the file itself
    assert body[4:8] == b"ftyp" and len(body) == int(response.headers["Content-Length"])
    header = boxes_of(body)
    clip_moov, clip_mdat = header["moov"][1], header["mdat"][1]
    fetched = upstream.sent("/original.mp4")
    moov = boxes(long_video)["moov"]
    # what it costs: the first block and the moov (probing, and the index), the blocks of the clip's samples
    ranges = Counter(line.range for line in upstream.gets("/original.mp4"))
    assert max(ranges.values()) == 1
    print(f"clip of 10 s: {len(body) / MB:.1f} MB ({clip_moov / 1000:.0f} KB moov); {fetched / MB:.1f} MB from "
          f"upstream of {size / MB:.0f} MB")
    index_blocks = set(block_ranges(0, 1, size) + block_ranges(*moov, size))  # probing, and the moov it parses
    index_bytes = sum(int(b) - int(a) + 1 for a, b in (r[6:].split("-") for r in index_blocks))
    assert fetched <= index_bytes + clip_mdat + 2 * BLOCK  # + the two partial blocks at the ends of the clip's bytes
    again = await client.get(path, headers={"Range": "bytes=1000-1999"})
    assert again.status == 206 and await again.read() == body[1000:2000]
    assert upstream.sent("/original.mp4") == fetched  # the layout is kept, the bytes are in the cache


# =============================================================================================================
# a slow upstream and the work threads; a full disk and an upstream without Range
# =============================================================================================================


async def test_a_dripping_video_does_not_hold_the_work_threads_other_entries_need(serve, tmp_path, short_video):
    path = "100/0_vid/original.mp4"
    moov_block = boxes_of(short_video)["moov"][0] // MB
    async with py_upstream({path: short_video, **bin_files("0_fine", PHOTO.read_bytes())}) as upstream:
        upstream.behave = lambda method, asked_path, asked: "drip" if asked_path == path and asked.startswith(
            "bytes=") and 5 * MB <= int(asked[6:].partition("-")[0]) < moov_block * MB else None  # the GOPs drip
        client = await serve(make_config(tmp_path, http_origin(upstream.url, deadline_seconds=20),
                                         "[processing]\nthreads = 1\nqueue_timeout_seconds = 2"))
        grab = asyncio.ensure_future(client.get("/p/100/thumbnail/entry_id/0_vid/vid_sec/20/width/100"))
        await until(lambda: upstream.open[path] == 1, timeout=10)  # the grab waits for its GOP, in the thread
        try:
            response = await client.get("/p/100/raw/entry_id/0_fine")  # another entry, cold
            assert response.status == 200
        finally:
            grab.cancel()


async def test_a_full_disk_with_an_upstream_that_ignores_range_still_serves(serve, tmp_path, full_cache_disk):
    root = tmp_path / "upstream"
    link_entry(root, "0_photo", {"original.jpg": PHOTO})
    ignoring = RangeNginx(root, tmp_path / "nginx", "max_ranges 0;")
    try:
        client = await serve(make_config(tmp_path, http_origin(ignoring.url)))
        full_cache_disk()
        response = await client.get("/p/100/raw/entry_id/0_photo")
        assert response.status == 200 and await response.read() == PHOTO.read_bytes()
    finally:
        ignoring.stop()
