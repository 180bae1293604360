"""Resilience: kill -9 while the disk cache is being written, overload (503 at once), graceful SIGTERM.

The crash and shutdown tests run the real `python -m mediaproxy serve` process against a real upstream (nginx, or
a trickling aiohttp server in a thread) and look at the cache directory itself; the overload tests run the app in
process with one render thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from .conftest import Server, cache_entries, free_port, make_config, make_entry, metric, until

MB = 1 << 20
RAW_SIZES = {"0_big1": 16 * MB, "0_big2": 28 * MB, "0_big3": 40 * MB, "0_big4": 56 * MB}
BLOCK = 32 * MB  # large blocks: a block being written is there long enough to be killed mid-write
PHOTOS = ["0_pic1", "0_pic2", "0_pic3", "0_pic4", "0_pic5"]
THUMB_WIDTHS = [160, 320]


# --------------------------------------------------------------------------------------------------- media


def photo_jpeg(width: int, height: int, seed: int) -> bytes:
    """A photo-like JPEG: smooth colour fields with grain (so it compresses like a photo, not like noise)."""
    rng = random.Random(seed)
    small = (max(1, width // 16), max(1, height // 16))
    base = Image.frombytes("RGB", small, rng.randbytes(small[0] * small[1] * 3)).resize((width, height),
                                                                                       Image.BICUBIC)
    grain = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    buffer = io.BytesIO()
    Image.blend(base, grain, 0.12).save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def big_media(tmp_path_factory) -> Path:
    """Large originals, made once: raw files of random bytes (16–56 MB) and photo JPEGs; tests hard-link them."""
    root = tmp_path_factory.mktemp("big-media")
    for index, (entry, size) in enumerate(RAW_SIZES.items()):
        folder = root / entry
        folder.mkdir()
        (folder / "entry.json").write_text(json.dumps({"original": "original.bin"}))
        (folder / "original.bin").write_bytes(random.Random(index).randbytes(size))
    for index, entry in enumerate(PHOTOS):
        folder = root / entry
        folder.mkdir()
        (folder / "entry.json").write_text(json.dumps({"original": "original.jpg"}))
        (folder / "original.jpg").write_bytes(photo_jpeg(2400, 1600, 100 + index))
    return root


@pytest.fixture(scope="module")
def huge_photo() -> bytes:
    """4000×3000: a thumbnail 2000+ wide takes a good fraction of a second to render."""
    return photo_jpeg(4000, 3000, 7)


def install(big_media: Path, upstream_root: Path) -> dict[str, str]:
    """Hard-link the big media into an upstream root (partner 100); sha256 of each entry's original."""
    digests = {}
    for folder in big_media.iterdir():
        target = upstream_root / "100" / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for file in folder.iterdir():
            os.link(file, target / file.name)
            if file.name != "entry.json":
                digests[folder.name] = hashlib.sha256(file.read_bytes()).hexdigest()
    return digests


# --------------------------------------------------------------------------------------------------- a server


def write_config(tmp_path: Path, origin_url: str, extra: str = "") -> Path:
    make_config(tmp_path, f'kind = "http"\nurl = "{origin_url}"\ntimeout_seconds = 30\nblock_bytes = {BLOCK}', extra)
    return tmp_path / "config.toml"


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def unlimited_session(timeout: float = 60) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True),
                                 timeout=aiohttp.ClientTimeout(total=timeout))


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, dict, bytes]:
    async with session.get(url) as response:
        return response.status, dict(response.headers), await response.read()


# --------------------------------------------------------------------------------------------------- the cache on disk


def part_files(cache: Path) -> list[Path]:
    tmp = cache / "tmp"
    return sorted(tmp.glob("*.part")) if tmp.is_dir() else []


def blake(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def check_cache(cache: Path) -> Counter:
    """Every entry file on disk is whole (read from the documented layout: body, JSON header, its length, MPB2):
    its body has the size and digest the header gives, under the name of its namespace and key. Entries by
    namespace."""
    counts: Counter = Counter()
    for path in sorted((cache / "data").glob("*/*")) if (cache / "data").is_dir() else []:
        raw = path.read_bytes()
        assert raw[-4:] == b"MPB2", f"{path.name}: not a whole entry"
        length = int.from_bytes(raw[-8:-4], "big")
        header = json.loads(raw[-8 - length:-8])
        body = raw[:header["size"]]
        assert len(raw) == header["size"] + length + 8, f"{header['key']}: {len(raw)} bytes on disk"
        assert blake(body) == header["digest"], f"{header['key']}: digest differs from its header"
        assert hashlib.sha256(f"{header['ns']}|{header['key']}".encode()).hexdigest() == path.name
        counts[header["ns"]] += 1
    return counts


def find_entry(cache: Path, *needles: str) -> Path:
    for entry in cache_entries(cache):
        if all(needle in entry["key"] for needle in needles):
            return entry["path"]
    raise AssertionError(f"no cache entry for {needles}")


def blocks_of(size: int) -> int:
    return -(-size // BLOCK)


# --------------------------------------------------------------------------------------------------- the requests


def crash_urls() -> list[tuple[str, str, object]]:
    """(path, kind, expected): raw of every big file and photo, thumbnails of each photo at several widths."""
    urls = [(f"/p/100/sp/10000/raw/entry_id/{entry}", "raw", entry) for entry in [*RAW_SIZES, *PHOTOS]]
    urls += [(f"/p/100/thumbnail/entry_id/{entry}/width/{width}", "thumb", width)
             for entry in PHOTOS for width in THUMB_WIDTHS]
    random.Random(3).shuffle(urls)
    return urls


def check_answer(kind: str, expected, status: int, body: bytes, digests: dict[str, str], where: str) -> None:
    assert status == 200, f"{where}: {status} {body[:200]!r}"
    if kind == "raw":
        assert hashlib.sha256(body).hexdigest() == digests[expected], \
            f"{where}: {len(body)} bytes that are not the upstream file"
    else:
        with Image.open(io.BytesIO(body)) as picture:
            picture.load()  # decodes every byte: a truncated JPEG raises here
            assert picture.format == "JPEG"
            assert picture.width == expected, where


async def wait_for_moment(cache: Path, moment: str, process: subprocess.Popen, timeout: float = 30) -> None:
    """Poll the cache until the moment to strike: a write in progress, the first commit, the first result."""
    data = cache / "data"

    def come() -> bool:
        assert process.poll() is None, "the server died on its own"
        parts = [p for p in part_files(cache) if 0 < _size(p) < BLOCK // 2]  # half a block: being written
        if moment == "first-part":
            return bool(parts)
        if moment == "first-commit":
            return bool(parts) and any(data.glob("*/*"))
        return any(entry["ns"] == "results" for entry in cache_entries(cache))  # first-result

    await until(come, timeout, interval=0.003, failure=f"the moment {moment!r} never came")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# --------------------------------------------------------------------------------------------------- crash safety


@pytest.mark.parametrize("moment", ["first-part", "first-commit", "first-result"])
async def test_kill_9_while_writing_the_cache_never_serves_a_partial_file(tmp_path, nginx, big_media, moment):
    digests = install(big_media, nginx.root)
    urls = crash_urls()
    # a write in progress is a moment of a fraction of a millisecond: a kill that lands just after it finished
    # interrupted nothing, and the server is started again on a new cache (at most a few times)
    for attempt in range(5):
        (tmp_path / f"try{attempt}").mkdir()
        config_file = write_config(tmp_path / f"try{attempt}", nginx.url, "[processing]\nthreads = 2\n")
        cache = tmp_path / f"try{attempt}" / "cache"
        async with Server(config_file, tmp_path / f"first{attempt}.log") as first, unlimited_session() as session:
            tasks = [asyncio.create_task(get(session, first.url + path)) for path, _, _ in urls]
            await wait_for_moment(cache, moment, first.process)
            first.kill()
            answers = await asyncio.gather(*tasks, return_exceptions=True)
        leftovers = part_files(cache)
        if leftovers or moment == "first-result":
            break
    killed = first.pid

    # on disk right after the kill: only whole entries; leftovers are the killed writer's tmp files
    assert all(path.name.startswith(f"{killed}-") for path in leftovers), leftovers
    if moment in ("first-part", "first-commit"):
        assert leftovers, "the kill came after every write had finished: no write was interrupted"
    check_cache(cache)
    # what was answered before the kill was whole (a cut transfer is an exception, never a short 200)
    for (path, kind, expected), answer in zip(urls, answers):
        if not isinstance(answer, BaseException):
            check_answer(kind, expected, answer[0], answer[2], digests, f"before the kill: {path}")
    interrupted = sum(isinstance(answer, BaseException) for answer in answers)
    assert interrupted, "nothing was in flight when the server was killed"

    async with Server(config_file, tmp_path / "second.log") as second:
        assert not [path for path in leftovers if path.exists()], "tmp files of the killed writer survived a restart"
        assert not [path for path in part_files(cache) if path.name.startswith(f"{killed}-")]
        async with unlimited_session() as session:
            answers = await asyncio.gather(*(get(session, second.url + path) for path, _, _ in urls))
        for (path, kind, expected), (status, _, body) in zip(urls, answers):
            check_answer(kind, expected, status, body, digests, f"after the restart: {path}")
        second.process.send_signal(signal.SIGTERM)
        assert await second.exited(20) == 0, second.output()
    counts = check_cache(cache)
    assert counts["originals"] == sum(blocks_of(size) for size in RAW_SIZES.values()) + len(PHOTOS)
    assert counts["results"] == len(PHOTOS) * len(THUMB_WIDTHS)
    assert not part_files(cache)
    assert "Traceback" not in second.output()


async def test_a_cache_file_damaged_while_stopped_is_fetched_again(tmp_path, nginx, big_media):
    digests = install(big_media, nginx.root)
    config_file = write_config(tmp_path, nginx.url, "[processing]\nthreads = 2\n")
    cache = tmp_path / "cache"
    paths = {entry: f"/p/100/raw/entry_id/{entry}" for entry in ("0_big1", "0_big2", "0_pic1", "0_pic2")}
    thumb = "/p/100/thumbnail/entry_id/0_pic1/width/320"
    async with Server(config_file, tmp_path / "first.log") as first:
        async with unlimited_session() as session:
            for entry, path in paths.items():
                status, _, body = await get(session, first.url + path)
                check_answer("raw", entry, status, body, digests, path)
            status, _, thumbnail = await get(session, first.url + thumb)
            check_answer("thumb", 320, status, thumbnail, digests, thumb)
        first.process.send_signal(signal.SIGTERM)
        assert await first.exited(20) == 0, first.output()
    check_cache(cache)

    truncated = find_entry(cache, "/0_big1/original.bin|", "|0")
    with open(truncated, "r+b") as file:  # a torn write: half the bytes
        file.truncate(truncated.stat().st_size // 2)
    flipped = find_entry(cache, "/0_big2/original.bin|", "|0")
    with open(flipped, "r+b") as file:  # a disk fault: same size, other bytes
        file.seek(12345)
        file.write(b"\x00" * 4096)
    short = find_entry(cache, "/0_pic1/original.jpg|")
    short.write_bytes(b"")  # an empty file
    blob = find_entry(cache, "0_pic1", "width=320")
    blob.write_bytes(blob.read_bytes()[:-100])  # a cut result
    before_restart = len(nginx.requests())

    async with Server(config_file, tmp_path / "second.log") as second:
        async with unlimited_session() as session:
            for entry, path in paths.items():
                status, _, body = await get(session, second.url + path)
                check_answer("raw", entry, status, body, digests, f"after the damage: {path}")
            status, _, again = await get(session, second.url + thumb)
            assert status == 200 and again == thumbnail  # rendered again: the same picture
        refetched = Counter(path for method, path, status in nginx.requests()[before_restart:]
                            if method == "GET" and status == 206)
        assert refetched == {"/100/0_big1/original.bin": 1, "/100/0_big2/original.bin": 1,
                             "/100/0_pic1/original.jpg": 1}  # the damaged blocks, and only them
        second.process.send_signal(signal.SIGTERM)
        assert await second.exited(20) == 0, second.output()
    counts = check_cache(cache)  # the damaged entries were replaced by whole ones
    assert counts["originals"] == blocks_of(RAW_SIZES["0_big1"]) + blocks_of(RAW_SIZES["0_big2"]) + 2
    find_entry(cache, "0_pic1", "width=320")


# --------------------------------------------------------------------------------------------------- overload


def overload_config(tmp_path: Path, huge_photo: bytes, processing: str):
    root = tmp_path / "media"
    make_entry(root, 100, "0_huge", {"original.jpg": huge_photo})
    return make_config(tmp_path, f'kind = "local"\nroot = "{root}"', f"[processing]\n{processing}\n")


async def test_overload_answers_503_at_once_and_recovers(serve, tmp_path, huge_photo):
    client = await serve(overload_config(tmp_path, huge_photo, "threads = 1\nqueue = 4\nqueue_timeout_seconds = 2"))
    warm = await client.get("/p/100/thumbnail/entry_id/0_huge/width/40")  # probed once: later jobs are renders
    assert warm.status == 200
    # 360 distinct thumbnails, each 2000+ pixels wide: every one needs its own render of the 4000×3000 photo
    paths = [f"/p/100/thumbnail/entry_id/0_huge/width/{2001 + index % 180}"
             + (f"/version/{index // 180 + 1}" if index >= 180 else "") for index in range(360)]
    start = time.monotonic()

    async def one(session, path):
        async with session.get(client.make_url(path)) as response:
            body = await response.read()
            return response.status, response.headers, body, time.monotonic() - start

    async with unlimited_session() as session:
        answers = await asyncio.gather(*(one(session, path) for path in paths))
    total = time.monotonic() - start

    statuses = [status for status, _, _, _ in answers]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    ok = [answer for answer in answers if answer[0] == 200]
    busy = [answer for answer in answers if answer[0] == 503]
    assert ok and len(busy) >= 300, (len(ok), len(busy))
    for _, headers, body, _ in busy:
        assert headers["X-Kaltura"] == "error-46"
        assert headers["Retry-After"].isdigit() and int(headers["Retry-After"]) >= 1
        assert headers["Cache-Control"] == "no-store"
        assert b"server busy" in body
    for path, (_, _, body, _) in zip(paths, answers):
        if body[:2] == b"\xff\xd8":
            with Image.open(io.BytesIO(body)) as picture:
                picture.load()
                assert picture.width == int(path.split("/width/")[1].split("/")[0])
    first_busy = min(moment for _, _, _, moment in busy)
    last_ok = max(moment for _, _, _, moment in ok)
    at_the_door = [moment for _, _, body, moment in busy if b"jobs in progress" in body]
    assert len(at_the_door) >= 300
    # the first refusal long before the admitted renders are done; most refusals before the last render (a queue
    # would have made them wait behind ~360 renders of ~0.5 s each); the whole burst over in bounded time
    assert first_busy < 3.0 and first_busy < last_ok / 2, (first_busy, last_ok)
    median_refusal = sorted(at_the_door)[len(at_the_door) // 2]
    assert median_refusal < last_ok and median_refusal < 10, (median_refusal, last_ok)
    assert total < 60
    # and afterwards it answers normally, at once
    again = time.monotonic()
    response = await client.get("/p/100/thumbnail/entry_id/0_huge/width/300")
    assert response.status == 200
    with Image.open(io.BytesIO(await response.read())) as picture:
        assert picture.width == 300
    assert time.monotonic() - again < 5


async def test_a_job_queued_past_the_queue_timeout_is_dropped_with_503(serve, tmp_path, huge_photo):
    client = await serve(overload_config(tmp_path, huge_photo, "threads = 1\nqueue = 100\nqueue_timeout_seconds = 0.3"))
    assert (await client.get("/p/100/thumbnail/entry_id/0_huge/width/40")).status == 200
    paths = [f"/p/100/thumbnail/entry_id/0_huge/width/{2001 + index}" for index in range(16)]

    async def one(session, path):
        begun = time.monotonic()
        async with session.get(client.make_url(path)) as response:
            elapsed = time.monotonic() - begun  # until the answer started
            return response.status, response.headers, await response.read(), elapsed

    async with unlimited_session() as session:
        answers = await asyncio.gather(*(one(session, path) for path in paths))
    assert {status for status, _, _, _ in answers} <= {200, 503}
    dropped = [answer for answer in answers if answer[0] == 503]
    assert any(status == 200 for status, _, _, _ in answers)
    assert len(dropped) >= len(paths) // 2, [status for status, _, _, _ in answers]
    for _, headers, body, elapsed in dropped:
        assert b"no worker was free within 0.3 s" in body, body
        assert headers["X-Kaltura"] == "error-46" and headers["Retry-After"].isdigit()
        assert 0.3 <= elapsed < 0.3 + 1.5, elapsed  # dropped when its time was up, not after the renders
    response = await client.get("/p/100/thumbnail/entry_id/0_huge/width/64")
    assert response.status == 200


# --------------------------------------------------------------------------------------------------- shutdown


class SlowUpstream:
    """An HTTP origin (in its own thread) that trickles bodies: files[path] = (bytes, seconds, stall), answering
    Range requests (206) under a fixed ETag, as object stores do.

    A stalled body stops half way (of the file) until `stop()`: an upstream that hangs. `sending` is set when a
    body of a path starts flowing, `stalled` when a body stops half way.
    """

    def __init__(self, files: dict[str, tuple[bytes, float, bool]]) -> None:
        self.files = files
        self.released = asyncio.Event()  # set in the upstream's own loop (see stop)
        self.stalled = threading.Event()
        self.sending: dict[str, threading.Event] = {path: threading.Event() for path in files}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10), "the slow upstream did not start"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        self.loop.run_until_complete(self._runner.setup())
        self.loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        ready.set()
        self.loop.run_forever()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        found = self.files.get(path)
        if found is None:
            return web.Response(status=404)
        body, seconds, stall = found
        first, last = 0, len(body) - 1
        wanted = request.http_range
        status = 200
        if request.method == "GET" and (wanted.start is not None or wanted.stop is not None):
            first, last, status = wanted.start or 0, min((wanted.stop or len(body)) - 1, len(body) - 1), 206
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{len(body)}"'}
        if status == 206:
            headers["Content-Range"] = f"bytes {first}-{last}/{len(body)}"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = last - first + 1
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        self.sending[path].set()
        steps = 40 if seconds else 1
        step = -(-len(body) // steps)
        offset = first
        while offset <= last:
            end = min(offset + step, last + 1)
            await response.write(body[offset:end])
            if stall and end >= len(body) // 2:
                self.stalled.set()
                await self.released.wait()
                return response  # released: the upstream gives up mid-body
            offset = end
            if seconds:
                await asyncio.sleep(seconds / steps)
        await response.write_eof()
        return response

    def stop(self) -> None:
        async def close() -> None:
            self.released.set()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def manifest(original: str) -> tuple[bytes, float, bool]:
    return json.dumps({"original": original}).encode(), 0.0, False


@pytest.fixture
def slow_upstream(huge_photo):
    body = random.Random(11).randbytes(12 * MB)
    upstream = SlowUpstream({
        "100/0_slow/entry.json": manifest("original.bin"),
        "100/0_slow/original.bin": (body, 3.0, False),
        "100/0_stall/entry.json": manifest("original.bin"),
        "100/0_stall/original.bin": (random.Random(12).randbytes(8 * MB), 1.0, True),
        "100/0_huge/entry.json": manifest("original.jpg"),
        "100/0_huge/original.jpg": (huge_photo, 0.0, False),
    })
    upstream.slow_digest = hashlib.sha256(body).hexdigest()
    yield upstream
    upstream.stop()


def slow_server(tmp_path: Path, slow_upstream: SlowUpstream, workers: int = 1) -> Server:
    """A server on the slow upstream with one render thread (`async with` it)."""
    config_file = write_config(tmp_path, slow_upstream.url, "[processing]\nthreads = 1\n")
    return Server(config_file, tmp_path / "server.log", workers=workers)


async def wait_refused(port: int, timeout: float = 5) -> float:
    """When the port first refused a connection (polled from a thread: the test's loop keeps reading answers)."""
    await until(lambda: asyncio.to_thread(refused, port), timeout, interval=0.05,
                failure=f"port {port} still accepts connections {timeout} s after SIGTERM")
    return time.monotonic()


async def test_sigterm_finishes_requests_in_flight_then_exits(tmp_path, slow_upstream):
    cache = tmp_path / "cache"
    async with slow_server(tmp_path, slow_upstream) as server:
        async with unlimited_session() as session:
            raw = asyncio.create_task(get(session, server.url + "/p/100/raw/entry_id/0_slow"))
            thumbs = [asyncio.create_task(get(session, server.url + f"/p/100/thumbnail/entry_id/0_huge/width/{w}"))
                      for w in (2001, 3999)]
            started = await asyncio.to_thread(slow_upstream.sending["100/0_slow/original.bin"].wait, 10)
            assert started, "the slow original never started downloading"

            async def rendering() -> bool:  # both thumbnails have their original (fetched fast) and no result yet
                async with session.get(server.url + "/metrics") as response:
                    return metric(await response.text(), "mediaproxy_cache_lookups_total", tier="memory",
                                  outcome="miss") >= 2

            await until(rendering, 10, interval=0.01)
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            closed = await wait_refused(server.port)
            assert closed - signalled < 3
            assert not raw.done(), "the door closed only after the request in flight was answered"
            status, _, body = await raw
            thumb_answers = await asyncio.gather(*thumbs)
        assert status == 200 and hashlib.sha256(body).hexdigest() == slow_upstream.slow_digest, (status, len(body))
        for (status, _, picture_bytes), width in zip(thumb_answers, (2001, 3999)):
            assert status == 200, picture_bytes[:200]
            with Image.open(io.BytesIO(picture_bytes)) as picture:
                picture.load()
                assert picture.width == width
        assert await server.exited(20) == 0, server.output()
        assert time.monotonic() - signalled < 20
        assert not part_files(cache), part_files(cache)
        counts = check_cache(cache)
        huge = slow_upstream.files["100/0_huge/original.jpg"][0]
        assert counts["originals"] == blocks_of(12 * MB) + blocks_of(len(huge))
        assert counts["results"] == 2  # results written behind were flushed at exit
        assert "Traceback" not in server.output()


async def test_sigterm_with_a_hung_upstream_exits_in_bounded_time_and_removes_tmp_files(tmp_path, slow_upstream):
    cache = tmp_path / "cache"
    async with slow_server(tmp_path, slow_upstream) as server:
        async with unlimited_session() as session:
            hung = asyncio.create_task(get(session, server.url + "/p/100/raw/entry_id/0_stall"))
            assert await asyncio.to_thread(slow_upstream.stalled.wait, 10), "the hung original never started"
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            await wait_refused(server.port)
            code = await server.exited(30)
            exited = time.monotonic() - signalled
            answer = await asyncio.gather(hung, return_exceptions=True)
        assert code == 0, server.output()
        # aiohttp waits shutdown_seconds (5 s by default, as here) for the handler, then as long again after
        # "cancelling" it (which only fails its request body): about 10 s in all, then the last tasks are cancelled
        # and clean up
        assert exited < 30
        if not isinstance(answer[0], BaseException):  # an error answer is fine, a short 200 never
            assert answer[0][0] != 200, "a partial original was served"
        assert not part_files(cache), f"tmp files left behind: {part_files(cache)}"
        assert check_cache(cache)["originals"] == 0  # nothing of the hung original counts as cached


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def workers(pid: int) -> list[int]:
    """The worker processes below a supervisor (multiprocessing's resource tracker is no worker)."""
    return [child for child in descendants(pid) if b"spawn_main" in _cmdline(child)]


@pytest.fixture
def family():
    """The processes a test's server started, as the test records them: any still alive at the end are killed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie holds no port
    except (OSError, IndexError):
        return False


async def test_sigterm_to_the_supervisor_stops_every_worker_after_their_requests(tmp_path, slow_upstream, family):
    cache = tmp_path / "cache"
    async with slow_server(tmp_path, slow_upstream, workers=2) as server:
        assert len(workers(server.pid)) == 2, workers(server.pid)  # both answered already
        async with unlimited_session() as session:
            raw = asyncio.create_task(get(session, server.url + "/p/100/raw/entry_id/0_slow"))
            started = await asyncio.to_thread(slow_upstream.sending["100/0_slow/original.bin"].wait, 10)
            assert started, "the slow original never started downloading"
            family.extend(descendants(server.pid))
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            await wait_refused(server.port, timeout=10)
            status, _, body = await raw
        assert status == 200 and hashlib.sha256(body).hexdigest() == slow_upstream.slow_digest, (status, len(body))
        assert await server.exited(20) == 0, server.output()
        assert time.monotonic() - signalled < 20
        await until(lambda: not any(alive(pid) for pid in family), 5, interval=0.1,
                    failure="processes outlived the supervisor")
        assert refused(server.port), "something still holds the port"
        assert not part_files(cache)
        assert "Traceback" not in server.output()


async def test_sigterm_to_the_supervisor_with_a_hung_upstream_leaves_no_tmp_files(tmp_path, slow_upstream):
    cache = tmp_path / "cache"
    async with slow_server(tmp_path, slow_upstream, workers=2) as server:
        async with unlimited_session() as session:
            hung = asyncio.create_task(get(session, server.url + "/p/100/raw/entry_id/0_stall"))
            assert await asyncio.to_thread(slow_upstream.stalled.wait, 10), "the hung original never started"
            server.process.send_signal(signal.SIGTERM)
            code = await server.exited(40)
            await asyncio.gather(hung, return_exceptions=True)
        assert code == 0, server.output()
        assert not part_files(cache), f"tmp files left behind: {part_files(cache)}"


async def test_sigterm_after_clips_leaves_no_process_of_the_group(tmp_path, family):
    """Clips (by index, and remuxed into another container) are cut inside the workers: after SIGTERM the
    supervisor and every process it started are gone within shutdown_seconds and a margin."""
    make_config(tmp_path, extra="[server]\nshutdown_seconds = 2\n")
    async with Server(tmp_path / "config.toml", tmp_path / "server.log", workers=2) as server:
        async with unlimited_session() as session:
            paths = [f"/p/100/flvclipper/entry_id/0_video/clip_from/{start}/clip_to/{start + 2000}{suffix}"
                     for start in (0, 1000, 2000, 3000) for suffix in ("", "/a.flv")]
            answers = await asyncio.gather(*(get(session, server.url + path) for path in paths * 2))
        assert all(status == 200 and body for status, _, body in answers)
        family.extend(descendants(server.pid))
        server.process.send_signal(signal.SIGTERM)
        assert await server.exited(2 * 3 + 10) == 0, server.output()
        await until(lambda: not any(alive(pid) for pid in family), 5, interval=0.1,
                    failure="processes outlived the supervisor")
        assert "Traceback" not in server.output()
