"""format/auto (SPEC §2): the smallest format the client's Accept allows, answered with `Vary: Accept`, an ETag and
a result-cache entry per chosen format; `[http] auto_format` (and a partner's own) makes URLs without a format
negotiate too."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from fixtures.generate import alpha_png, photo_like_jpeg
from mediaproxy.services.thumbnail import accepted_formats, negotiate
from mediaproxy.urls import OutputFormat, canonical_path, parse

from .conftest import make_config, make_entry

THUMB = "/p/100/sp/10000/thumbnail"
CHROME = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
FIREFOX_OLD = "image/webp,*/*"
SAFARI_OLD = "image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5"
CONTENT_TYPES = {OutputFormat.JPG: "image/jpeg", OutputFormat.PNG: "image/png", OutputFormat.WEBP: "image/webp",
                 OutputFormat.AVIF: "image/avif", OutputFormat.GIF: "image/gif"}
PILLOW_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/avif": "AVIF"}

# (Accept, what an opaque picture gets, what a picture with alpha gets)
ACCEPT_SHAPES = [
    pytest.param(CHROME, OutputFormat.AVIF, OutputFormat.AVIF, id="chrome"),
    pytest.param(FIREFOX_OLD, OutputFormat.WEBP, OutputFormat.WEBP, id="webp-only"),
    pytest.param(SAFARI_OLD, OutputFormat.JPG, OutputFormat.PNG, id="neither-but-image/*"),
    pytest.param("*/*", OutputFormat.JPG, OutputFormat.PNG, id="anything"),
    pytest.param("", OutputFormat.JPG, OutputFormat.PNG, id="no-accept"),
    pytest.param("image/avif;q=0, image/webp;q=0.5", OutputFormat.WEBP, OutputFormat.WEBP, id="avif-refused"),
    pytest.param("image/avif; q=0.0, image/webp; q=0", OutputFormat.JPG, OutputFormat.PNG, id="both-refused"),
    pytest.param("IMAGE/AVIF", OutputFormat.AVIF, OutputFormat.AVIF, id="case"),
    pytest.param("image/avif;q=x", OutputFormat.JPG, OutputFormat.PNG, id="malformed-q"),
    pytest.param("text/html, image/webp;level=1;q=0.9", OutputFormat.WEBP, OutputFormat.WEBP, id="parameters"),
]


@pytest.mark.parametrize("accept, opaque, alpha", ACCEPT_SHAPES)
def test_negotiation_rule(accept, opaque, alpha):
    assert negotiate(accept, alpha=False, animated=False) is opaque
    assert negotiate(accept, alpha=True, animated=False) is alpha


def test_an_animation_kept_is_webp_where_taken_else_gif():
    assert negotiate(CHROME, alpha=False, animated=True) is OutputFormat.WEBP
    assert negotiate(SAFARI_OLD, alpha=True, animated=True) is OutputFormat.GIF


def test_accept_parsing_counts_only_named_types():
    assert accepted_formats("image/*,*/*") == frozenset()
    assert accepted_formats(" image/webp ; q=1 ,image/avif") == {OutputFormat.WEBP, OutputFormat.AVIF}


def test_the_grammar_reads_auto_and_whether_a_format_was_given():
    auto = parse(f"{THUMB}/entry_id/0_a/format/AUTO", 100)
    assert auto.format is OutputFormat.AUTO and auto.format_given
    absent, explicit = parse(f"{THUMB}/entry_id/0_a", 100), parse(f"{THUMB}/entry_id/0_a/format/jpg", 100)
    assert (absent.format_given, explicit.format_given) == (False, True)
    assert absent == explicit and absent.cache_key() == explicit.cache_key()  # the same picture when not negotiated
    assert auto.cache_key() != absent.cache_key()
    # which the canonical path keeps: under [http] auto_format the two differ
    assert canonical_path(explicit).endswith("/format/jpg") and "format" not in canonical_path(absent)
    assert canonical_path(auto).endswith("/format/auto")


@pytest.fixture
def origin(tmp_path):
    root = tmp_path / "origin"
    make_entry(root, 100, "0_photo", {"original.jpg": photo_like_jpeg(640, 480, seed=8)})
    make_entry(root, 100, "0_alpha", {"original.png": alpha_png(160, 120)})
    make_entry(root, 200, "0_photo", {"original.jpg": photo_like_jpeg(640, 480, seed=8)})
    return root


def config(tmp_path, root, extra: str = ""):
    return make_config(tmp_path, f'kind = "local"\nroot = "{root}"', extra)


async def fetch(client, path: str, accept: str | None, **headers):
    sent = {**({"Accept": accept} if accept is not None else {}), **headers}
    response = await client.get(path, headers=sent, skip_auto_headers=["Accept"])
    body = await response.read()
    return response, body


@pytest.mark.parametrize("accept, opaque, alpha", ACCEPT_SHAPES)
async def test_format_auto_over_http(serve, tmp_path, origin, accept, opaque, alpha):
    client = await serve(config(tmp_path, origin))
    for entry, chosen, probe_xy in (("0_photo", opaque, None), ("0_alpha", alpha, (120, 30))):
        response, body = await fetch(client, f"{THUMB}/entry_id/{entry}/width/80/format/auto", accept or None)
        assert response.status == 200, body[:200]
        assert response.headers["Content-Type"] == CONTENT_TYPES[chosen]
        assert response.headers["Vary"] == "Accept"
        picture = Image.open(io.BytesIO(body))
        assert picture.format == PILLOW_FORMATS[CONTENT_TYPES[chosen]]
        assert picture.size == (80, 60)
        if probe_xy and chosen is not OutputFormat.JPG:  # alpha_png's top-right quarter is transparent
            assert picture.convert("RGBA").getpixel((60, 15))[3] == 0


async def test_vary_and_etags(serve, tmp_path, origin):
    client = await serve(config(tmp_path, origin))
    auto = f"{THUMB}/entry_id/0_photo/width/80/format/auto"
    avif, _ = await fetch(client, auto, CHROME)
    avif_again, _ = await fetch(client, auto, "image/avif,*/*")  # another string, the same answer
    webp, _ = await fetch(client, auto, FIREFOX_OLD)
    jpeg, _ = await fetch(client, auto, "*/*")
    tags = [response.headers["ETag"] for response in (avif, webp, jpeg)]
    assert len(set(tags)) == 3
    assert avif_again.headers["ETag"] == avif.headers["ETag"]
    assert all(response.headers["Vary"] == "Accept" for response in (avif, avif_again, webp, jpeg))

    # a format named in the URL is not negotiated: no Vary
    for path in (f"{THUMB}/entry_id/0_photo/width/80", f"{THUMB}/entry_id/0_photo/width/80/format/webp"):
        fixed, _ = await fetch(client, path, CHROME)
        assert "Vary" not in fixed.headers
        assert fixed.headers["Content-Type"] == ("image/webp" if path.endswith("webp") else "image/jpeg")

    # a client's copy is current only for the format it would get now
    same, body = await fetch(client, auto, CHROME, **{"If-None-Match": avif.headers["ETag"]})
    assert same.status == 304 and body == b"" and same.headers["Vary"] == "Accept"
    other, body = await fetch(client, auto, FIREFOX_OLD, **{"If-None-Match": avif.headers["ETag"]})
    assert other.status == 200 and other.headers["Content-Type"] == "image/webp"


async def test_each_chosen_format_is_rendered_once_and_cached_apart(serve, tmp_path, origin):
    client = await serve(config(tmp_path, origin))
    auto = f"{THUMB}/entry_id/0_photo/width/90/format/auto"
    tiers = []
    bodies = {}
    for accept in (CHROME, FIREFOX_OLD, CHROME, "*/*", FIREFOX_OLD, "*/*"):
        response, body = await fetch(client, auto, accept)
        tiers.append(response.headers["Server-Timing"].rpartition("desc=")[2])
        bodies.setdefault(response.headers["Content-Type"], set()).add(body)
    assert tiers == ["render", "render", "memory", "render", "memory", "memory"]
    assert all(len(variants) == 1 for variants in bodies.values()) and len(bodies) == 3


async def test_auto_format_switch_makes_urls_without_format_negotiate(serve, tmp_path, origin):
    client = await serve(config(tmp_path, origin, "[http]\nauto_format = true\n\n[partners.200]\nauto_format = false"))
    plain, _ = await fetch(client, f"{THUMB}/entry_id/0_photo/width/80", CHROME)
    assert plain.headers["Content-Type"] == "image/avif" and plain.headers["Vary"] == "Accept"
    old, _ = await fetch(client, f"{THUMB}/entry_id/0_photo/width/80", SAFARI_OLD)
    assert old.headers["Content-Type"] == "image/jpeg" and old.headers["Vary"] == "Accept"
    assert old.headers["ETag"] != plain.headers["ETag"]
    # format/jpg asks for JPEG whatever the switch
    fixed, body = await fetch(client, f"{THUMB}/entry_id/0_photo/width/80/format/jpg", CHROME)
    assert fixed.headers["Content-Type"] == "image/jpeg" and "Vary" not in fixed.headers
    assert Image.open(io.BytesIO(body)).format == "JPEG"
    # partner 200 turned it off for itself
    other, _ = await fetch(client, "/p/200/sp/20000/thumbnail/entry_id/0_photo/width/80", CHROME)
    assert other.headers["Content-Type"] == "image/jpeg" and "Vary" not in other.headers


async def test_a_partner_may_turn_auto_format_on_for_itself(serve, tmp_path, origin):
    client = await serve(config(tmp_path, origin, "[partners.200]\nauto_format = true"))
    on, _ = await fetch(client, "/p/200/sp/20000/thumbnail/entry_id/0_photo/width/80", FIREFOX_OLD)
    off, _ = await fetch(client, f"{THUMB}/entry_id/0_photo/width/80", FIREFOX_OLD)
    assert on.headers["Content-Type"] == "image/webp" and on.headers["Vary"] == "Accept"
    assert off.headers["Content-Type"] == "image/jpeg" and "Vary" not in off.headers


async def test_video_frames_and_audio_placeholders_negotiate_too(client):
    frame, body = await fetch(client, f"{THUMB}/entry_id/0_video/width/64/vid_sec/1/format/auto", FIREFOX_OLD)
    assert frame.headers["Content-Type"] == "image/webp" and Image.open(io.BytesIO(body)).width == 64
    placeholder, body = await fetch(client, f"{THUMB}/entry_id/0_audio/width/64/format/auto", "*/*")
    assert placeholder.status == 200 and placeholder.headers["Vary"] == "Accept"
    assert Image.open(io.BytesIO(body)).width == 64


def _psnr(image: Image.Image, reference: Image.Image) -> float:
    import math

    from PIL import ImageChops

    histogram = ImageChops.difference(image.convert("RGB"), reference.convert("RGB")).histogram()
    squares = sum(value * value * count for channel in range(3)
                  for value, count in enumerate(histogram[channel * 256:(channel + 1) * 256]))
    return 10 * math.log10(255 ** 2 * 3 * image.width * image.height / max(squares, 1))


async def test_a_negotiated_format_keeps_jpegs_fidelity_in_fewer_bytes(serve, tmp_path):
    """The quality asked (or the default) was meant for JPEG: a negotiated AVIF or WebP uses its own setting of
    about that fidelity (SPEC §2), so it is smaller than the JPEG answer and about as close to the picture."""
    root = tmp_path / "origin"
    make_entry(root, 100, "0_big", {"original.jpg": photo_like_jpeg(1920, 1080, quality=90, seed=1)})
    client = await serve(config(tmp_path, root))
    path = f"{THUMB}/entry_id/0_big/width/640/height/480/type/3"
    _, lossless = await fetch(client, path + "/format/png", None)
    reference = Image.open(io.BytesIO(lossless))
    _, jpeg = await fetch(client, path + "/format/auto", "*/*")
    for accept in ("image/avif,image/webp,*/*", "image/webp,*/*"):
        response, body = await fetch(client, path + "/format/auto", accept)
        assert response.headers["Content-Type"] != "image/jpeg"
        assert len(body) < 0.8 * len(jpeg), (accept, len(body), len(jpeg))
        picture = Image.open(io.BytesIO(body))
        assert _psnr(picture, reference) > _psnr(Image.open(io.BytesIO(jpeg)), reference) - 1.0, accept
