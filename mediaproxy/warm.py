"""`mediaproxy warm`: fetch a list of URLs (before a launch, so the caches hold them), with progress and a summary."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

import aiohttp

CHUNK_BYTES = 256 * 1024  # a response is counted as it streams by, never held whole (a raw original may be GBs)


@dataclass
class Summary:
    statuses: Counter = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (url, why)
    bytes: int = 0
    seconds: float = 0.0

    @property
    def done(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> bool:
        return not self.failures


def targets(lines: Iterable[str], base: str) -> list[str]:
    """Full URLs, or paths joined to `base`; blank lines and # comments skipped."""
    urls = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        urls.append(line if line.startswith(("http://", "https://")) else base.rstrip("/") + "/" + line.lstrip("/"))
    return urls


async def warm(urls: list[str], *, concurrency: int = 8, timeout: float = 120.0,
               progress: TextIO | None = sys.stderr) -> Summary:
    """GET every URL, `concurrency` at a time. `timeout` bounds connecting and each wait for bytes, not a whole
    transfer: a large original that keeps flowing is warmed however long it takes."""
    summary = Summary()
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    started = time.monotonic()

    async def fetch(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            url = queue.get_nowait()
            try:
                async with session.get(url) as response:
                    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                        summary.bytes += len(chunk)
                    summary.statuses[response.status] += 1
                    if response.status >= 400:
                        summary.failures.append((url, f"{response.status} {response.headers.get('X-Kaltura-App', '')}"
                                                 .strip()))
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
                summary.statuses["error"] += 1
                summary.failures.append((url, type(error).__name__))
            if progress is not None:
                _show(progress, summary, len(urls), time.monotonic() - started)

    limits = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
    async with aiohttp.ClientSession(timeout=limits) as session:
        await asyncio.gather(*(fetch(session) for _ in range(max(1, concurrency))))
    summary.seconds = time.monotonic() - started
    if progress is not None:
        progress.write("\n")
    return summary


def _show(out: TextIO, summary: Summary, total: int, elapsed: float) -> None:
    width = 30
    filled = width * summary.done // max(total, 1)
    rate = summary.done / elapsed if elapsed > 0 else 0.0
    out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {summary.done}/{total} "
              f"failed {len(summary.failures)}  {rate:.1f}/s")
    out.flush()


def report(summary: Summary) -> str:
    statuses = ", ".join(f"{status}: {count}" for status, count in sorted(summary.statuses.items(), key=str))
    lines = [f"warmed {summary.done} URLs in {summary.seconds:.1f} s ({summary.bytes / 1e6:.1f} MB): {statuses}"]
    lines += [f"  failed: {url}  ({why})" for url, why in summary.failures[:20]]
    if len(summary.failures) > 20:
        lines.append(f"  ... and {len(summary.failures) - 20} more")
    return "\n".join(lines)
