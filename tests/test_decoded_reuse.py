"""Other sizes of a hot original skip decoding, and give exactly the bytes a fresh decode gives."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from fixtures.generate import alpha_png, photo_like_jpeg
from mediaproxy.media.decode import reduction
from mediaproxy.media.thumbnail import RenderSettings, decode_and_render, plan_for, render_decoded, render_image
from mediaproxy.urls import parse

from .conftest import make_config, make_entry

SETTINGS = RenderSettings(75)
SIZES = ["width/64", "width/200/height/150/type/3", "width/300/height/300/type/2/bgcolor/ff0000",
         "width/90/format/png", "width/120/height/80/type/4/strip/1", "width/0/height/0", "width/2000"]


def thumb(path: str):
    return parse(f"/p/100/thumbnail/entry_id/x/{path}", 100)


@pytest.mark.parametrize("source", ["jpeg", "rotated_jpeg", "png"])
def test_a_kept_decode_renders_every_size_of_its_scale_byte_for_byte(source):
    data = {"jpeg": lambda: photo_like_jpeg(1600, 1000, seed=3),
            "rotated_jpeg": lambda: photo_like_jpeg(1600, 1000, seed=4, exif_orientation=6),
            "png": lambda: alpha_png(800, 600)}[source]()
    image = Image.open(io.BytesIO(data))
    swapped = source == "rotated_jpeg"
    oriented = (image.height, image.width) if swapped else image.size
    kept: dict[int, object] = {}
    for size in SIZES:
        request = thumb(size)
        scale = reduction(image.size, plan_for(request, oriented, SETTINGS)) if image.format == "JPEG" else 1
        fresh = render_image(request, data, SETTINGS)
        if scale in kept:
            reused = render_decoded(request, kept[scale], SETTINGS)
            assert "decode" not in reused.timings
        else:
            kept[scale], reused = decode_and_render(request, data, scale, SETTINGS)
        assert reused.body == fresh.body, (size, scale)
        assert (reused.width, reused.height) == (fresh.width, fresh.height)
    if image.format == "JPEG":
        assert len(kept) > 1  # small sizes decode at a reduced scale, big ones at full size


def test_the_kept_picture_is_never_changed_by_rendering():
    data = alpha_png(300, 200)
    decoded, _ = decode_and_render(thumb("width/0/height/0/format/png"), data, 1, SETTINGS)
    before = decoded.image.tobytes()
    for size in ("width/0/height/0", "width/0/height/0/format/png/density/300", "width/100/bgcolor/00ff00"):
        render_decoded(thumb(size), decoded, SETTINGS)
    assert decoded.image.tobytes() == before and not decoded.image.info.get("dpi")


async def test_over_http_a_second_size_skips_the_decode_and_matches_a_fresh_server(serve, tmp_path):
    root = tmp_path / "origin"
    make_entry(root, 100, "0_big", {"original.jpg": photo_like_jpeg(2400, 1600, seed=9)})
    origin = f'kind = "local"\nroot = "{root}"'
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    warm = await serve(make_config(tmp_path / "a", origin))
    fresh = await serve(make_config(tmp_path / "b", origin))
    base = "/p/100/sp/10000/thumbnail/entry_id/0_big"
    first = await warm.get(f"{base}/width/150")
    assert "decode;dur=" in first.headers["Server-Timing"]
    second = await warm.get(f"{base}/width/120/height/120/type/3")  # another size at the same JPEG scale
    assert second.status == 200
    assert "decode;dur=" not in second.headers["Server-Timing"]
    assert "resize;dur=" in second.headers["Server-Timing"]
    reference = await fresh.get(f"{base}/width/120/height/120/type/3")
    assert await second.read() == await reference.read()
    assert second.headers["ETag"] == reference.headers["ETag"]
