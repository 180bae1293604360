"""Unit tests of the URL grammar (SPEC §1–§4): `mediaproxy.urls.parse` and `redact_ks`, no server."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaproxy import urls
from mediaproxy.errors import BadRequest, NotFound
from mediaproxy.options import ThumbnailOptions
from mediaproxy.refs import EntryRef, FileSelector
from mediaproxy.urls import (
    ClipRequest,
    OutputFormat,
    RawRequest,
    Region,
    ResizeMode,
    ThumbnailRequest,
    parse,
    parse_target,
    redact_ks,
)

DEFAULT_PARTNER = 777
T = "/p/100/sp/10000/thumbnail/entry_id/0_abc"  # a thumbnail of entry 0_abc of partner 100
R = "/p/100/sp/10000/raw/entry_id/0_abc"
C = "/p/100/sp/10000/flvclipper/entry_id/0_abc"
ENTRY = EntryRef(100, "0_abc")


def p(target: str):
    return parse(target, DEFAULT_PARTNER)


def ks_of(target: str) -> str | None:
    """The KS the parser reads from a target (it travels beside the request, never inside it)."""
    return parse_target(target, DEFAULT_PARTNER).ks


def bad(target: str, name: str) -> BadRequest:
    """Parse, expecting a 400 whose message names `name`."""
    with pytest.raises(BadRequest) as caught:
        p(target)
    assert caught.value.status == 400
    assert name in caught.value.message, caught.value.message
    return caught.value


# ---------------------------------------------------------------------------------------------------------------
# §1 path forms


@pytest.mark.parametrize(
    "target, kind, partner",
    [
        ("/p/100/sp/10000/thumbnail/entry_id/0_abc", ThumbnailRequest, 100),
        ("/p/100/thumbnail/entry_id/0_abc", ThumbnailRequest, 100),
        ("/p/100/sp/10000/raw/entry_id/0_abc", RawRequest, 100),
        ("/p/100/raw/entry_id/0_abc", RawRequest, 100),
        ("/p/100/sp/10000/flvclipper/entry_id/0_abc", ClipRequest, 100),
        ("/p/100/flvclipper/entry_id/0_abc", ClipRequest, 100),
        ("/flvclipper/entry_id/0_abc", ClipRequest, DEFAULT_PARTNER),
        ("/s/p/100/sp/10000/thumbnail/entry_id/0_abc", ThumbnailRequest, 100),
        ("/s/p/100/thumbnail/entry_id/0_abc", ThumbnailRequest, 100),
        ("/s/p/100/sp/10000/raw/entry_id/0_abc", RawRequest, 100),
        ("/s/p/100/raw/entry_id/0_abc", RawRequest, 100),
        ("/s/p/100/sp/10000/flvclipper/entry_id/0_abc", ClipRequest, 100),
        ("/s/p/100/flvclipper/entry_id/0_abc", ClipRequest, 100),
        ("/s/flvclipper/entry_id/0_abc", ClipRequest, DEFAULT_PARTNER),
        ("/p/-5/thumbnail/entry_id/0_abc", ThumbnailRequest, -5),
        ("/p/-5/sp/-500/raw/entry_id/0_abc", RawRequest, -5),
        ("/p/0/sp/0/flvclipper/entry_id/0_abc", ClipRequest, 0),
    ],
)
def test_path_forms(target, kind, partner):
    request = p(target)
    assert type(request) is kind
    assert request.service == {ThumbnailRequest: "thumbnail", RawRequest: "raw", ClipRequest: "flvclipper"}[kind]
    assert request.entry == EntryRef(partner, "0_abc")


def test_sp_value_does_not_change_the_request():
    assert p("/p/100/sp/1/thumbnail/entry_id/0_abc") == p("/p/100/sp/99/thumbnail/entry_id/0_abc") == p(T)


@pytest.mark.parametrize(
    "target, name",
    [
        ("/p/abc/thumbnail/entry_id/0_abc", "partner_id"),
        ("/p/1.5/raw/entry_id/0_abc", "partner_id"),
        ("/p/+1/raw/entry_id/0_abc", "partner_id"),
        ("/p/1e3/flvclipper/entry_id/0_abc", "partner_id"),
        ("/p/%31/flvclipper/entry_id/0_abc", "partner_id"),
        ("/p/100/sp/abc/thumbnail/entry_id/0_abc", "sp"),
        ("/p/100/sp/1.0/raw/entry_id/0_abc", "sp"),
        ("/s/p/x/sp/1/flvclipper/entry_id/0_abc", "partner_id"),
    ],
)
def test_non_integer_partner_or_subpartner_is_bad_request(target, name):
    bad(target, name)


def test_partner_ids_past_18_digits_are_bad_requests():
    # deliberate: a partner id that cannot be a 64-bit integer is malformed, not a lookup
    assert p("/p/123456789012345678/thumbnail/entry_id/0_abc").entry.partner_id == 123456789012345678
    bad("/p/1234567890123456789/thumbnail/entry_id/0_abc", "partner_id")


@pytest.mark.parametrize(
    "target",
    [
        "",
        "/",
        "//",
        "/p",
        "/p/100",
        "/p/100/",
        "/p/100/sp",
        "/p/100/sp/10000",
        "/p/100/sp/10000/",
        "/p/100/sp/10000/video/entry_id/0_abc",
        "/p/100/video/entry_id/0_abc",
        "/p/100/sp/10000/thumbnails/entry_id/0_abc",
        "/thumbnail/entry_id/0_abc",
        "/raw/entry_id/0_abc",
        "/s/thumbnail/entry_id/0_abc",
        "/s",
        "/q/100/thumbnail/entry_id/0_abc",
        "/favicon.ico",
        "/index.php/extwidget/thumbnail",
    ],
)
def test_unknown_service_or_too_short_path_is_not_found(target):
    with pytest.raises(NotFound) as caught:
        p(target)
    assert caught.value.status == 404


@pytest.mark.parametrize("target", ["/p/100/thumbnail", "/p/100/sp/1/raw", "/flvclipper", "/s/flvclipper/"])
def test_service_without_parameters_is_missing_entry_id(target):
    bad(target, "entry_id")


def test_runs_of_slashes_collapse():
    request = p("//p///100//sp//10000///thumbnail//entry_id///0_abc//width//200///")
    assert request.entry == ENTRY
    assert (request.width, request.height) == (200, 0)
    assert p("//flvclipper//entry_id//0_abc//clip_to///9000//").clip_to_ms == 9000
    assert p("/s//p/100//raw///entry_id/0_abc").entry == ENTRY


@pytest.mark.parametrize("trailing", ["a.mp4", ".flv", "name.jpg", "a.mp4.jpg", "width", "anything"])
@pytest.mark.parametrize("base", [T + "/width/200", R + "/version/3", C + "/clip_to/5000"])
def test_odd_trailing_segment_is_ignored(base, trailing):
    plain = p(base)
    with_name = p(f"{base}/{trailing}")
    assert with_name.entry == ENTRY
    if isinstance(plain, ClipRequest):  # the clip's container is the only thing a trailing name may change
        assert (with_name.clip_from_ms, with_name.clip_to_ms, with_name.flavor_id) == (0, 5000, None)
    else:
        assert with_name == plain


def test_odd_trailing_key_without_value_is_ignored():
    assert (p(T + "/width").width, p(T + "/width").height) == (120, 90)


# ---------------------------------------------------------------------------------------------------------------
# §1 decoding, duplicates, query string, unknown keys


def test_keys_and_values_are_url_decoded():
    request = p("/p/100/thumbnail/entry%5Fid/0%5Fabc/file_name/my%20pic%21/width/2%30%30")
    assert request.entry == ENTRY
    assert request.file_name == "my pic!"
    assert request.width == 200


def test_plus_in_path_stays_plus_but_query_plus_is_space():
    assert p(R + "/file_name/a+b").file_name == "a+b"
    assert p(R + "?file_name=a+b").file_name == "a b"
    assert p(R + "?file_name=a%2Bb").file_name == "a+b"


def test_encoded_slash_stays_inside_the_value():
    request = p(R + "/file_name/a%2Fversion%2F5")
    assert request.file_name == "a/version/5"
    assert request.selector.version is None
    thumb = p(T + "/file_name/x%2Fwidth%2F300")
    assert thumb.file_name == "x/width/300"
    assert (thumb.width, thumb.height) == (120, 90)


@pytest.mark.parametrize("target", [
    "/p/100/thumbnail/entry_id/0_abc%2Fwidth%2F200",
    "/p/100/raw/entry_id/0_abc%2F..%2Fsecret",
    "/p/100/flvclipper/entry_id/a%2Fb",
    "/p/100/raw/entry_id/a%2fb",
])
def test_entry_id_with_encoded_slash_is_rejected(target):
    bad(target, "entry_id")


def test_encoded_question_mark_does_not_start_the_query():
    request = p(R + "/file_name/a%3Fversion%3D3")
    assert request.file_name == "a?version=3"
    assert request.selector.version is None


@pytest.mark.parametrize(
    "target, width",
    [
        (T + "/width/100/width/200", 200),
        (T + "/width/200/height/5/width/300", 300),
        (T + "?width=100&width=250", 250),
        (T + "/width/300?width=200", 300),
        (T + "/width/300?width=200&width=100", 300),
        ("/p/100/thumbnail?entry_id=0_abc&width=400", 400),
        ("/p/100/thumbnail/width/50?entry_id=0_abc", 50),
    ],
)
def test_duplicates_last_wins_and_path_beats_query(target, width):
    request = p(target)
    assert request.entry == ENTRY
    assert request.width == width


def test_path_entry_id_beats_query_entry_id_and_last_path_value_wins():
    assert p("/p/100/raw/entry_id/0_abc?entry_id=0_zzz").entry == ENTRY
    assert p("/p/100/raw/entry_id/0_zzz/entry_id/0_abc").entry == ENTRY
    assert p("/p/100/raw/entry_id/0_zzz/entryId/0_abc").entry == ENTRY
    assert p("/p/100/raw/entryId/0_abc?entry_id=0_zzz").entry == ENTRY


def test_query_only_parameters_for_each_service():
    thumb = p("/p/100/thumbnail?entry_id=0_abc&width=64&height=48&type=3&format=png")
    assert (thumb.entry, thumb.width, thumb.height, thumb.mode, thumb.format) == (
        ENTRY, 64, 48, ResizeMode.CROP_CENTER, OutputFormat.PNG)
    clip = p("/p/100/flvclipper?entry_id=0_abc&clip_from=1000&clip_to=2000&flavor=0_fl")
    assert (clip.entry, clip.clip_from_ms, clip.clip_to_ms, clip.flavor_id) == (ENTRY, 1000, 2000, "0_fl")
    raw = p("/p/100/raw?entry_id=0_abc&flavor_id=0_fl&version=2")
    assert (raw.entry, raw.selector) == (ENTRY, FileSelector(flavor_id="0_fl", version=2))


UNKNOWN = "/ext/jpg/clientTag/kdp%3Av3.9/playSessionId/abc-def/novar/0/uiConfId/123/referer/x/foo/bar"


@pytest.mark.parametrize("base", [T + "/width/200", R + "/version/3", C + "/clip_from/100"])
def test_unknown_keys_are_ignored(base):
    plain = p(base)
    assert p(base + UNKNOWN) == plain
    assert p(base + "?ext=jpg&clientTag=x&playSessionId=y&novar=0&uiConfId=1&a=%zz") == plain


# ---------------------------------------------------------------------------------------------------------------
# §1 thumbnail-only suffix stripping


@pytest.mark.parametrize("suffix", [".jpg", ".gif", ".png"])
def test_thumbnail_strips_image_suffix_from_values(suffix):
    assert p(f"/p/100/thumbnail/entry_id/0_abc{suffix}").entry == ENTRY
    assert p(f"/p/100/thumbnail?entry_id=0_abc{suffix}").entry == ENTRY
    target = (f"{T}/width/200{suffix}/height/100{suffix}/flavor_id/0_fl{suffix}/file_name/pic{suffix}"
              f"/ks/abc{suffix}/format/png{suffix}")
    request = p(target)
    assert (request.width, request.height) == (200, 100)
    assert request.flavor_id == "0_fl"
    assert request.file_name == "pic"
    assert ks_of(target) == "abc"
    assert request.format is OutputFormat.PNG


def test_thumbnail_strip_applies_to_a_forced_dimension():
    request = p(T + "/width/320!.jpg")
    assert (request.width, request.mode) == (320, ResizeMode.STRETCH)


@pytest.mark.parametrize("suffix", [".JPG", ".Png", ".GIF", ".jpeg", ".webp", ".avif"])
def test_thumbnail_does_not_strip_other_or_uppercase_suffixes(suffix):
    bad(f"/p/100/thumbnail/entry_id/0_abc{suffix}", "entry_id")
    assert p(f"{T}/file_name/x{suffix}").file_name == f"x{suffix}"


@pytest.mark.parametrize("suffix", [".jpg", ".gif", ".png"])
def test_raw_and_flvclipper_do_not_strip_suffixes(suffix):
    bad(f"/p/100/raw/entry_id/0_abc{suffix}", "entry_id")
    bad(f"/p/100/flvclipper/entry_id/0_abc{suffix}", "entry_id")
    bad(f"{C}/flavor/0_fl{suffix}", "flavor")
    bad(f"{R}/flavor_id/0_fl{suffix}", "flavor_id")
    assert p(f"{R}/file_name/movie{suffix}").file_name == f"movie{suffix}"


# ---------------------------------------------------------------------------------------------------------------
# §1 aliases and identifier validation


def test_camel_case_aliases():
    thumb = p("/p/100/thumbnail/entryId/0_abc/flavorId/0_fl")
    assert (thumb.entry, thumb.flavor_id) == (ENTRY, "0_fl")
    raw = p("/p/100/raw/entryId/0_abc/flavorId/0_fl")
    assert (raw.entry, raw.selector.flavor_id) == (ENTRY, "0_fl")
    clip = p("/p/100/flvclipper/entryId/0_abc/flavorId/0_fl")
    assert (clip.entry, clip.flavor_id) == (ENTRY, "0_fl")
    assert p("/p/100/raw?entryId=0_abc&flavorId=0_q").selector.flavor_id == "0_q"
    assert p("/flvclipper?entryId=0_abc&flavorId=0_q").flavor_id == "0_q"


@pytest.mark.parametrize("value", ["a" * 64, "0_abc", "A_z9", "_", "1", "Z" * 10 + "_" + "9" * 10])
@pytest.mark.parametrize("service", ["thumbnail", "raw", "flvclipper"])
def test_valid_entry_ids(service, value):
    assert p(f"/p/100/{service}/entry_id/{value}").entry == EntryRef(100, value)


@pytest.mark.parametrize("value", ["a" * 64, "0_fl", "A_z9", "_", "0"])
@pytest.mark.parametrize("base, attribute", [(T + "/flavor_id/", "flavor_id"), (R + "/flavor_id/", "raw"),
                                             (C + "/flavor/", "flavor_id")])
def test_valid_flavor_ids(base, attribute, value):
    request = p(base + value)
    got = request.selector.flavor_id if attribute == "raw" else request.flavor_id
    assert got == value


BAD_IDS = [
    pytest.param("a" * 65, id="65-chars"),
    pytest.param("..", id="dotdot"),
    pytest.param("..%2F..%2Fetc", id="traversal"),
    pytest.param("a%20b", id="space"),
    pytest.param("a%2Fb", id="slash"),
    pytest.param("a%5Cb", id="backslash"),
    pytest.param("%00", id="nul"),
    pytest.param("a%00", id="trailing-nul"),
    pytest.param("a-b", id="dash"),
    pytest.param("a.b", id="dot"),
    pytest.param("%C3%A9t%C3%A9", id="non-ascii"),
    pytest.param("%EF%BC%91", id="fullwidth-digit"),
    pytest.param("a%0A", id="newline"),
]

ID_PLACES = [
    pytest.param("/p/100/thumbnail/entry_id/", "entry_id", id="thumbnail-entry_id"),
    pytest.param("/p/100/raw/entry_id/", "entry_id", id="raw-entry_id"),
    pytest.param("/p/100/flvclipper/entry_id/", "entry_id", id="flvclipper-entry_id"),
    pytest.param("/p/100/thumbnail/entryId/", "entry_id", id="thumbnail-entryId"),
    pytest.param(T + "/flavor_id/", "flavor_id", id="thumbnail-flavor_id"),
    pytest.param(R + "/flavor_id/", "flavor_id", id="raw-flavor_id"),
    pytest.param(R + "/flavorId/", "flavor_id", id="raw-flavorId"),
    pytest.param(C + "/flavor/", "flavor", id="flvclipper-flavor"),
    pytest.param(C + "/flavorId/", "flavor", id="flvclipper-flavorId"),
]


@pytest.mark.parametrize("value", BAD_IDS)
@pytest.mark.parametrize("prefix, name", ID_PLACES)
def test_invalid_identifiers_are_bad_requests_naming_the_parameter(prefix, name, value):
    bad(prefix + value, name)


@pytest.mark.parametrize("service", ["thumbnail", "raw", "flvclipper"])
def test_invalid_entry_id_in_query_is_bad_request(service):
    bad(f"/p/100/{service}?entry_id=", "entry_id")
    bad(f"/p/100/{service}?entry_id=a%00b", "entry_id")
    bad(f"/p/100/{service}?entry_id=a+b", "entry_id")
    bad(f"/p/100/{service}?entry_id=" + "x" * 65, "entry_id")


def test_thumbnail_value_reduced_to_empty_by_suffix_is_bad_request():
    bad("/p/100/thumbnail/entry_id/.jpg", "entry_id")


@pytest.mark.parametrize("target, name", [
    (T + "?flavor_id=", "flavor_id"),
    (R + "?flavor_id=", "flavor_id"),
    (C + "?flavor=", "flavor"),
])
def test_empty_flavor_is_bad_request(target, name):
    bad(target, name)


@pytest.mark.parametrize("service", ["thumbnail", "raw", "flvclipper"])
def test_missing_entry_id_is_bad_request(service):
    bad(f"/p/100/{service}/width/200/flavor_id/0_fl", "entry_id")
    bad(f"/p/100/{service}?width=200", "entry_id")
    bad(f"/p/100/{service}/entry_id", "entry_id")  # a lone key is an ignored trailing segment


# ---------------------------------------------------------------------------------------------------------------
# §2 thumbnail: defaults


def test_thumbnail_defaults():
    request = p(T)
    assert request == ThumbnailRequest(entry=ENTRY, options=ThumbnailOptions(width=120, height=90))
    assert request.mode is ResizeMode.FIT
    assert request.bgcolor == 0xFFFFFF
    assert request.quality is None
    assert request.region == Region(0, 0, 0, 0)
    assert (request.rel_width, request.rel_height) == (None, None)
    assert (request.vid_sec, request.vid_slices, request.vid_slice) == (None, None, None)
    assert (request.start_sec, request.end_sec, request.density) == (None, None, None)
    assert request.strip is False
    assert request.is_strip is False
    assert request.format is OutputFormat.JPG
    assert (request.version, request.flavor_id, request.file_name, ks_of(T)) == (None, None, None, None)


# ---------------------------------------------------------------------------------------------------------------
# §2 thumbnail: width, height, def_width, def_height


@pytest.mark.parametrize(
    "params, width, height, mode",
    [
        ("", 120, 90, ResizeMode.FIT),
        ("/width/200", 200, 0, ResizeMode.FIT),
        ("/height/150", 0, 150, ResizeMode.FIT),
        ("/width/200/height/150", 200, 150, ResizeMode.FIT),
        ("/width/0/height/0", 0, 0, ResizeMode.FIT),
        ("/width/0", 0, 0, ResizeMode.FIT),
        ("/width/10000/height/10000", 10000, 10000, ResizeMode.FIT),
        ("/width/10001/height/99999999", 10000, 10000, ResizeMode.FIT),
        ("/width/-1/height/50", 0, 50, ResizeMode.FIT),
        ("/width/50/height/-7", 50, 0, ResizeMode.FIT),
        ("/width/-5", 120, 90, ResizeMode.FIT),
        ("/width/-1/height/-1", 120, 90, ResizeMode.FIT),
        ("?width=", 120, 90, ResizeMode.FIT),
        ("/def_width/300/def_height/200", 300, 200, ResizeMode.FIT),
        ("/def_width/300/def_height/200/width/50", 50, 0, ResizeMode.FIT),
        ("/def_width/300/def_height/200/height/40", 0, 40, ResizeMode.FIT),
        ("/def_width/300/def_height/200/width/-1", 300, 200, ResizeMode.FIT),
        ("/def_width/-1/def_height/-1", 120, 90, ResizeMode.FIT),
        ("/def_width/20000/def_height/20000", 10000, 10000, ResizeMode.FIT),
        ("/width/320!", 320, 0, ResizeMode.STRETCH),
        ("/height/240!", 0, 240, ResizeMode.STRETCH),
        ("/width/320!/height/240/type/3", 320, 240, ResizeMode.STRETCH),
        ("/width/320/height/240!/type/2", 320, 240, ResizeMode.STRETCH),
        ("/width/20000!", 10000, 0, ResizeMode.STRETCH),
        ("/width/320/height/240/type/4", 320, 240, ResizeMode.CROP_TOP),
    ],
)
def test_dimensions(params, width, height, mode):
    request = p(T + params)
    assert (request.width, request.height, request.mode) == (width, height, mode)


@pytest.mark.parametrize("params, name", [
    ("/width/abc", "width"),
    ("/height/abc", "height"),
    ("/width/1.5", "width"),
    ("/width/12px", "width"),
    ("/height/0x10", "height"),
    ("?width=a", "width"),
    ("/def_width/abc", "def_width"),
    ("/def_height/1.5", "def_height"),
])
def test_malformed_dimension_is_bad_request(params, name):
    bad(T + params, name)


# ---------------------------------------------------------------------------------------------------------------
# §2 thumbnail: type, bgcolor, quality


@pytest.mark.parametrize("value, mode", [
    ("1", ResizeMode.FIT), ("2", ResizeMode.PAD), ("3", ResizeMode.CROP_CENTER), ("4", ResizeMode.CROP_TOP),
    ("5", ResizeMode.STRETCH), ("0", ResizeMode.FIT), ("abc", ResizeMode.FIT), ("-1", ResizeMode.FIT),
    ("-7", ResizeMode.FIT), ("6", ResizeMode.STRETCH), ("99", ResizeMode.STRETCH),
    ("123456789012345678901234567890", ResizeMode.STRETCH),
])
def test_type(value, mode):
    assert p(f"{T}/type/{value}").mode is mode


def test_empty_type_is_fit():
    assert p(T + "?type=").mode is ResizeMode.FIT


@pytest.mark.parametrize("value, colour", [
    ("fff", 0x000FFF), ("0", 0), ("ff0000", 0xFF0000), ("FFFFFF", 0xFFFFFF), ("AbC", 0xABC),
    ("000000", 0), ("00ff00", 0x00FF00), ("123456", 0x123456), ("f", 0xF),
])
def test_bgcolor(value, colour):
    assert p(f"{T}/type/2/bgcolor/{value}").bgcolor == colour


def test_bgcolor_absent_or_empty_is_white():
    assert p(T).bgcolor == 0xFFFFFF
    assert p(T + "?bgcolor=").bgcolor == 0xFFFFFF


@pytest.mark.parametrize("value", ["1234567", "fffffff", "xyz", "%23fff", "-1", "0x12", "ff%20ff", "gg"])
def test_bad_bgcolor(value):
    bad(f"{T}/bgcolor/{value}", "bgcolor")


def test_bad_bgcolor_in_query():
    bad(T + "?bgcolor=%23fff", "bgcolor")


@pytest.mark.parametrize("value, quality", [
    ("0", None), ("1", 1), ("75", 75), ("100", 100), ("101", 100), ("150", 100), ("99999", 100),
])
def test_quality(value, quality):
    assert p(f"{T}/quality/{value}").quality == quality


def test_negative_quality_clamps_to_0_the_default():
    # the range is 1..100 plus 0 = default: a negative value is clamped to the nearest end, 0
    assert p(T + "/quality/-5").quality is None


@pytest.mark.parametrize("value", ["abc", "7.5", "high", "1e2"])
def test_bad_quality(value):
    bad(f"{T}/quality/{value}", "quality")


# ---------------------------------------------------------------------------------------------------------------
# §2 thumbnail: region, rel_*


@pytest.mark.parametrize("params, region", [
    ("", Region(0, 0, 0, 0)),
    ("/src_x/10/src_y/20/src_w/30/src_h/40", Region(10, 20, 30, 40)),
    ("/src_x/-5/src_y/-1", Region(0, 0, 0, 0)),
    ("/src_w/20000/src_h/10001", Region(0, 0, 10000, 10000)),
    ("/src_x/10000/src_y/10000", Region(10000, 10000, 0, 0)),
    ("?src_x=7&src_h=9", Region(7, 0, 0, 9)),
])
def test_region(params, region):
    assert p(T + params).region == region


@pytest.mark.parametrize("key", ["src_x", "src_y", "src_w", "src_h"])
def test_bad_region_value(key):
    bad(f"{T}/{key}/abc", key)
    bad(f"{T}/{key}/1.5", key)


@pytest.mark.parametrize("params, rel", [
    ("", (None, None)),
    ("/rel_width/640/rel_height/480", (640, 480)),
    ("/rel_width/640", (640, None)),
    ("/rel_width/-1/rel_height/-1", (None, None)),
    ("/rel_width/0/rel_height/0", (None, None)),
])
def test_rel_size(params, rel):
    request = p(T + "/src_x/10/src_w/100" + params)
    assert (request.rel_width, request.rel_height) == rel
    assert request.region == Region(10, 0, 100, 0)


@pytest.mark.parametrize("key", ["rel_width", "rel_height"])
def test_bad_rel_size(key):
    bad(f"{T}/{key}/abc", key)


# ---------------------------------------------------------------------------------------------------------------
# §2 thumbnail: vid_sec, vid_slices, vid_slice, start_sec, end_sec, strip limit


@pytest.mark.parametrize("value, seconds", [
    ("3", 3.0), ("2.5", 2.5), ("0", 0.0), (".5", 0.5), ("5.", 5.0), ("0.04", 0.04), ("12345.678", 12345.678),
    ("+1.5", 1.5), ("-1", None), ("-0.5", None), ("-30", None),
])
def test_vid_sec(value, seconds):
    assert p(f"{T}/vid_sec/{value}").vid_sec == seconds


def test_vid_sec_absent_or_empty():
    assert p(T).vid_sec is None
    assert p(T + "?vid_sec=").vid_sec is None
    assert p(T + "?vid_sec=1.25").vid_sec == 1.25


@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity", "nan", "NaN", "abc", "1.2.3", "1,5", "9" * 400])
def test_bad_vid_sec(value):
    bad(f"{T}/vid_sec/{value}", "vid_sec")


@pytest.mark.parametrize("params, slices, slice_, is_strip", [
    ("", None, None, False),
    ("/vid_slices/4", 4, None, True),
    ("/vid_slices/4/vid_slice/0", 4, 0, False),
    ("/vid_slices/4/vid_slice/2", 4, 2, False),
    ("/vid_slices/4/vid_slice/3", 4, 3, False),
    ("/vid_slices/4/vid_slice/4", 4, 3, False),
    ("/vid_slices/4/vid_slice/10", 4, 3, False),
    ("/vid_slices/1/vid_slice/5", 1, 0, False),
    ("/vid_slices/4/vid_slice/-1", 4, None, True),
    ("/vid_slice/2", None, None, False),
    ("/vid_slices/-1/vid_slice/2", None, None, False),
    ("/vid_slices/-1", None, None, False),
])
def test_vid_slices(params, slices, slice_, is_strip):
    request = p(T + params)
    assert (request.vid_slices, request.vid_slice, request.is_strip) == (slices, slice_, is_strip)


@pytest.mark.parametrize("params, name", [
    ("/vid_slices/0", "vid_slices"),
    ("/vid_slices/0/vid_slice/0", "vid_slices"),
    ("/vid_slices/abc", "vid_slices"),
    ("/vid_slices/4/vid_slice/abc", "vid_slice"),
    ("/vid_slices/2.5", "vid_slices"),
])
def test_bad_vid_slices(params, name):
    bad(T + params, name)


@pytest.mark.parametrize("params, start, end", [
    ("/start_sec/2/end_sec/5", 2.0, 5.0),
    ("/start_sec/5/end_sec/5", 5.0, 5.0),
    ("/start_sec/1.5", 1.5, None),
    ("/end_sec/7.25", None, 7.25),
    ("/start_sec/-1/end_sec/-1", None, None),
    ("/vid_slices/3/start_sec/10/end_sec/20", 10.0, 20.0),
])
def test_start_end_sec(params, start, end):
    request = p(T + params)
    assert (request.start_sec, request.end_sec) == (start, end)


@pytest.mark.parametrize("params, name", [
    ("/start_sec/5/end_sec/2", "start_sec"),
    ("/start_sec/5.5/end_sec/5.25", "start_sec"),
    ("/vid_slices/3/start_sec/20/end_sec/10", "start_sec"),
    ("/start_sec/abc", "start_sec"),
    ("/end_sec/inf", "end_sec"),
])
def test_bad_start_end_sec(params, name):
    bad(T + params, name)


@pytest.mark.parametrize("params, slices", [
    ("/width/6549/height/10/vid_slices/10", 10),
    ("/width/10/height/6549/vid_slices/10", 10),
    ("/vid_slices/545", 545),  # default box 120×90: 120 × 545 = 65400
    ("/width/0/height/0/vid_slices/500", 500),
    ("/width/200/height/100/vid_slices/4/vid_slice/1", 4),
])
def test_strip_within_limit(params, slices):
    request = p(T + params)
    assert request.vid_slices == slices


@pytest.mark.parametrize("params, width, height, slices, slice_", [
    ("/width/200/vid_slices/4", 200, 0, 4, None),
    ("/height/150/vid_slices/4", 0, 150, 4, None),
    ("/width/6549/vid_slices/10", 6549, 0, 10, None),
    ("/width/320/vid_slices/4/vid_slice/2", 320, 0, 4, 2),
])
def test_strip_with_one_dimension(params, width, height, slices, slice_):
    request = p(T + params)
    assert (request.width, request.height, request.vid_slices, request.vid_slice) == (width, height, slices, slice_)


def test_strip_over_limit_with_only_height_is_bad_request():
    bad(T + "/height/6550/vid_slices/10", "vid_slices")


@pytest.mark.parametrize("params", [
    "/width/6550/height/10/vid_slices/10",
    "/width/6550/vid_slices/10",  # only width given: the width check fires first
    "/width/10/height/6550/vid_slices/10",
    "/width/100/height/6550/vid_slices/10",
    "/vid_slices/546",  # default box 120×90: 120 × 546 = 65520
    "/width/10000/height/1/vid_slices/7",
])
def test_strip_over_limit_is_bad_request(params):
    bad(T + params, "vid_slices")


def test_single_slice_is_not_subject_to_the_strip_limit():
    request = p(T + "/width/1000/vid_slices/100/vid_slice/5")
    assert (request.width, request.vid_slices, request.vid_slice, request.is_strip) == (1000, 100, 5, False)


# ---------------------------------------------------------------------------------------------------------------
# §2 thumbnail: density, strip, format, version, flavor_id, file_name, ks


@pytest.mark.parametrize("value, density", [("72", 72), ("300", 300), ("1", 1), ("0", None), ("-5", None),
                                            ("20000", 10000)])
def test_density(value, density):
    assert p(f"{T}/density/{value}").density == density


def test_bad_density():
    bad(T + "/density/abc", "density")


@pytest.mark.parametrize("value, flag", [
    ("1", True), ("true", True), ("yes", True), ("TRUE", True), ("on", True), ("2", True), ("x", True),
    ("0", False), ("", False), ("false", False), ("False", False), ("no", False), ("off", False),
])
def test_strip_flag(value, flag):
    assert p(f"{T}?strip={value}").strip is flag
    if value:
        assert p(f"{T}/strip/{value}").strip is flag


def test_strip_flag_absent_is_false():
    assert p(T).strip is False


@pytest.mark.parametrize("value, fmt", [
    ("jpg", OutputFormat.JPG), ("jpeg", OutputFormat.JPG), ("JPEG", OutputFormat.JPG), ("JPG", OutputFormat.JPG),
    ("png", OutputFormat.PNG), ("PNG", OutputFormat.PNG), ("gif", OutputFormat.GIF), ("Gif", OutputFormat.GIF),
    ("webp", OutputFormat.WEBP), ("WebP", OutputFormat.WEBP), ("avif", OutputFormat.AVIF), ("AVIF", OutputFormat.AVIF),
])
def test_format(value, fmt):
    assert p(f"{T}/format/{value}").format is fmt


def test_format_absent_or_empty_is_jpg():
    assert p(T).format is OutputFormat.JPG
    assert p(T + "?format=").format is OutputFormat.JPG


@pytest.mark.parametrize("value", ["bogus", "bmp", "tiff", "jpg2", "svg", "j%20pg"])
def test_bad_format(value):
    bad(f"{T}/format/{value}", "format")


@pytest.mark.parametrize("value, version", [
    ("5", 5), ("0", 0), ("10000000", 10_000_000), ("10000001", 10_000_000), ("99999999999", 10_000_000),
    ("-1", None),
])
def test_thumbnail_version(value, version):
    assert p(f"{T}/version/{value}").version == version


def test_thumbnail_version_absent():
    assert p(T).version is None


def test_negative_version_is_absent():
    # every negative version is "absent", like Kaltura's -1 default (SPEC's 0.. range is for given versions)
    assert p(T + "/version/-5").version is None


def test_bad_thumbnail_version():
    bad(T + "/version/abc", "version")


def test_thumbnail_flavor_file_name_ks():
    request = p(T + "/flavor_id/0_fl/file_name/cover/ks/djJ8MTAw")
    assert (request.flavor_id, request.file_name, ks_of(T + "/flavor_id/0_fl/file_name/cover/ks/djJ8MTAw")) == (
        "0_fl", "cover", "djJ8MTAw")
    assert ks_of(T + "?ks=abc") == "abc"
    assert ks_of(T + "/ks/path?ks=query") == "path"


# ---------------------------------------------------------------------------------------------------------------
# §2 thumbnail: equality and cache_key


def test_ks_and_file_name_are_not_part_of_identity():
    a = p(T + "/width/200/ks/AAAA/file_name/NAME1")
    b = p(T + "/width/200?ks=BBBB&file_name=NAME2")
    c = p(T + "/width/200")
    assert (ks_of(T + "/width/200/ks/AAAA/file_name/NAME1"), ks_of(T + "/width/200?ks=BBBB&file_name=NAME2"),
            ks_of(T + "/width/200")) == ("AAAA", "BBBB", None)
    assert a == b == c
    assert hash(a) == hash(b) == hash(c)
    assert a.cache_key() == b.cache_key() == c.cache_key()
    assert "AAAA" not in a.cache_key() and "NAME1" not in a.cache_key()
    assert (a.file_name, b.file_name) == ("NAME1", "NAME2")


BASE_THUMB = "/p/100/sp/10000/thumbnail/entry_id/0_abc/width/200/height/100"


@pytest.mark.parametrize("target", [
    "/p/100/thumbnail/height/100/width/200/entry_id/0_abc",
    "/p/100/thumbnail?entry_id=0_abc&width=200&height=100",
    "/s/p/100/sp/0/thumbnail/entry_id/0_abc?height=100&width=200",
    "/p/100/thumbnail/entry_id/0_abc/width/200?height=100&width=999",
    "//p//100/thumbnail//entry_id/0_abc/width/200/height/100/",
    "/p/100/thumbnail/entryId/0_abc.jpg/width/200.jpg/height/100.png",
    "/p/100/thumbnail/entry_id/0_abc/width/200/height/100/name.jpg",
    "/p/100/thumbnail/entry_id/0_abc/width/200/height/100/type/1/bgcolor/ffffff/quality/0/format/jpeg",
    "/p/100/thumbnail/entry_id/0_abc/width/200/height/100/type/0/bgcolor/FFFFFF/format/JPG/version/-1",
    "/p/100/thumbnail/entry_id/0_abc/width/200/height/100/type/abc/strip/0/density/0/vid_sec/-1",
    "/p/100/thumbnail/entry_id/0_abc/width/200/height/100/src_x/0/src_y/-4/src_w/0/src_h/0",
    "/p/100/thumbnail/entry_id/0_abc/width/200/height/100/rel_width/-1/rel_height/0/vid_slices/-1",
    "/p/100/thumbnail/entry_id/0_abc/width/200/height/100/vid_slice/3/def_width/500/def_height/400",
    "/p/100/thumbnail/entry_id/0_abc/width/100/width/200/height/100/ks/xyz/file_name/foo",
    "/p/100/thumbnail/entry_id/0_abc/width/200/height/100" + UNKNOWN,
])
def test_cache_key_equal_for_equivalent_urls(target):
    assert p(target) == p(BASE_THUMB)
    assert p(target).cache_key() == p(BASE_THUMB).cache_key()


def test_cache_key_equal_for_default_box_spelled_out():
    assert p(T).cache_key() == p(T + "/width/120/height/90").cache_key()
    assert p(T + "/def_width/300/def_height/200").cache_key() == p(T + "/width/300/height/200").cache_key()


DIFFERENT = {
    "base": BASE_THUMB,
    "entry": "/p/100/thumbnail/entry_id/0_abd/width/200/height/100",
    "partner": "/p/101/thumbnail/entry_id/0_abc/width/200/height/100",
    "width": BASE_THUMB.replace("/width/200", "/width/201"),
    "height": BASE_THUMB.replace("/height/100", "/height/101"),
    "forced": BASE_THUMB.replace("/width/200", "/width/200!"),
    "type2": BASE_THUMB + "/type/2",
    "type3": BASE_THUMB + "/type/3",
    "type4": BASE_THUMB + "/type/4",
    "bgcolor": BASE_THUMB + "/type/2/bgcolor/000000",
    "bgcolor-only": BASE_THUMB + "/bgcolor/0",
    "src_x": BASE_THUMB + "/src_x/1",
    "src_y": BASE_THUMB + "/src_y/1",
    "src_w": BASE_THUMB + "/src_w/1",
    "src_h": BASE_THUMB + "/src_h/1",
    "rel_width": BASE_THUMB + "/rel_width/400",
    "rel_height": BASE_THUMB + "/rel_height/300",
    "vid_sec": BASE_THUMB + "/vid_sec/1.5",
    "vid_sec0": BASE_THUMB + "/vid_sec/0",
    "strip-of-4": BASE_THUMB + "/vid_slices/4",
    "slice-1-of-4": BASE_THUMB + "/vid_slices/4/vid_slice/1",
    "slice-2-of-4": BASE_THUMB + "/vid_slices/4/vid_slice/2",
    "start_sec": BASE_THUMB + "/start_sec/1",
    "end_sec": BASE_THUMB + "/end_sec/9",
    "density": BASE_THUMB + "/density/72",
    "strip": BASE_THUMB + "/strip/1",
    "png": BASE_THUMB + "/format/png",
    "webp": BASE_THUMB + "/format/webp",
    "version": BASE_THUMB + "/version/2",
    "version0": BASE_THUMB + "/version/0",
    "flavor": BASE_THUMB + "/flavor_id/0_fl",
}


def test_cache_key_differs_when_any_rendering_parameter_differs():
    requests = {name: p(target) for name, target in DIFFERENT.items()}
    keys = {name: request.cache_key() for name, request in requests.items()}
    assert len(set(keys.values())) == len(keys), keys
    assert len(set(requests.values())) == len(requests)
    assert all(key.startswith("thumbnail|") for key in keys.values())


# ---------------------------------------------------------------------------------------------------------------
# §3 flvclipper


def test_clip_defaults():
    assert p(C) == ClipRequest(entry=ENTRY, flavor_id=None, clip_from_ms=0, clip_to_ms=None, container=None)


@pytest.mark.parametrize("params, clip_from, clip_to", [
    ("/clip_from/1000/clip_to/5000", 1000, 5000),
    ("/clip_from/1000", 1000, None),
    ("/clip_to/5000", 0, 5000),
    ("/clip_from/0/clip_to/1", 0, 1),
    ("/clip_to/0", 0, None),
    ("/clip_from/1000/clip_to/0", 1000, None),
    ("/seek_from/2000", 2000, None),
    ("/seek_from/2000/clip_to/3000", 2000, 3000),
    ("/seek_from/2000/clip_from/1000", 1000, None),
    ("/clip_from/1000/seek_from/2000", 1000, None),
    ("/clip_from/0/seek_from/2000", 0, None),
    ("/clip_from/1000/seek_from/abc", 1000, None),
    ("/clip_from/1000/seek_from/-5", 1000, None),
    ("?clip_from=1000&clip_to=2000", 1000, 2000),
    ("/clip_from/1500?clip_from=10&seek_from=20", 1500, None),
    ("?seek_from=700", 700, None),
    ("/clip_from/86400000/clip_to/86400001", 86_400_000, 86_400_001),
])
def test_clip_window(params, clip_from, clip_to):
    request = p(C + params)
    assert (request.clip_from_ms, request.clip_to_ms) == (clip_from, clip_to)


@pytest.mark.parametrize("params, name", [
    ("/clip_from/5000/clip_to/5000", "clip_from"),
    ("/clip_from/6000/clip_to/5000", "clip_from"),
    ("/seek_from/6000/clip_to/5000", "clip_from"),
    ("/clip_from/-1", "clip_from"),
    ("/clip_to/-5", "clip_to"),
    ("/seek_from/-5", "seek_from"),
    ("/clip_from/abc", "clip_from"),
    ("/clip_to/1s", "clip_to"),
    ("/seek_from/x", "seek_from"),
    ("/clip_from/inf", "clip_from"),
    ("/clip_to/nan", "clip_to"),
    ("?clip_from=1%2C000", "clip_from"),
])
def test_bad_clip_window(params, name):
    bad(C + params, name)


@pytest.mark.parametrize("params, flavor", [
    ("", None), ("/flavor/1", None), ("/flavor/0_fl", "0_fl"), ("/flavor/2", "2"), ("/flavorId/0_fl", "0_fl"),
    ("?flavor=0_q", "0_q"), ("?flavor=1", None), ("/flavor/0_fl?flavor=1", "0_fl"),
])
def test_clip_flavor(params, flavor):
    assert p(C + params).flavor_id == flavor


def test_clip_flavor_id_key_is_not_the_clip_flavor():
    assert p(C + "/flavor_id/0_fl").flavor_id is None


@pytest.mark.parametrize("trailing, container", [
    ("/a.mp4", "mp4"), ("/a.flv", "flv"), ("/.flv", "flv"), ("/.mp4", "mp4"), ("/clip.x.mp4", "mp4"),
    ("/name.jpg", None), ("/a.webm", None), ("/a.mp4.jpg", None), ("/video", None), ("", None),
])
def test_clip_container_from_trailing_name(trailing, container):
    request = p(C + "/clip_to/9000" + trailing)
    assert request.container == container
    assert request.clip_to_ms == 9000


def test_clip_container_with_query_string():
    request = p(C + "/a.mp4?clip_to=1000&novar=0")
    assert (request.container, request.clip_to_ms) == ("mp4", 1000)
    assert p("/flvclipper/entry_id/0_abc/a.flv").container == "flv"


def test_clip_ks_referrer_and_seek_from_bytes():
    request = p(C + "/ks/KKK/referrer/aHR0cDovL3g/seek_from_bytes/12345")
    assert (ks_of(C + "/ks/KKK/referrer/aHR0cDovL3g/seek_from_bytes/12345"), request.referrer) == ("KKK", "aHR0cDovL3g")
    assert request == p(C)  # ks and referrer are not identity; seek_from_bytes is ignored
    assert request.cache_key() == p(C).cache_key()
    assert "KKK" not in request.cache_key()


def test_clip_cache_key():
    same = [C + "/clip_from/1000/clip_to/2000/a.mp4",
            "/p/100/flvclipper/clip_to/2000/entryId/0_abc/clip_from/1000/x.mp4",
            "/p/100/flvclipper/entry_id/0_abc/a.mp4?clip_from=1000&clip_to=2000",
            "/s/p/100/flvclipper/entry_id/0_abc/seek_from/1000/clip_to/2000/flavor/1/a.mp4"]
    assert len({p(target).cache_key() for target in same}) == 1
    different = [C, C + "/a.mp4", C + "/a.flv", C + "/clip_from/1", C + "/clip_to/9", C + "/flavor/0_fl",
                 "/flvclipper/entry_id/0_abc", "/p/100/flvclipper/entry_id/0_abd"]
    assert len({p(target).cache_key() for target in different}) == len(different)


# ---------------------------------------------------------------------------------------------------------------
# §4 raw


def test_raw_defaults():
    request = p(R)
    assert request == RawRequest(entry=ENTRY, selector=FileSelector(), file_name=None, direct_serve=False)
    assert request.selector == FileSelector(flavor_id=None, version=None, extension=None)


@pytest.mark.parametrize("params, selector", [
    ("/flavor_id/0_fl", FileSelector(flavor_id="0_fl")),
    ("/flavorId/0_fl", FileSelector(flavor_id="0_fl")),
    ("/version/3", FileSelector(version=3)),
    ("/version/0", FileSelector(version=0)),
    ("/version/-1", FileSelector()),
    ("/version/99999999", FileSelector(version=10_000_000)),
    ("/flavor_id/0_fl/version/2", FileSelector(flavor_id="0_fl", version=2)),
    ("/type/download/format/mp4", FileSelector(extension="mp4")),
    ("/format/mp4/type/download", FileSelector(extension="mp4")),
    ("/type/DOWNLOAD/format/MP4", FileSelector(extension="mp4")),
    ("/type/download/format/webm/flavor_id/0_fl", FileSelector(flavor_id="0_fl", extension="webm")),
    ("?type=download&format=mp3", FileSelector(extension="mp3")),
    ("/format/mp4", FileSelector()),
    ("/type/download", FileSelector()),
    ("/type/other/format/mp4", FileSelector()),
    ("/relocate/1/forceproxy/true/type/download", FileSelector()),
])
def test_raw_selector(params, selector):
    assert p(R + params).selector == selector


@pytest.mark.parametrize("params, name", [
    ("/type/download/format/m%20p4", "format"),
    ("/type/download/format/..", "format"),
    ("/type/download/format/a%2Fb", "format"),
    ("/type/download/format/abcdefghijk", "format"),
    ("/version/abc", "version"),
])
def test_bad_raw_parameters(params, name):
    bad(R + params, name)


@pytest.mark.parametrize("params, file_name", [
    ("", None), ("/file_name/movie.mp4", "movie.mp4"), ("/file_name/my%20movie", "my movie"),
    ("?file_name=", None), ("?file_name=report.pdf", "report.pdf"), ("/file_name/a.png", "a.png"),
])
def test_raw_file_name(params, file_name):
    assert p(R + params).file_name == file_name


@pytest.mark.parametrize("value, flag", [
    ("1", True), ("true", True), ("yes", True), ("on", True),
    ("0", False), ("", False), ("false", False), ("no", False), ("off", False),
])
def test_raw_direct_serve(value, flag):
    assert p(R + "?direct_serve=" + value).direct_serve is flag


def test_raw_direct_serve_absent_and_ks():
    assert p(R).direct_serve is False
    assert p(R + "/direct_serve/1").direct_serve is True
    request = p(R + "/ks/KKK")
    assert ks_of(R + "/ks/KKK") == "KKK"
    assert request == p(R)  # the KS is not identity
    assert ks_of(R + "/ks/path?ks=query") == "path"


# ---------------------------------------------------------------------------------------------------------------
# redact_ks


@pytest.mark.parametrize("target, redacted", [
    ("/p/1/raw/entry_id/x/ks/SECRET/a.mp4", "/p/1/raw/entry_id/x/ks/[redacted]/a.mp4"),
    ("/p/1/raw/entry_id/x/ks/SECRET", "/p/1/raw/entry_id/x/ks/[redacted]"),
    ("/p/1/raw/ks/SECRET/entry_id/x", "/p/1/raw/ks/[redacted]/entry_id/x"),
    ("/p/1/raw/entry_id/x/ks/SECRET?a=1", "/p/1/raw/entry_id/x/ks/[redacted]?a=1"),
    ("/p/1/raw/entry_id/x?ks=SECRET", "/p/1/raw/entry_id/x?ks=[redacted]"),
    ("/p/1/raw/entry_id/x?ks=SECRET&a=1", "/p/1/raw/entry_id/x?ks=[redacted]&a=1"),
    ("/p/1/raw/entry_id/x?a=1&ks=SECRET", "/p/1/raw/entry_id/x?a=1&ks=[redacted]"),
    ("/p/1/raw/entry_id/x/ks/SECRET?ks=SECRET2", "/p/1/raw/entry_id/x/ks/[redacted]?ks=[redacted]"),
    ("/p/1/raw/ks/A/entry_id/x/ks/B?ks=C&ks=D",
     "/p/1/raw/ks/[redacted]/entry_id/x/ks/[redacted]?ks=[redacted]&ks=[redacted]"),
    ("/p/1/raw/entry_id/x/ks/djJ8MTAwfGFiYw%3D%3D", "/p/1/raw/entry_id/x/ks/[redacted]"),
    ("/p/1/raw/entry_id/x", "/p/1/raw/entry_id/x"),
    ("/p/1/raw/entry_id/x?xks=1&ks_other=2&aks=3", "/p/1/raw/entry_id/x?xks=1&ks_other=2&aks=3"),
    ("/p/1/raw/entry_id/x/aks/1/ksx/2", "/p/1/raw/entry_id/x/aks/1/ksx/2"),
])
def test_redact_ks(target, redacted):
    assert redact_ks(target) == redacted


@pytest.mark.parametrize("target", [
    pytest.param("/p/1/raw/entry_id/x/ks//SECRET", id="double-slash"),
    pytest.param("/p/1/raw/entry_id/x/%6Bs/SECRET", id="encoded-key-path"),
    pytest.param("/p/1/raw/entry_id/x?k%73=SECRET", id="encoded-key-query"),
    pytest.param("/p/1/raw/entry_id/ks/ks/SECRET", id="value-ks-before-key-ks"),
])
def test_redact_ks_covers_every_ks_the_parser_reads(target):
    assert ks_of(target) == "SECRET"
    assert "SECRET" not in redact_ks(target)


def test_quality_is_left_to_the_service():
    # the partner's default decides what "no quality" means, so the service appends the effective quality
    assert p(BASE_THUMB + "/quality/80").cache_key() == p(BASE_THUMB).cache_key()
    assert p(BASE_THUMB + "/quality/80").quality == 80


# ---------------------------------------------------------------------------------------------------------------
# no secrets in memos (the KS travels beside the request, never into a memo)


def _reachable_strings(roots) -> list[str]:
    """Every string reachable from `roots` through containers and mediaproxy's own values (not through functions,
    types or modules, which lead to the whole interpreter)."""
    import gc
    import types

    seen, strings, stack = set(), [], list(roots)
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, str):
            strings.append(item)
        elif isinstance(item, (dict, list, tuple, set, frozenset)) or type(item).__module__.startswith("mediaproxy"):
            stack += [referent for referent in gc.get_referents(item) if not isinstance(
                referent, (type, types.FunctionType, types.ModuleType, types.BuiltinFunctionType))]
    return strings


def test_no_ks_is_kept_in_the_parse_memos():
    import gc

    from mediaproxy import urls

    secrets = [f"SECRETKS{index}" for index in range(8)]
    targets = [T + f"/ks/{secrets[0]}", T + f"/width/10/ks/{secrets[1]}.jpg", R + f"?ks={secrets[2]}",
               R + f"?a=1&ks={secrets[3]}&b=2", C + f"/k%73/{secrets[4]}/clip_to/900", R + f"?k%73={secrets[5]}",
               "/s/flvclipper/entry_id/0_abc//ks//" + secrets[6], R + f"/ks/{secrets[7]}?ks=other"]
    for target, secret in zip(targets, secrets):
        parsed = parse_target(target, DEFAULT_PARTNER)
        assert parsed.ks == secret  # read as before...
        assert secret not in repr(parsed)  # ...never shown
        if isinstance(parsed.request, ThumbnailRequest):
            parsed.request.cache_key()  # fills the memo of the reprs in cache keys too
    memos = [referent for memo in (urls._parse_without_ks, urls._repr)
             for referent in gc.get_referents(memo) if isinstance(referent, dict)]
    assert memos, "the lru_cache memos were not found"
    strings = _reachable_strings(memos)
    assert any("0_abc" in text for text in strings)  # the walk does reach the remembered readings
    assert not [text for text in strings if "SECRETKS" in text or "other" == text]


def test_a_ks_moves_no_other_parameter():
    # the KS split keeps every other pair where the parser would read it
    for target in [T + "/ks/K/width/200/name.jpg", T + "/width/200/ks/K?height=5&ks=Q",
                   "/s/p/100/raw/ks/K/entry_id/0_abc", "/p/100/raw/entry_id/ks/ks/K", C + "/ks/K/clip_to/500/a.flv",
                   R + "?ks=K&file_name=a+b&ks"]:
        plain = target.replace("/ks/K", "").replace("ks=K&", "").replace("&ks=Q", "").replace("&ks", "")
        if target == "/p/100/raw/entry_id/ks/ks/K":
            plain = "/p/100/raw/entry_id/ks"
        assert parse_target(target, DEFAULT_PARTNER).request == parse_target(plain, DEFAULT_PARTNER).request, target


# ------------------------------------------------------------------------------------ the plain thumbnail reading

_KEYS = ["entry_id", "width", "height", "type", "quality", "version", "format", "bgcolor", "entryId", "def_width",
         "vid_sec", "src_x", "nope"]
_VALUES = ["0", "1", "3", "5", "6", "00320", "320", "100", "101", "10000", "10001", "9999999", "10000001",
           "123456789", "0_abc", "0_x" * 30, "abc", "320!", "jpg", "-1", "1.5", "x%41", ""]
_PREFIXES = ["/p/100/sp/10000/thumbnail", "/p/100/thumbnail", "/p/0100/sp/0/thumbnail", "/s/p/100/thumbnail",
             "/p/100/sp/x/thumbnail", "/p/1234567890123456789/thumbnail", "/p/100/raw"]
_TAILS = ["", "/", "/a.jpg", "?width=5", "//"]
_PLAIN_ISH = [(key, value) for key in ("width", "height", "type", "quality", "version")
              for value in ("0", "1", "3", "5", "6", "00320", "320", "100", "101", "10000", "10001", "10000001")]
_TARGETS = st.builds(  # mostly of the plain shape, with values at and past the edges of its ranges
    lambda prefix, entry, pairs, tail: prefix + entry + "".join(f"/{key}/{value}" for key, value in pairs) + tail,
    st.sampled_from(_PREFIXES[:3]), st.just("/entry_id/0_abc") | st.just("/entry_id/" + "x" * 64),
    st.lists(st.sampled_from(_PLAIN_ISH), max_size=5, unique_by=lambda pair: pair[0]),
    st.sampled_from(_TAILS[:2])) | st.builds(  # and anything else
    lambda prefix, pairs, tail: prefix + "".join(f"/{key}/{value}" for key, value in pairs) + tail,
    st.sampled_from(_PREFIXES), st.lists(st.tuples(st.sampled_from(_KEYS), st.sampled_from(_VALUES)), max_size=7),
    st.sampled_from(_TAILS))


@settings(max_examples=3000, deadline=None, database=None)
@given(target=_TARGETS)
def test_the_plain_reading_answers_exactly_what_the_general_one_does(target):
    plain = urls._plain_thumbnail(target)
    if plain is None:
        return
    try:
        general = urls._parse_general(target, DEFAULT_PARTNER)
    except (BadRequest, NotFound) as error:
        raise AssertionError(f"{target}: read plainly, refused generally ({error})") from None
    assert plain == general, target
    assert (plain.request.format_given, plain.request.file_name) == (general.request.format_given,
                                                                      general.request.file_name)
    assert plain.request.cache_key() == general.request.cache_key()


@settings(max_examples=1000, deadline=None, database=None)
@given(target=_TARGETS)
def test_the_spelt_out_cache_key_is_the_documented_one(target):
    try:
        request = urls._parse_general(target, DEFAULT_PARTNER).request
    except (BadRequest, NotFound):
        return
    if isinstance(request, ThumbnailRequest):
        assert request.cache_key() == "thumbnail|" + "|".join(f"{name}={getattr(request, name)!r}"
                                                              for name in urls._THUMBNAIL_KEY_PARTS)


@pytest.mark.parametrize("target", [
    f"{T}/width/320/height/240/version/7", f"{T}/width/480/height/360/type/3/version/12", f"{T}/width/320",
    "/p/100/thumbnail/entry_id/0_abc/height/90/type/4/quality/80/", f"{T}/version/3/width/640"])
def test_the_commonest_thumbnail_urls_are_read_plainly(target):
    assert urls._plain_thumbnail(target) == urls._parse_general(target, DEFAULT_PARTNER) == parse_target(target, 1)
