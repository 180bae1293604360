"""The `clips` scenario (issue 11): flvclipper beside nginx's mp4 module (`?start=&end=`) on one ~300 MB 720p MP4
(a local origin for both: nginx's root is mediaproxy's origin folder), in the same run.

Rows: time to first byte and total time of a 10 s clip, a 300 s clip and a clip from 10 min to the end (each
round a new window, so mediaproxy builds a new clip index every time, as nginx does on every request); clips/s of
4–8 s clips anywhere in the file; and how much the disk cache grows over 10 long clips.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import aiohttp

from .harness import CORES, Mediaproxy, Nginx, wait_for, wrk_lua
from .media import long_video

Row = tuple[str, str, str, str, str]
ENTRY = "0_clips"
NGINX_MP4 = "location ~ \\.mp4$ { mp4; mp4_buffer_size 1m; mp4_max_buffer_size 32m; }"


def clips(workdir: Path, seconds: float) -> list[Row]:
    origin = workdir / "origin"
    video = origin / "100" / ENTRY / "original.mp4"
    video.parent.mkdir(parents=True)
    size = long_video(video, minutes=55, faststart=True)
    duration = 55 * 60
    rows: list[Row] = []
    with Mediaproxy(workdir / "mediaproxy", origin) as server, Nginx(workdir / "nginx", origin,
                                                                     server_extra=NGINX_MP4) as nginx:
        wait_for(f"{server.url}/healthz")
        wait_for(f"{nginx.url}/100/{ENTRY}/original.mp4?start=1&end=2")
        ours = f"{server.url}/p/100/sp/10000/flvclipper/entry_id/{ENTRY}"
        theirs = f"{nginx.url}/100/{ENTRY}/original.mp4"
        asyncio.run(_timed(f"{ours}/clip_from/1000/clip_to/2000"))  # the index is read once per original

        for name, start, length in (("10 s", 600, 10), ("300 s", 600, 300), ("10 min to the end", 600, None)):
            mine, nginx_times = [], []
            for round_ in range(5):  # a new window every round (2 s keyframe interval)
                begin = start + 2 * round_
                end = None if length is None else begin + length
                mine.append(asyncio.run(_timed(f"{ours}/clip_from/{begin * 1000}" +
                                               ("" if end is None else f"/clip_to/{end * 1000}"))))
                nginx_times.append(asyncio.run(_timed(f"{theirs}?start={begin}" +
                                                      ("" if end is None else f"&end={end}"))))
            first, total = _medians(mine)
            nginx_first, nginx_total = _medians(nginx_times)
            rows.append((f"clip of {name} (by index), time to first byte (ms)", f"{first * 1000:.1f}",
                         f"{nginx_first * 1000:.1f} (nginx mp4 module)", f"{first / nginx_first:.2f}×", "≤ 50 ms"))
            rows.append((f"  … total (ms, {_size_of(mine) / 1e6:.0f} MB)", f"{total * 1000:.0f}",
                         f"{nginx_total * 1000:.0f}", f"{total / nginx_total:.2f}×", "≤ 2×"))

        span = duration - 20
        ours_per_second = wrk_lua(server.url, f"""
          local start = (counter * 37) % {span}
          return wrk.format("GET", "/p/100/sp/10000/flvclipper/entry_id/{ENTRY}/clip_from/" .. start * 1000
            .. "/clip_to/" .. (start + 4 + counter % 5) * 1000 .. "/a.mp4")""",
                                  seconds=seconds, connections=2 * CORES).requests_per_second
        nginx_per_second = wrk_lua(nginx.url, f"""
          local start = (counter * 37) % {span}
          return wrk.format("GET", "/100/{ENTRY}/original.mp4?start=" .. start .. "&end=" .. (start + 4 + counter % 5))""",
                                   seconds=seconds, connections=2 * CORES).requests_per_second
        rows.append(("clips/s, 4–8 s anywhere in a 55 min 720p MP4 (by index)", f"{ours_per_second:.0f}",
                     f"{nginx_per_second:.0f} (nginx mp4 module)", f"{ours_per_second / nginx_per_second:.2f}×",
                     "≥ 0.5×"))

        before = _cache_bytes(workdir / "mediaproxy" / "cache")
        for index in range(10):
            asyncio.run(_timed(f"{ours}/clip_from/{(100 + 200 * index) * 1000}/clip_to/{(400 + 200 * index) * 1000}"))
        grown = _cache_bytes(workdir / "mediaproxy" / "cache") - before
        rows.append(("disk cache growth over 10 clips of 300 s", f"{grown / 1e6:.1f} MB",
                     f"{size / 1e6:.0f} MB (the file)", "", "≤ 20 MB"))
    return rows


async def _timed(url: str) -> tuple[float, float, int]:
    """(seconds to the first body byte, seconds to the last, bytes) of one GET."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        started = time.perf_counter()
        async with session.get(url) as response:
            if response.status != 200:
                raise RuntimeError(f"{url}: {response.status} {await response.text()}")
            received = len(await response.content.readany())
            first = time.perf_counter() - started
            async for chunk in response.content.iter_chunked(1 << 20):
                received += len(chunk)
        return first, time.perf_counter() - started, received


def _medians(timings: list[tuple[float, float, int]]) -> tuple[float, float]:
    return statistics.median(t[0] for t in timings), statistics.median(t[1] for t in timings)


def _size_of(timings: list[tuple[float, float, int]]) -> int:
    return int(statistics.median(t[2] for t in timings))


def _cache_bytes(cache: Path) -> int:
    return sum(path.stat().st_size for path in cache.rglob("*") if path.is_file())
