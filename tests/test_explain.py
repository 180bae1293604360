"""How a link is read (SPEC §9): the parser's notes, the canonical form, `GET /explain` and `mediaproxy explain`.

The contract tested here is that the explanation cannot drift from what is served: for every URL shape of the
grammar tests (aliases, clamps, odd trailing segments, the /s/ prefix, query precedence, malformed values), the
server answers the link and the explanation's local URL identically, a malformed link's explained error is the
server's answer word for word, removing the keys said to be ignored changes nothing, and the canonical path parses
back to the same request.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import time
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mediaproxy import urls
from mediaproxy.access import make_ks
from mediaproxy.errors import MediaProxyError
from mediaproxy.urls import NoteKind, ThumbnailRequest, canonical_path, parse_target

from .conftest import REPO, make_config, send_raw

DEFAULT_PARTNER = 100
SECRET_200 = "explain-test-secret"
CONSOLE = f"""
[console]
enabled = true

[partners.200]
admin_secrets = ["{SECRET_200}"]
ks_required_for = ["raw"]
"""

T = "/p/100/sp/10000/thumbnail/entry_id/0_photo"
C = "/p/100/sp/10000/flvclipper/entry_id/0_video"
R = "/p/100/sp/10000/raw/entry_id/0_photo"


def notes_of(target: str) -> list[str]:
    return [str(note) for note in parse_target(target, DEFAULT_PARTNER).notes]


# ---------------------------------------------------------------------------------------------------------------
# the notes, made where each value is read


@pytest.mark.parametrize("target, expected", [
    pytest.param(T + "/height/20000", ["`height` clamped to 10000"], id="clamp"),
    pytest.param("/p/100/thumbnail/entryId/0_photo/width/9", ["`entryId` read as `entry_id`"], id="alias"),
    pytest.param(T + "/width/9/clientTag/kdp%3Av3", ["`clientTag` ignored"], id="unknown-key"),
    pytest.param(T + "/width/9?clientTag=x&novar=0", ["`clientTag` ignored", "`novar` ignored"], id="unknown-query"),
    pytest.param(T + "/width/9/name.jpg", ["`name.jpg` ignored (a trailing file name)"], id="trailing-name"),
    pytest.param(T + "/width/9/height", ["`height` ignored (a trailing key without a value)"], id="trailing-key"),
    pytest.param("/s/p/100/thumbnail/entry_id/0_photo/width/9", ["`/s/` ignored (a CDN's \"secured\" prefix)"],
                 id="secured-prefix"),
    pytest.param(T + "/width/300?width=200",
                 ["`width` in the path ('300') beats the query string's ('200')"], id="path-beats-query"),
    pytest.param(T + "/width/100/width/300", ["`width` given more than once in the path: the last ('300') is used"],
                 id="duplicate"),
    pytest.param(T + "/width/9?width=1&width=2",
                 ["`width` given more than once in the query string: the last ('2') is used"], id="duplicate-query"),
    pytest.param(T + ".jpg/width/9", ["`entry_id` read as '0_photo' (.jpg dropped)"], id="suffix"),
    pytest.param(T, ["`width` and `height` absent: the default box, 120×90"], id="default-box"),
    pytest.param(T + "/def_width/300/def_height/200", ["`width` and `height` absent: def_width × def_height, 300×200"],
                 id="def-box"),
    pytest.param(T + "/width/320", ["`height` absent: follows the source's aspect ratio"], id="one-side"),
    pytest.param(T + "/width/320/type/3", ["`height` absent: equals the other side (a square)"], id="square"),
    pytest.param(T + "/width/0/height/0", ["`width` and `height` 0: the source's own size"], id="source-size"),
    pytest.param(T + "/width/-5/height/9", ["`width` '-5' is negative: absent"], id="negative-width"),
    pytest.param(T + "/width/320!/height/9/type/3", ["`width` '320!': the `!` forces type 5 (stretch)",
                                                     "`type` ignored (a `!` in the size forces type 5)"],
                 id="forced"),
    pytest.param(T + "/width/9/type/abc", ["`type` 'abc' read as 1 (fit)"], id="type-words"),
    pytest.param(T + "/width/9/type/9", ["`type` clamped to 5"], id="type-clamp"),
    pytest.param(T + "/width/9/type/2/bgcolor/fff", ["`bgcolor` 'fff' read as #000fff (a number, not CSS shorthand)"],
                 id="bgcolor-short"),
    pytest.param(T + "/width/9/quality/150", ["`quality` clamped to 100"], id="quality-clamp"),
    pytest.param(T + "/width/9/quality/0", ["`quality` 0: the partner's default"], id="quality-zero"),
    pytest.param(T + "/width/9/format/JPEG", ["`format` read as jpg"], id="format-case"),
    pytest.param(T + "/width/9/src_x/-5/src_w/20000", ["`src_x` clamped to 0", "`src_w` clamped to 10000"],
                 id="region-clamp"),
    pytest.param(T + "/width/9/version/-5", ["`version` '-5' is negative: none"], id="version-negative"),
    pytest.param(T + "/width/9/version/99999999", ["`version` clamped to 10000000"], id="version-clamp"),
    pytest.param(T + "/width/9/vid_sec/-1", ["`vid_sec` '-1' is negative: the entry's thumb_offset, else 3 s"],
                 id="vid-sec-negative"),
    pytest.param(T + "/width/9/vid_slices/4/vid_slice/10", ["`vid_slice` clamped to 3 (the last of 4 slices)"],
                 id="slice-clamp"),
    pytest.param(T + "/width/9/vid_slices/4/vid_sec/2", ["`vid_sec` ignored (vid_slices sets the times)"],
                 id="slices-over-vid-sec"),
    pytest.param(T + "/width/9/vid_slice/2", ["`vid_slice` ignored (no vid_slices)"], id="slice-alone"),
    pytest.param(T + "/width/9/file_name/a", ["`file_name` accepted, changes nothing (a thumbnail is not a download)"],
                 id="thumbnail-file-name"),
    pytest.param(T + "/width/9/flavor/0_x", ["`flavor` ignored (a thumbnail's flavor is `flavor_id`)"],
                 id="misplaced-flavor"),
    pytest.param(C + "/seek_from/2000", ["`seek_from` read as `clip_from`"], id="seek-from"),
    pytest.param(C + "/clip_from/1/seek_from/2000", ["`seek_from` ignored (clip_from is given)"], id="seek-ignored"),
    pytest.param(C + "/clip_from/1.5", ["`clip_from` read as 1 (whole milliseconds)"], id="whole-ms"),
    pytest.param(C + "/clip_to/0", ["`clip_to` 0: to the end"], id="clip-to-zero"),
    pytest.param(C + "/flavor/1", ["`flavor` 1: the best playable flavor"], id="best-flavor"),
    pytest.param(C + "/flavorId/0_x", ["`flavorId` read as `flavor`"], id="clip-alias"),
    pytest.param(C + "/flavor_id/0_x", ["`flavor_id` ignored (a clip's flavor is `flavor`)"], id="clip-flavor-id"),
    pytest.param(C + "/a.mp4", ["`a.mp4` read as the output container: mp4"], id="container"),
    pytest.param(C + "/a.webm", ["`a.webm` ignored (a trailing file name)"], id="no-container"),
    pytest.param(C + "/seek_from_bytes/5", ["`seek_from_bytes` ignored"], id="seek-bytes"),
    pytest.param("/flvclipper/entry_id/0_video", ["`/p/` absent: partner 100 ([defaults] partner_id)"],
                 id="default-partner"),
    pytest.param(R + "/format/mp4", ["`format` ignored (only type/download with a format selects a file)"],
                 id="raw-format-alone"),
    pytest.param(R + "/relocate/1/forceproxy/true", ["`relocate` ignored", "`forceproxy` ignored"], id="raw-compat"),
])
def test_the_parser_notes_how_it_read_the_link(target, expected):
    notes = notes_of(target)
    for text in expected:
        assert text in notes, notes


def test_a_plain_link_has_no_notes():
    assert notes_of(T + "/width/320/height/240/type/3") == []
    assert notes_of(R) == []
    assert notes_of(C + "/clip_from/1000/clip_to/2000") == []


def test_the_ks_is_no_note_and_no_given_pair():
    parsed = parse_target(T + "/width/9/ks/SECRETKS?ks=OTHER", DEFAULT_PARTNER)
    assert parsed.ks == "SECRETKS"
    assert "SECRETKS" not in repr(parsed) and "OTHER" not in repr(parsed)
    assert all("ks" != note.key for note in parsed.notes)
    assert dict(parsed.given) == {"entry_id": "0_photo", "width": "9"}


# ---------------------------------------------------------------------------------------------------------------
# the canonical form and the ignored keys, over every shape of the grammar tests


def _grammar_shapes() -> list[str]:
    from . import test_urls as grammar

    shapes = [T, R, C, grammar.BASE_THUMB, *grammar.DIFFERENT.values()]
    shapes += [grammar.T + grammar.UNKNOWN, grammar.R + grammar.UNKNOWN, grammar.C + grammar.UNKNOWN]
    shapes += [f"{grammar.T}/width/9/{name}" for name in ("a.mp4", ".flv", "name.jpg", "width")]
    shapes += [f"{grammar.C}/clip_to/9000{name}" for name in ("/a.mp4", "/a.flv", "/x.webm", "?novar=0")]
    shapes += ["/s/p/100/sp/10000/flvclipper/entry_id/0_abc/seek_from/1000/clip_to/2000/flavor/1/a.mp4",
               "/p/100/thumbnail/entryId/0_abc.jpg/width/200.jpg/height/100.png",
               "//p//100/thumbnail//entry_id/0_abc/width/200/height/100/", "/flvclipper/entryId/0_abc/flavorId/0_q",
               "/p/100/raw?entry_id=0_abc&flavor_id=0_fl&version=2", "/p/100/raw/entry_id/0_abc/type/download/format/MP4",
               "/p/100/raw/entry_id/0_abc/file_name/my%20movie/direct_serve/yes",
               "/p/100/thumbnail/entry_id/0_abc/vid_sec/0.00001/start_sec/1e3", "/p/100/thumbnail/entry_id/0_abc/vid_sec/12345.678",
               "/p/100/thumbnail/entry_id/0_abc/bgcolor/AbC/type/2/width/10/height/5/density/-1/strip/yes",
               "/p/100/thumbnail/entry_id/0_abc/width/20000!/vid_slices/4/vid_slice/9"]
    return [shape for shape in shapes if _parses(shape)]


def _parses(target: str) -> bool:
    try:
        urls.parse(target, DEFAULT_PARTNER)
    except MediaProxyError:
        return False
    return True


def _rendered(request):
    """The request as the service uses it: vid_sec does nothing under vid_slices, start/end_sec nothing without."""
    if isinstance(request, ThumbnailRequest):
        if request.vid_slices is not None:
            return dataclasses.replace(request, vid_sec=None)
        return dataclasses.replace(request, start_sec=None, end_sec=None)
    return request


def _without_keys(target: str, keys: set[str], trailing: bool) -> str:
    path, mark, query = target.partition("?")
    segments = [segment for segment in path.split("/") if segment]
    pairs_from = urls._pairs_start(segments)
    pairs = segments[pairs_from:]
    kept = segments[:pairs_from]
    for index in range(0, len(pairs) - 1, 2):
        if urls.unquote(pairs[index]) not in keys:
            kept += pairs[index:index + 2]
    if len(pairs) % 2 and not trailing:
        kept.append(pairs[-1])
    items = [item for item in query.split("&") if item and urls.unquote(item.partition("=")[0]) not in keys]
    return "/" + "/".join(kept) + ("?" + "&".join(items) if items else "")


@pytest.mark.parametrize("target", _grammar_shapes())
def test_canonical_path_parses_back_to_the_same_request_and_ignored_keys_change_nothing(target):
    parsed = parse_target(target, DEFAULT_PARTNER)
    canonical = canonical_path(parsed.request)
    again = parse_target(canonical, DEFAULT_PARTNER)
    assert again.request == parsed.request
    assert canonical_path(again.request) == canonical
    # the canonical path has nothing ignored in it but the times a request keeps while its service does not use them
    assert {note.key for note in again.notes if note.kind is NoteKind.IGNORED} <= {"vid_sec", "start_sec", "end_sec"}
    ignored = [note for note in parsed.notes if note.kind is NoteKind.IGNORED]
    keys = {note.key for note in ignored if "trailing" not in note.detail}
    trailing = any("trailing" in note.detail for note in ignored)
    without = _without_keys(target, keys, trailing)
    assert _rendered(urls.parse(without, DEFAULT_PARTNER)) == _rendered(parsed.request), without


KEYS = ["width", "height", "type", "bgcolor", "quality", "src_x", "src_y", "src_w", "src_h", "rel_width",
        "rel_height", "vid_sec", "vid_slices",
        "vid_slice", "start_sec", "end_sec", "density", "strip", "format", "version", "flavor_id", "flavorId",
        "entryId", "clip_from", "clip_to", "seek_from", "flavor", "file_name", "direct_serve", "def_width",
        "def_height", "clientTag", "ext"]
VALUES = st.one_of(st.integers(-20, 20).map(str), st.sampled_from(
    ["0", "1", "99999", "-1", "320!", "1.5", "fff", "png", "JPEG", "download", "mp4", "0_fl", "yes", "x.jpg",
     "2.5.jpg", "1e3", "abc", "12345678901234567890"]))
PAIRS = st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=6)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(service=st.sampled_from(["/p/100/sp/10000/thumbnail", "/s/p/7/raw", "/flvclipper", "/p/100/flvclipper"]),
       pairs=PAIRS, query=PAIRS, trailing=st.sampled_from(["", "/a.mp4", "/a.flv", "/name.jpg", "/width"]))
def test_any_parsable_target_has_a_canonical_path_that_reads_the_same(service, pairs, query, trailing):
    target = (service + "/entry_id/0_abc" + "".join(f"/{key}/{quote(value)}" for key, value in pairs) + trailing
              + ("?" + "&".join(f"{key}={quote(value)}" for key, value in query) if query else ""))
    try:
        parsed = parse_target(target, DEFAULT_PARTNER)
    except MediaProxyError:
        return
    assert urls.parse(canonical_path(parsed.request), DEFAULT_PARTNER) == parsed.request
    assert {parameter.key for parameter in urls.parameters(parsed)} <= set(KEYS) | {"container"}


# ---------------------------------------------------------------------------------------------------------------
# GET /explain and the server agree, over HTTP


@pytest.fixture
async def console(serve, tmp_path):
    return await serve(make_config(tmp_path, extra=CONSOLE))


async def explain(client, link: str) -> dict:
    response = await client.get("/explain", params={"url": link})
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    return await response.json()


# (link as a page holds it, what the answer must be): the link and the explanation's local URL answer the same
SERVED_SHAPES = [
    ("https://cdnapisec.kaltura.com/p/100/sp/10000/thumbnail/entryId/0_photo/width/64", 200),
    ("https://cdn.example.com/p/100/sp/10000/thumbnail/entry_id/0_photo/width/64/height/99999", 200),
    ("cdnapisec.kaltura.com/p/100/thumbnail/entry_id/0_photo/width/48/height/48/type/9/quality/150", 200),
    ("http://localhost:9/s/p/100/thumbnail/entry_id/0_photo/width/50/pic.jpg", 200),
    ("/p/100/thumbnail/entry_id/0_photo/width/60?width=999&height=20&clientTag=x", 200),
    ("/p/100/thumbnail/entry_id/0_photo.jpg/width/10/width/70.jpg", 200),
    ("/p/100/thumbnail/entry_id/0_photo/def_width/80/def_height/60/uiConfId/1", 200),
    ("/p/100/thumbnail/entry_id/0_photo/width/50!/height/30/type/3", 200),
    ("/p/100/thumbnail/entry_id/0_alpha/width/40/height/40/type/2/bgcolor/f0", 200),
    ("/p/100/thumbnail/entry_id/0_video/width/40/vid_slices/3/vid_slice/7", 200),
    ("https://x.example/flvclipper/entry_id/0_video/seek_from/1000/clip_to/2000/a.mp4#t=1", 200),
    ("/p/100/raw/entryId/0_video/type/download/format/mp4/relocate/1", 200),
    ("/p/100/raw/entry_id/0_photo/name.jpg", 200),
    ("https://cdnapisec.kaltura.com/p/100/sp/10000/thumbnail/entry_id/0_missing/width/64", 404),
    ("/p/100/raw/entry_id/0_video/flavor_id/0_nosuch", 404),
    ("/p/200/sp/20000/raw/entry_id/0_private", 403),
]


@pytest.mark.parametrize("link, status", SERVED_SHAPES)
async def test_the_link_and_its_explained_local_url_are_answered_the_same(console, link, status):
    explained = await explain(console, link)
    assert explained["ok"] is True and explained["error"] is None
    assert explained["local_url"] == f"http://{console.host}:{console.port}{explained['canonical']}"
    target = explained["target"]
    direct = await send_raw(console, target)
    local = await send_raw(console, explained["canonical"])
    assert direct[0] == local[0] == status, (direct[0], local[0], direct[2][:200])
    if status == 200:
        assert direct[2] == local[2]  # byte for byte the same answer
        assert direct[1]["etag"] == local[1]["etag"]
    else:
        assert direct[1]["x-kaltura"] == local[1]["x-kaltura"] and direct[2] == local[2]
    if status == 403:
        assert explained["access"] == {"allowed": False, "status": 403, "code": 3, "description": "ACCESS_DENIED",
                                       "message": direct[2].decode().strip()}
        assert explained["ks_required"] is True
    else:
        assert explained["access"] == {"allowed": True}


MALFORMED = [
    "https://cdnapisec.kaltura.com/p/100/sp/10000/thumbnail/entry_id/0_photo/width/abc",
    "/p/100/thumbnail/entry_id/0_photo/bgcolor/xyz",
    "/p/100/thumbnail/entry_id/0_video/vid_slices/0",
    "/p/100/thumbnail/entry_id/0_photo/format/bmp",
    "/p/100/flvclipper/entry_id/0_video/clip_from/5000/clip_to/5000",
    "/p/100/raw/entry_id/0-photo",
    "/p/100/raw/width/10",
    "/p/abc/thumbnail/entry_id/0_photo",
    "/p/100/sp/10000/video/entry_id/0_photo",
    "https://www.example.com/about/team.html",
    "/p/100/thumbnail/entry_id/0_photo/width/6550/vid_slices/10",
]


@pytest.mark.parametrize("link", MALFORMED)
async def test_a_malformed_link_is_explained_with_the_servers_own_answer(console, link):
    explained = await explain(console, link)
    assert explained["ok"] is False
    status, headers, body = await send_raw(console, explained["target"])
    error = explained["error"]
    assert error["status"] == status
    assert headers["x-kaltura"] == f"error-{error['code']}"
    assert headers["x-kaltura-app"] == f"exiting on error {error['code']} - {error['description']}"
    assert body.decode() == error["message"] + "\n"
    assert explained["canonical"] is None and explained["local_url"] is None and explained["parameters"] == []
    assert explained["access"] is None  # refused before any access check, as the server does


async def test_explain_reports_every_parameter_with_the_value_used(console):
    link = ("https://cdnapisec.kaltura.com/p/123/sp/12300/thumbnail/entryId/0_abc/width/320/height/20000"
            "/clientTag/kdp%3Av3/vid_slices/4")
    explained = await explain(console, link)
    assert (explained["service"], explained["partner_id"], explained["entry_id"]) == ("thumbnail", 123, "0_abc")
    assert explained["host"] == "cdnapisec.kaltura.com"
    values = {parameter["key"]: (parameter["value"], parameter["given"]) for parameter in explained["parameters"]}
    assert values["width"] == (320, "320") and values["height"] == (10000, "20000")
    assert values["type"] == (1, None) and values["quality"] == (None, None) and values["vid_slices"] == (4, "4")
    assert values["vid_slice"] == (None, None) and values["format"] == ("jpg", None)
    assert len(values) == 21  # every thumbnail parameter of SPEC §2 but file_name (which changes nothing)
    texts = [note["text"] for note in explained["notes"]]
    assert texts == ["`entryId` read as `entry_id`", "`height` clamped to 10000", "`clientTag` ignored"]
    assert explained["ignored"] == ["clientTag"]
    assert explained["given"] == {"entry_id": "0_abc", "width": "320", "height": "20000", "clientTag": "kdp:v3",
                                  "vid_slices": "4"}
    assert explained["canonical"] == "/p/123/sp/12300/thumbnail/entry_id/0_abc/width/320/height/10000/vid_slices/4"
    assert explained["summary"] == "strip of 4 frames 320×10000 jpg"
    assert explained["ks"]["present"] is False


KS_CASES = {
    "v1 verified": (dict(partner_id=200, secret=SECRET_200, privileges="download:*"),
                    {"version": 1, "partner_id": 200, "verified": True, "expired": False}, {"allowed": True}),
    "v2 verified": (dict(partner_id=200, secret=SECRET_200, privileges="download:*", v2=True),
                    {"version": 2, "partner_id": 200, "verified": True, "expired": False}, {"allowed": True}),
    "expired": (dict(partner_id=200, secret=SECRET_200, privileges="download:*", expiry=int(time.time()) - 60),
                {"version": 1, "partner_id": 200, "verified": True, "expired": True}, {"code": 31}),
    "wrong secret": (dict(partner_id=200, secret="not-the-secret", privileges="download:*"),
                     {"version": 1, "partner_id": 200, "verified": False, "problem": "bad signature"}, {"code": 7}),
    "unknown partner": (dict(partner_id=555, secret="whatever", v2=True),
                        {"version": 2, "partner_id": 555, "verified": None}, {"code": 7}),
}


@pytest.mark.parametrize("case", KS_CASES)
@pytest.mark.parametrize("where", ["path", "query"])
async def test_explain_says_what_the_ks_is_and_never_repeats_it(console, case, where):
    options, facts, access = KS_CASES[case]
    options = dict(options)
    ks = make_ks(options.pop("partner_id"), options.pop("secret"), **options)
    base = "https://cdnapisec.kaltura.com/p/200/sp/20000/raw/entry_id/0_private"
    link = f"{base}/ks/{ks}/a.jpg" if where == "path" else f"{base}?ks={ks}"
    response = await console.get("/explain", params={"url": link})
    text = await response.text()
    assert ks not in text and ks[:24] not in text
    explained = json.loads(text)
    assert explained["ks"]["present"] is True and explained["ks"]["well_formed"] is True
    assert {key: explained["ks"][key] for key in facts} == facts
    assert "[redacted]" in explained["link"] and "[redacted]" in explained["target"]
    assert {key: explained["access"][key] for key in access} == access
    status, _, _ = await send_raw(console, f"{explained['canonical']}?ks={ks}")
    assert status == (200 if access == {"allowed": True} else 403)


@pytest.mark.parametrize("ks, problem", [("abc", "unknown format"), ("%%%", "not base64"),
                                         ("djJ8MTAwfGFiYw", "malformed v2 payload")])
async def test_a_malformed_ks_is_said_to_be_malformed(console, ks, problem):
    explained = await explain(console, f"/p/100/thumbnail/entry_id/0_photo?ks={quote(ks)}")
    assert explained["ks"] == {"present": True, "well_formed": False, "version": None, "partner_id": None,
                               "verified": None, "expired": None, "problem": problem,
                               "text": f"present, malformed ({problem})"}
    assert explained["access"] == {"allowed": True}  # partner 100's thumbnails are public: the KS is not looked at


async def test_explain_without_a_link_is_a_400_and_is_off_without_the_console(console, serve, tmp_path):
    response = await console.get("/explain")
    assert response.status == 400 and "url" in (await response.json())["error"]
    (tmp_path / "plain").mkdir()
    plain = await serve(make_config(tmp_path / "plain"))
    response = await plain.get("/explain", params={"url": T})
    assert response.status == 404 and response.headers["X-Kaltura"] == "error-1"


async def test_the_access_log_of_explain_never_holds_the_ks(console, caplog):
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from mediaproxy.app import AccessLogger

    ks = make_ks(200, SECRET_200, privileges="download:*")
    caplog.set_level(logging.INFO, logger="mediaproxy.access")
    for link in (f"https://h.example/p/200/raw/entry_id/0_private?ks={ks}", f"/p/200/raw/entry_id/0_private/ks/{ks}",
                 f"cdn.example/p/200/raw/entry_id/0_private?x=1&ks={ks}"):
        target = "/explain?url=" + quote(link, safe="")
        assert ks not in urls.redact_ks(target) and "[redacted]" in urls.unquote(urls.redact_ks(target))
        AccessLogger(logging.getLogger("mediaproxy.access"), "").log(make_mocked_request("GET", target),
                                                                     web.Response(status=200), 0.1)
    lines = [record.getMessage() for record in caplog.records if record.name == "mediaproxy.access"]
    assert len(lines) == 3 and not [line for line in lines if ks in line or ks[:24] in line]


# ---------------------------------------------------------------------------------------------------------------
# mediaproxy explain URL


def run_cli(*args: str, config=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mediaproxy", "explain", *args]
    if config is not None:
        command += ["--config", str(config)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=60)


def test_explain_command_prints_the_reading_in_words(tmp_path):
    link = ("https://cdnapisec.kaltura.com/p/123/sp/12300/thumbnail/entryId/0_abc/width/320/height/20000"
            "/clientTag/x/vid_slices/4")
    done = run_cli(link, "--base", "http://media.test:8080")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"link       {link}"
    assert "reads as   strip of 4 frames 320×10000 jpg of entry 0_abc, partner 123" in lines
    assert "notes      `entryId` read as `entry_id`" in lines
    assert "           `height` clamped to 10000" in lines and "           `clientTag` ignored" in lines
    assert "canonical  /p/123/sp/12300/thumbnail/entry_id/0_abc/width/320/height/10000/vid_slices/4" in lines
    assert ("served at  http://media.test:8080/p/123/sp/12300/thumbnail/entry_id/0_abc/width/320/height/10000"
            "/vid_slices/4") in lines


def test_explain_command_on_a_malformed_link_says_why_and_exits_1(tmp_path):
    done = run_cli("/p/100/thumbnail/entry_id/0_photo/width/abc")
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1] == ("refused    400 (Kaltura error 25, INVALID_PARAMETER): "
                                            "width: 'abc' is not an integer")


def test_explain_command_json_and_the_ks_of_the_bundled_partner(tmp_path):
    ks = make_ks(200, "mediaproxy-fixture-secret-200", privileges="download:*")
    done = run_cli(f"https://cdn.example/p/200/raw/entry_id/0_private?ks={ks}", "--json")
    assert done.returncode == 0, done.stderr
    assert ks not in done.stdout
    explained = json.loads(done.stdout)
    assert explained["ks"]["verified"] is True and explained["ks_required"] is True
    assert explained["local_url"] == "http://127.0.0.1:8080/p/200/sp/20000/raw/entry_id/0_private"
