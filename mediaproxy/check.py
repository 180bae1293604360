"""`mediaproxy check PAGE.html|URL|-`: every Kaltura-style media link of a page, or of a list of URLs, asked of a
mediaproxy whatever host the link names (SPEC §9); a table (or JSON), exit status 1 when any link fails.

Links are found with the standard library's HTML parser (`img src`/`srcset`, `video poster`/`src`, `audio src`,
`source src`/`srcset`, `a href`); each is asked with HEAD, then GET when the answer is an error (its one-line body
says why). Requests run concurrently, a bounded number at a time.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from yarl import URL

from . import urls
from .errors import BadRequest, MediaProxyError, NotFound
from .explain import describe, split_link

# where links are, per element (SPEC §9)
LINK_ATTRIBUTES = {
    "img": ("src", "srcset"),
    "video": ("poster", "src"),
    "audio": ("src",),
    "source": ("src", "srcset"),
    "a": ("href",),
}
MAX_PAGE_BYTES = 20_000_000
MAX_REASON_BYTES = 2048
_LOOKS_LIKE_HTML = re.compile(r"<\s*[A-Za-z!/]")


@dataclass(frozen=True, slots=True)
class Link:
    url: str  # as the page holds it (joined to the page's URL when that is known)
    found_in: str  # `img srcset`, `a href`, `line 3`


@dataclass(frozen=True, slots=True)
class Result:
    link: Link
    target: str  # the path and query asked of the mediaproxy
    what: str  # what the link asks for, in words
    status: int | None  # None: no answer at all
    content_type: str | None
    size: int | None
    seconds: float
    why: str | None  # the failure in words

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status < 400


class _LinkParser(HTMLParser):
    def __init__(self, page_url: str | None) -> None:
        super().__init__(convert_charrefs=True)
        self.page_url = page_url
        self.links: list[Link] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = LINK_ATTRIBUTES.get(tag, ())
        for name, value in attrs:
            if name not in wanted or not value:
                continue
            found = srcset_urls(value) if name == "srcset" else [value.strip()]
            self.links += [Link(self._absolute(url), f"{tag} {name}") for url in found if url]

    handle_startendtag = handle_starttag

    def _absolute(self, url: str) -> str:
        return urljoin(self.page_url, url) if self.page_url else url


def srcset_urls(srcset: str) -> list[str]:
    """The URLs of a `srcset` (HTML's candidate list: `url 320w, url 2x`; a URL may hold commas)."""
    found, position = [], 0
    while position < len(srcset):
        while position < len(srcset) and (srcset[position].isspace() or srcset[position] == ","):
            position += 1
        start = position
        while position < len(srcset) and not srcset[position].isspace():
            position += 1
        url = srcset[start:position]
        if url.endswith(","):
            url = url.rstrip(",")
        else:  # skip the descriptors, up to the comma that ends the candidate (not one inside parentheses)
            depth = 0
            while position < len(srcset) and (srcset[position] != "," or depth):
                depth += {"(": 1, ")": -1}.get(srcset[position], 0)
                position += 1
        if url:
            found.append(url)
    return found


def find_links(text: str, page_url: str | None = None) -> tuple[list[Link], int]:
    """The media links of an HTML page or a list of URLs (one a line), each once, in order; and how many other
    links were skipped."""
    if _LOOKS_LIKE_HTML.search(text):
        parser = _LinkParser(page_url)
        parser.feed(text)
        parser.close()
        candidates = parser.links
    else:
        candidates = [Link(line.strip(), f"line {number}") for number, line in enumerate(text.splitlines(), 1)
                      if line.strip() and not line.lstrip().startswith("#")]
    media, seen, skipped = [], set(), 0
    for link in candidates:
        if link.url in seen:
            continue
        seen.add(link.url)
        if is_media_link(link.url):
            media.append(link)
        else:
            skipped += 1
    return media, skipped


def is_media_link(url: str) -> bool:
    """Whether a URL's path names a service of the grammar (its parameters may still be malformed)."""
    if url.startswith(("data:", "mailto:", "javascript:", "#")):
        return False
    try:
        urls.route(split_link(url)[1], 0)
    except NotFound:
        return False
    except BadRequest:  # a partner id that is no integer: a media link, and a broken one
        return True
    return True


async def check_links(links: list[Link], base: str, *, concurrency: int = 8, timeout: float = 60.0,
                      on_result=None) -> list[Result]:
    """Ask `base` for every link (HEAD, then GET for an error's reason), `concurrency` at a time, in order."""
    gate = asyncio.Semaphore(max(1, concurrency))
    connector = aiohttp.TCPConnector(limit=max(1, concurrency))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout),
                                     auto_decompress=False) as session:
        async def one(link: Link) -> Result:
            async with gate:
                result = await _check(session, base, link)
            if on_result is not None:
                on_result(result)
            return result

        return await asyncio.gather(*(one(link) for link in links))


async def _check(session: aiohttp.ClientSession, base: str, link: Link) -> Result:
    target = split_link(link.url)[1]
    try:
        what = describe(urls.parse(target, 0))
    except MediaProxyError:
        try:
            what = f"{urls.route(target, 0).service}, malformed"
        except MediaProxyError:
            what = "malformed"
    url = URL(base.rstrip("/") + target, encoded=True)
    started = time.perf_counter()
    status = content_type = size = why = None
    try:
        async with session.head(url, allow_redirects=False) as response:
            status, headers = response.status, response.headers
        if status >= 400 or status in (405, 501):
            async with session.get(url, allow_redirects=False) as response:
                status, headers = response.status, response.headers
                if status >= 400:
                    body = await response.content.read(MAX_REASON_BYTES)
                    why = body.decode("utf-8", "replace").strip().splitlines()[0] if body.strip() else None
                    why = why or headers.get("X-Kaltura-App") or response.reason
        content_type = headers.get("Content-Type")
        length = headers.get("Content-Length")
        size = int(length) if length and length.isdigit() else None
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
        status, why = None, _connection_problem(error, base)
    return Result(link=link, target=target, what=what, status=status, content_type=content_type, size=size,
                  seconds=time.perf_counter() - started, why=why)


def _connection_problem(error: Exception, base: str) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return "no answer in time"
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"cannot connect to {base}"
    return f"{type(error).__name__}: {error}".strip().rstrip(":")


# ----------------------------------------------------------------------------------------------------------- output


def table(results: list[Result]) -> Table:
    view = Table(show_edge=False, pad_edge=False, header_style="bold")
    view.add_column("link (path and query)", overflow="fold", min_width=40)
    view.add_column("status", justify="right", no_wrap=True)
    view.add_column("what", overflow="fold")
    view.add_column("type", no_wrap=True)
    view.add_column("size", justify="right", no_wrap=True)
    view.add_column("time", justify="right", no_wrap=True)
    view.add_column("why it failed", overflow="fold")
    for result in results:
        status = "-" if result.status is None else str(result.status)
        view.add_row(Text(urls.redact_ks(result.target)), Text(status, style="green" if result.ok else "red"),
                     Text(result.what), (result.content_type or "").split(";")[0] if result.ok else "",
                     _size(result.size) if result.ok else "",
                     f"{result.seconds * 1000:.0f} ms", Text(result.why or ""))
    return view


def summary(results: list[Result], seconds: float, skipped: int) -> str:
    failed = [result for result in results if not result.ok]
    statuses: dict[str, int] = {}
    for result in failed:
        key = "no answer" if result.status is None else str(result.status)
        statuses[key] = statuses.get(key, 0) + 1
    words = f"{len(results)} links checked in {seconds:.1f} s: {len(results) - len(failed)} ok, {len(failed)} failed"
    if statuses:
        words += " (" + ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items())) + ")"
    if skipped:
        words += f"; {skipped} other link{'s' if skipped != 1 else ''} skipped"
    return words


def report_json(results: list[Result], seconds: float, skipped: int, base: str) -> dict:
    return {
        "base": base, "seconds": round(seconds, 3), "checked": len(results),
        "ok": sum(result.ok for result in results), "failed": sum(not result.ok for result in results),
        "skipped": skipped,
        "links": [{"link": urls.redact_link(result.link.url), "found_in": result.link.found_in,
                   "target": urls.redact_ks(result.target), "what": result.what, "status": result.status,
                   "ok": result.ok, "content_type": result.content_type, "bytes": result.size,
                   "ms": round(result.seconds * 1000, 1), "why": result.why} for result in results],
    }


def _size(size: int | None) -> str:
    if size is None:
        return ""
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


# ----------------------------------------------------------------------------------------------------------- command


async def read_source(source: str, timeout: float) -> tuple[str, str | None]:
    """(text, the page's URL when it came from the network) of a file, `-` (stdin) or the URL of a page."""
    if source == "-":
        return sys.stdin.read(), None
    if re.match(r"https?://", source):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.get(source) as response:
                response.raise_for_status()
                body = await response.content.read(MAX_PAGE_BYTES)
                return body.decode(response.get_encoding() if response.charset else "utf-8", "replace"), str(
                    response.url)
    return Path(source).read_text(encoding="utf-8", errors="replace"), None


def main(source: str, *, base: str, concurrency: int = 8, timeout: float = 60.0, json_output: bool = False) -> int:
    return asyncio.run(_main(source, base, concurrency, timeout, json_output))


async def _main(source: str, base: str, concurrency: int, timeout: float, json_output: bool) -> int:
    errors = Console(stderr=True)
    if re.match(r"https?://", source) and is_media_link(source):
        links, skipped = [Link(source, "argument")], 0  # the link itself, not a page to read
    else:
        try:
            text, page_url = await read_source(source, timeout)
        except (OSError, aiohttp.ClientError, asyncio.TimeoutError) as error:
            errors.print(f"mediaproxy check: cannot read {source}: {error or type(error).__name__}", markup=False,
                         highlight=False)
            return 2
        links, skipped = find_links(text, page_url)
    if not links:
        errors.print(f"mediaproxy check: no Kaltura-style media links in {source}"
                     + (f" ({skipped} other links)" if skipped else ""), markup=False, highlight=False)
        return 2
    started = time.perf_counter()
    with Progress(TextColumn("checking"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]}"),
                  TimeElapsedColumn(), console=errors, transient=True) as progress:
        task = progress.add_task("links", total=len(links), failed="")
        failures = 0

        def on_result(result: Result) -> None:
            nonlocal failures
            failures += not result.ok
            progress.update(task, advance=1, failed=f"[red]{failures} failed[/]" if failures else "")

        results = await check_links(links, base, concurrency=concurrency, timeout=timeout, on_result=on_result)
    seconds = time.perf_counter() - started
    if json_output:
        print(json.dumps(report_json(results, seconds, skipped, base), indent=2))
    else:
        if sys.stdout.isatty():
            out = Console(highlight=False)
            out.print(table(results))
        else:  # to a file or a pipe: one line a row, no padding at the ends of lines
            out = Console(width=1000, highlight=False, no_color=True)
            with out.capture() as captured:
                out.print(table(results))
            sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
        print(summary(results, seconds, skipped))
    return 0 if all(result.ok for result in results) else 1
