"""`mediaproxy check` (SPEC §9): a generated page with good, broken (404 entry, bad parameter), KS-protected and clip
links, checked by the real command against a real server on loopback, judged by exit status and table content."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import sys
import time

import pytest
from aiohttp import web

from mediaproxy.access import make_ks
from mediaproxy.app import make_app
from mediaproxy.check import find_links, srcset_urls

from .conftest import REPO, free_port, make_config

SECRET_200 = "check-test-secret"
POLICY = f'[partners.200]\nadmin_secrets = ["{SECRET_200}"]\nks_required_for = ["raw"]\n'
KS = make_ks(200, SECRET_200, privileges="download:*")
CDN = "https://cdnapisec.kaltura.com/p/100/sp/10000"

# (link, as the page holds it; status mediaproxy answers; words that must be in the row)
LINKS = {
    "thumbnail": (f"{CDN}/thumbnail/entry_id/0_photo/width/120/height/90/type/3", 200, ["thumbnail 120×90 type 3 jpg",
                                                                                       "image/jpeg"]),
    "srcset 1x": (f"{CDN}/thumbnail/entry_id/0_photo/width/64", 200, ["thumbnail 64 wide jpg"]),
    "srcset 2x": (f"{CDN}/thumbnail/entry_id/0_photo/width/128", 200, ["thumbnail 128 wide jpg"]),
    "poster": ("https://cdn.example.com/p/100/thumbnail/entry_id/0_video/width/80/vid_sec/2", 200,
               ["thumbnail 80 wide at 2 s jpg"]),
    "clip": (f"{CDN}/flvclipper/entry_id/0_video/clip_from/1000/clip_to/3000/a.mp4", 200,
             ["clip 1 s to 3 s (mp4)", "video/mp4"]),
    "raw": ("/p/100/raw/entry_id/0_webp", 200, ["raw original", "image/webp"]),
    "missing entry": (f"{CDN}/thumbnail/entry_id/0_gone/width/120", 404, ["no entry 0_gone for partner 100"]),
    "bad parameter": (f"{CDN}/thumbnail/entry_id/0_photo/width/12px", 400,
                      ["thumbnail, malformed", "width: '12px' is not an integer"]),
    "ks": (f"https://cdn.example.com/p/200/sp/20000/raw/entry_id/0_private?ks={KS}", 200, ["raw original"]),
    "no ks": ("https://cdn.example.com/p/200/sp/20000/raw/entry_id/0_private", 403,
              ["access denied: partner 200 requires a KS for raw"]),
}

PAGE = f"""<!doctype html>
<html><head><title>a page with media links</title><link rel="stylesheet" href="/site.css"></head>
<body>
  <img src="{LINKS["thumbnail"][0]}" alt="">
  <img srcset="{LINKS["srcset 1x"][0]} 1x, {LINKS["srcset 2x"][0]} 2x" alt="">
  <video poster="{LINKS["poster"][0]}"><source src="{LINKS["clip"][0]}" type="video/mp4"></video>
  <img src="{LINKS["thumbnail"][0]}" alt="the same link again">
  <a href="{LINKS["raw"][0]}">download</a>
  <img src="{LINKS["missing entry"][0]}" alt="">
  <img src="{LINKS["bad parameter"][0]}" alt="">
  <a href="{LINKS["ks"][0].replace("&", "&amp;")}">private</a>
  <a href="{LINKS["no ks"][0]}">private, without its KS</a>
  <a href="/about.html">about</a> <a href="mailto:x@example.com">mail</a> <img src="/logo.png" alt="">
</body></html>
"""


@pytest.fixture
async def base(aiohttp_server, tmp_path) -> str:
    server = await aiohttp_server(make_app(make_config(tmp_path, extra=POLICY)))
    return str(server.make_url("")).rstrip("/")


async def run_check(*args: str, stdin: bytes | None = None, tty: bool = False) -> tuple[int, str, str]:
    """The real command, in a subprocess (the server keeps answering on this loop meanwhile)."""
    env = {**os.environ, "NO_COLOR": "1"}
    stderr = asyncio.subprocess.PIPE
    if tty:  # a terminal for the progress bar
        leader, follower = pty.openpty()
        stderr = follower
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mediaproxy", "check", *args, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=stderr, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL)
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout=120)
    if tty:
        os.close(follower)
        err = _read_all(leader)
    return process.returncode, out.decode(), err.decode(errors="replace")


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the follower closed: end of the output
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def rows(table: str) -> dict[str, list[str]]:
    """The table's rows by their first cell (the link's path and query)."""
    found = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.replace("┃", "│").split("│")]
        if len(cells) == 7 and cells[0].startswith("/"):
            found[cells[0]] = cells[1:]
    return found


def path_of(link: str) -> str:
    return "/" + link.split("//", 1)[1].split("/", 1)[1] if "//" in link else link


async def test_check_a_page_by_exit_status_and_table(base, tmp_path):
    page = tmp_path / "page.html"
    page.write_text(PAGE)
    status, out, err = await run_check(str(page), "--base", base)
    assert status == 1, (out, err)
    table = rows(out)
    assert len(table) == len(LINKS), out  # each link once; the other links (css, about, mailto, logo) skipped
    for name, (link, expected, words) in LINKS.items():
        row = table[path_of(link).replace(KS, "[redacted]")]
        assert row[0] == str(expected), (name, row)
        assert all(any(word in cell for cell in row) for word in words), (name, row, words)
        if expected == 200:
            assert row[5] == "" and row[3].endswith(("B", "KB")), (name, row)
    assert KS not in out and KS not in err
    assert out.splitlines()[-1].startswith("10 links checked in ")
    assert out.splitlines()[-1].endswith(": 7 ok, 3 failed (400: 1, 403: 1, 404: 1); 3 other links skipped")


async def test_check_json_says_the_same(base, tmp_path):
    page = tmp_path / "page.html"
    page.write_text(PAGE)
    status, out, _ = await run_check(str(page), "--base", base, "--json")
    assert status == 1
    report = json.loads(out)
    assert (report["checked"], report["ok"], report["failed"], report["skipped"]) == (10, 7, 3, 3)
    by_link = {entry["link"]: entry for entry in report["links"]}
    for name, (link, expected, _) in LINKS.items():
        entry = by_link[link.replace(KS, "[redacted]")]
        assert entry["status"] == expected and entry["ok"] is (expected < 400), (name, entry)
    assert by_link[LINKS["srcset 2x"][0]]["found_in"] == "img srcset"
    assert by_link[LINKS["clip"][0]]["found_in"] == "source src"
    assert by_link[LINKS["poster"][0]]["found_in"] == "video poster"
    assert by_link[LINKS["missing entry"][0]]["why"] == "no entry 0_gone for partner 100"
    assert by_link[LINKS["clip"][0]]["content_type"] == "video/mp4" and by_link[LINKS["clip"][0]]["bytes"] > 1000
    assert KS not in out


async def test_check_a_good_list_from_stdin_exits_0(base):
    good = [link for link, expected, _ in LINKS.values() if expected == 200]
    listing = "# links to check\n" + "\n".join(good) + "\n\n"
    status, out, _ = await run_check("-", "--base", base, stdin=listing.encode())
    assert status == 0, out
    assert len(rows(out)) == len(good)
    assert out.splitlines()[-1].endswith(f": {len(good)} ok, 0 failed")


async def test_check_the_url_of_a_page_and_a_single_link(aiohttp_server, base):
    async def page(request: web.Request) -> web.Response:
        return web.Response(text='<img src="/p/100/thumbnail/entry_id/0_photo/width/50">'
                                 '<img src="thumbnail/entry_id/0_alpha/width/40">', content_type="text/html")

    app = web.Application()
    app.router.add_get("/p/100/page.html", page)
    site = await aiohttp_server(app)
    status, out, _ = await run_check(str(site.make_url("/p/100/page.html")), "--base", base)
    assert status == 0, out  # relative links are joined to the page's URL, then asked of --base
    assert set(rows(out)) == {"/p/100/thumbnail/entry_id/0_photo/width/50",
                              "/p/100/thumbnail/entry_id/0_alpha/width/40"}

    status, out, _ = await run_check(LINKS["missing entry"][0], "--base", base)  # a media link is checked itself
    assert status == 1 and rows(out)[path_of(LINKS["missing entry"][0])][0] == "404"


async def test_check_without_a_server_or_without_links(tmp_path):
    page = tmp_path / "page.html"
    page.write_text(PAGE)
    unused = f"http://127.0.0.1:{free_port()}"
    status, out, _ = await run_check(str(page), "--base", unused, "--json")
    assert status == 1
    assert {entry["why"] for entry in json.loads(out)["links"]} == {f"cannot connect to {unused}"}
    empty = tmp_path / "empty.html"
    empty.write_text('<p>no media here: <a href="/about">about</a></p>')
    status, _, err = await run_check(str(empty))
    assert status == 2 and "no Kaltura-style media links" in err
    status, _, err = await run_check(str(tmp_path / "nothing.html"))
    assert status == 2 and "cannot read" in err


async def test_check_shows_a_progress_bar_on_a_terminal(base, tmp_path):
    page = tmp_path / "page.html"
    page.write_text(PAGE)
    status, out, err = await run_check(str(page), "--base", base, tty=True)
    assert status == 1
    assert "checking" in err and "10/10" in err and "3 failed" in err, err
    assert len(rows(out)) == 10


async def test_a_page_of_200_media_links_is_checked_in_seconds(base, tmp_path):
    entries = ["0_photo", "0_alpha", "0_webp", "0_named"]
    links = [f"{CDN}/thumbnail/entry_id/{entries[index % 4]}/width/{40 + index}/height/{30 + index % 40}"
             f"/type/{1 + index % 5}" for index in range(180)]
    links += [f"{CDN}/thumbnail/entry_id/0_video/width/{60 + index}/vid_sec/{index % 6}" for index in range(10)]
    links += [f"{CDN}/raw/entry_id/{entries[index % 4]}/file_name/copy{index}" for index in range(10)]
    page = tmp_path / "page.html"
    page.write_text("<!doctype html>\n" + "\n".join(f'<img src="{link}" alt="">' for link in links))
    started = time.monotonic()
    status, out, _ = await run_check(str(page), "--base", base)
    seconds = time.monotonic() - started
    assert status == 0, out[-2000:]
    assert len(rows(out)) == 200
    assert seconds < 30, seconds  # about 2-4 s here, on a shared 2-core machine, the server in this process


# ---------------------------------------------------------------------------------------------------------------
# finding the links


def test_srcset_candidates():
    assert srcset_urls("a.jpg 1x, b.jpg 2x") == ["a.jpg", "b.jpg"]
    assert srcset_urls("  /p/1/thumbnail/entry_id/x/width/320 320w,/p/1/thumbnail/entry_id/x/width/640 640w ") == [
        "/p/1/thumbnail/entry_id/x/width/320", "/p/1/thumbnail/entry_id/x/width/640"]
    assert srcset_urls("a,b.jpg 1x, c.jpg") == ["a,b.jpg", "c.jpg"]  # a comma inside a URL stays
    assert srcset_urls("a.jpg, b.jpg") == ["a.jpg", "b.jpg"]
    assert srcset_urls("a.jpg (min-width: 1px, x) 1x, b.jpg") == ["a.jpg", "b.jpg"]
    assert srcset_urls("") == []


def test_find_links_in_html_and_in_lists():
    links, skipped = find_links('<IMG SRC="/p/1/thumbnail/entry_id/x?a=1&amp;b=2"><a href="/x">x</a>'
                                '<source srcset="/p/1/raw/entry_id/y 2x"><video src="/flvclipper/entry_id/z">'
                                '<img src="/p/abc/thumbnail/entry_id/x"><img src="data:image/png;base64,AAAA">',
                                "https://site.example/page")
    assert [(link.url, link.found_in) for link in links] == [
        ("https://site.example/p/1/thumbnail/entry_id/x?a=1&b=2", "img src"),
        ("https://site.example/p/1/raw/entry_id/y", "source srcset"),
        ("https://site.example/flvclipper/entry_id/z", "video src"),
        ("https://site.example/p/abc/thumbnail/entry_id/x", "img src"),  # malformed, but a media link: checked
    ]
    assert skipped == 2
    links, skipped = find_links("# comment\n/p/1/raw/entry_id/a\n\nhttps://h/p/1/raw/entry_id/b\nhttps://h/other\n")
    assert [(link.url, link.found_in) for link in links] == [("/p/1/raw/entry_id/a", "line 2"),
                                                            ("https://h/p/1/raw/entry_id/b", "line 4")]
    assert skipped == 1
