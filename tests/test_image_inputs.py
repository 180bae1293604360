"""HEIC/HEIF (phone photos, through pillow-heif) and AVIF originals (SPEC §2 "Input formats"): read by their content,
shown upright whatever their orientation, with their pixels where they belong; and over HTTP."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from fixtures.generate import photo_like_image
from mediaproxy.media.probe import MediaKind, probe

from .conftest import make_config, make_entry
from .test_media_image import (BLUE, GREEN, JPEG_TOLERANCE, MARKER_CORNER, ORIENTATION, RED, YELLOW, STORED_AS,
                               assert_colour, corners, encoded, is_red, quadrants, render)

FORMATS = ("HEIF", "AVIF")


def with_orientation(picture: Image.Image, pillow_format: str, orientation: int, **options) -> bytes:
    """`picture` stored as it is, with an EXIF orientation (HEIF writers turn it into the container's rotation
    and mirroring, which is what phones write)."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encoded(picture, pillow_format, exif=exif.tobytes(), quality=90, **options)


@pytest.mark.parametrize("pillow_format", FORMATS)
def test_is_probed_as_an_image_by_its_content(pillow_format):
    data = encoded(quadrants(64, 48), pillow_format, quality=90)
    info = probe(io.BytesIO(data), "whatever.bin")
    assert info.kind is MediaKind.IMAGE
    assert (info.mime_type, info.extension) == {"HEIF": ("image/heif", "heic"), "AVIF": ("image/avif", "avif")}[
        pillow_format]
    assert (info.width, info.height, info.alpha) == (64, 48, False)


@pytest.mark.parametrize("pillow_format", FORMATS)
def test_pixels_land_where_they_belong(pillow_format):
    _, output = render(encoded(quadrants(120, 80), pillow_format, quality=95), "width/60/format/png")
    assert output.size == (60, 40)
    for xy, colour in [((15, 10), RED), ((45, 10), GREEN), ((15, 30), BLUE), ((45, 30), YELLOW)]:
        assert_colour(output, xy, colour, JPEG_TOLERANCE)


@pytest.mark.parametrize("pillow_format, orientation", [(f, o) for f in FORMATS for o in range(1, 9)])
def test_orientation_puts_the_marker_in_the_right_corner(pillow_format, orientation):
    # photo_like_image has a red square in its stored top-left corner; the output must show it where a JPEG of
    # that EXIF orientation shows it
    source = with_orientation(photo_like_image(200, 120, seed=2), pillow_format, orientation)
    _, output = render(source, "width/0/height/0")
    assert output.size == ((120, 200) if orientation >= 5 else (200, 120))
    marked = [name for name, xy in corners(output.size, 5).items() if is_red(output.getpixel(xy))]
    assert marked == [MARKER_CORNER[orientation]]
    assert output.getexif().get(ORIENTATION) is None


@pytest.mark.parametrize("pillow_format", FORMATS)
def test_every_orientation_gives_the_same_upright_quadrants(pillow_format):
    upright = quadrants(90, 60)
    for orientation in range(1, 9):
        stored = upright.transpose(STORED_AS[orientation]) if STORED_AS[orientation] is not None else upright
        _, output = render(with_orientation(stored, pillow_format, orientation), "width/45/format/png")
        assert output.size == (45, 30), orientation
        for xy, colour in [((11, 7), RED), ((33, 7), GREEN), ((11, 22), BLUE), ((33, 22), YELLOW)]:
            assert_colour(output, xy, colour, JPEG_TOLERANCE)


def test_alpha_of_an_avif_is_kept_in_png_and_painted_in_jpg():
    picture = Image.new("RGBA", (80, 40), (255, 0, 0, 255))
    picture.paste((0, 0, 0, 0), (40, 0, 80, 40))
    source = encoded(picture, "AVIF", quality=95)
    assert probe(io.BytesIO(source)).alpha
    _, kept = render(source, "width/40/format/png")
    assert kept.mode == "RGBA" and kept.getpixel((30, 10))[3] == 0 and kept.getpixel((10, 10))[3] == 255
    _, painted = render(source, "width/40/format/jpg/bgcolor/0000ff")
    assert_colour(painted, (30, 10), BLUE, JPEG_TOLERANCE)
    assert_colour(painted, (10, 10), RED, JPEG_TOLERANCE)


async def test_heic_and_avif_originals_over_http(serve, tmp_path):
    root = tmp_path / "origin"
    stored = photo_like_image(300, 200, seed=4)
    make_entry(root, 100, "0_heic", {"original.heic": with_orientation(stored, "HEIF", 6)})
    make_entry(root, 100, "0_avif", {"original.avif": with_orientation(stored, "AVIF", 8)})
    client = await serve(make_config(tmp_path, f'kind = "local"\nroot = "{root}"'))
    for entry, corner in (("0_heic", MARKER_CORNER[6]), ("0_avif", MARKER_CORNER[8])):
        response = await client.get(f"/p/100/sp/10000/thumbnail/entry_id/{entry}/width/100")
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "image/jpeg"
        output = Image.open(io.BytesIO(await response.read()))
        assert output.size == (100, 150)  # upright: portrait
        marked = [name for name, xy in corners(output.size, 3).items() if is_red(output.getpixel(xy))]
        assert marked == [corner], entry
        raw = await client.get(f"/p/100/sp/10000/raw/entry_id/{entry}")
        assert raw.headers["Content-Type"] == {"0_heic": "image/heif", "0_avif": "image/avif"}[entry]
