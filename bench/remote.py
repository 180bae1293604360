"""The `remote` scenario (issue 10): a ~300 MB 720p MP4 behind nginx on a 50 MB/s link (`limit_rate 50m`, what an
object store gives one connection), mediaproxy on an http origin with a cold cache for every row.

Each row counts the bytes nginx sent (its access log) against what the row needed, and times the first byte of
a raw answer against fetching the whole file at that rate.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from .harness import CORES, Mediaproxy, Nginx, wait_for
from .media import long_video

Row = tuple[str, str, str, str, str]
ENTRY = "0_remote"
MB = 1_000_000


def remote(workdir: Path, seconds: float) -> list[Row]:
    origin = workdir / "upstream"
    video = origin / "100" / ENTRY / "original.mp4"
    video.parent.mkdir(parents=True)
    size = long_video(video, minutes=55)  # moov at the end, as an encoder writes it
    rows: list[Row] = []
    with Nginx(workdir / "nginx", origin, server_extra="limit_rate 50m;", log=True) as nginx:  # listening
        whole_seconds = _fetch_seconds(f"{nginx.url}/100/{ENTRY}/original.mp4", first_byte=False)
        runs = iter(range(100))

        def cold() -> Mediaproxy:  # a fresh cache for every row
            return Mediaproxy(workdir / f"mediaproxy-{next(runs)}", origin=f'kind = "http"\nurl = "{nginx.url}"',
                              workers=CORES)

        grab = f"/p/100/sp/10000/thumbnail/entry_id/{ENTRY}/width/320/vid_sec/300"
        with cold() as server:
            wait_for(f"{server.url}/healthz")
            sent = _upstream(nginx, lambda: _fetch_seconds(server.url + grab))
        rows.append(("remote: cold frame grab at 5 min, bytes from upstream", f"{sent / MB:.1f} MB",
                     f"{size / MB:.0f} MB (the file)", f"{sent / size:.1%}", "≤ 3%"))

        raw = f"/p/100/sp/10000/raw/entry_id/{ENTRY}"
        with cold() as server:
            wait_for(f"{server.url}/healthz")
            first_byte = _fetch_seconds(server.url + raw, first_byte=True)
        rows.append(("remote: cold raw, time to first byte (s)", f"{first_byte:.2f}",
                     f"{whole_seconds:.2f} (the whole file from nginx at 50 MB/s)", f"{first_byte / whole_seconds:.3f}×",
                     "≤ 1 s"))

        with cold() as server:
            wait_for(f"{server.url}/healthz")
            start = 200 * MB
            sent = _upstream(nginx, lambda: _fetch_seconds(server.url + raw,
                                                             headers={"Range": f"bytes={start}-{start + MB - 1}"}))
        rows.append(("remote: cold 1 MB Range at 200 MB, bytes from upstream", f"{sent / MB:.1f} MB", "1 MB asked",
                     f"{sent / MB:.1f}×", "≤ 8 MB"))

        with cold() as server:
            wait_for(f"{server.url}/healthz")
            grabs = [f"/p/100/sp/10000/thumbnail/entry_id/{ENTRY}/width/320/vid_sec/{second}"
                     for second in (60, 600, 1500, 2700)]
            sent = _upstream(nginx, lambda: asyncio.run(_all(server.url, grabs)))
        rows.append((f"remote: 4 concurrent cold grabs at 4 times, {CORES} workers, bytes from upstream",
                     f"{sent / MB:.1f} MB", f"{size / MB:.0f} MB (the file)", f"{sent / size:.1%}", "≤ 6%"))
    return rows


def _upstream(nginx: Nginx, work) -> int:
    """Bytes nginx sent while `work` ran (its log is written as each request ends: wait for the lines)."""
    before = nginx.sent()
    work()
    sent, deadline = nginx.sent(), time.monotonic() + 5
    while time.monotonic() < deadline:  # nginx logs a request when it ends, just after its answer went out
        time.sleep(0.2)
        if nginx.sent() == sent:
            break
        sent = nginx.sent()
    return sent - before


def _fetch_seconds(url: str, *, first_byte: bool = False, headers: dict[str, str] | None = None) -> float:
    return asyncio.run(_fetch(url, first_byte, headers or {}))


async def _fetch(url: str, first_byte: bool, headers: dict[str, str]) -> float:
    timeout = aiohttp.ClientTimeout(total=600)
    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url, headers=headers) as response:
        if response.status >= 400:
            raise RuntimeError(f"{url}: {response.status} {await response.text()}")
        if first_byte:
            await response.content.readany()
            return time.perf_counter() - started
        async for _ in response.content.iter_chunked(1 << 20):
            pass
    return time.perf_counter() - started


async def _all(base: str, paths: list[str]) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        async def one(path: str) -> None:
            async with session.get(base + path) as response:
                if response.status != 200:
                    raise RuntimeError(f"{path}: {response.status} {await response.text()}")
                await response.read()
        await asyncio.gather(*(one(path) for path in paths))
