"""Thumbnails of images on real pixels (SPEC §2): decode, orientation, shrink-on-load, the five modes, pre-crop,
alpha and bgcolor, output formats, quality, density, metadata, source pixel modes and decode errors.

Pictures are built here with Pillow (solid quadrants, bands and grids of known colours) or by fixtures/generate.py;
a test samples colours at known points to prove where a crop fell and where the padding is. PNG output is used
where exact colours help; JPEG outputs are compared with a tolerance.
"""

from __future__ import annotations

import io
import os
import random
import struct
import threading
import time
import zlib

import pytest
from PIL import Image, ImageChops, ImageCms, ImageStat

from fixtures.generate import alpha_png, animated_gif, photo_like_image, photo_like_jpeg
from mediaproxy.errors import TooLarge, Unprocessable
from mediaproxy.media import encode as encoding
from mediaproxy.media.decode import decode
from mediaproxy.media.geometry import plan_thumbnail
from mediaproxy.media.thumbnail import Rendered, RenderSettings, render_image, render_pictures
from mediaproxy.options import OutputFormat, Region, ResizeMode
from mediaproxy.urls import parse

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
MAGENTA, CYAN, WHITE, BLACK = (255, 0, 255), (0, 255, 255), (255, 255, 255), (0, 0, 0)
AZURE, ORANGE, PURPLE = (0, 128, 255), (255, 128, 0), (128, 0, 255)
GRID = [RED, GREEN, BLUE, YELLOW, MAGENTA, CYAN, ORANGE, PURPLE, WHITE]  # a 3×3 grid, row by row
ORIENTATION = 0x0112
MAKE = 0x010F
JPEG_TOLERANCE = 40


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------

def thumbnail_options(params: str):
    return parse(f"/p/100/thumbnail/entry_id/0_test/{params}", 100).options


def render(data: bytes, params: str, quality: int = 75, **settings) -> tuple[Rendered, Image.Image]:
    """Render `data` for the URL parameters `params`; the result and the output opened with Pillow."""
    rendered = render_image(thumbnail_options(params), data, RenderSettings(quality, **settings))
    output = Image.open(io.BytesIO(rendered.body))
    output.load()
    assert (rendered.width, rendered.height) == output.size
    return rendered, output


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def quadrants(width: int, height: int, colours=(RED, GREEN, BLUE, YELLOW)) -> Image.Image:
    """Top-left, top-right, bottom-left, bottom-right solid colours, split at the middle."""
    image = Image.new("RGB", (width, height))
    half_w, half_h = width // 2, height // 2
    for colour, box in zip(colours, [(0, 0, half_w, half_h), (half_w, 0, width, half_h),
                                     (0, half_h, half_w, height), (half_w, half_h, width, height)]):
        image.paste(colour, box)
    return image


def bands(width: int, height: int, colours=(RED, GREEN, BLUE)) -> Image.Image:
    """Equal solid bands: side by side on a wide image, stacked on a tall one."""
    image = Image.new("RGB", (width, height))
    count = len(colours)
    for index, colour in enumerate(colours):
        if width >= height:
            image.paste(colour, (width * index // count, 0, width * (index + 1) // count, height))
        else:
            image.paste(colour, (0, height * index // count, width, height * (index + 1) // count))
    return image


def grid(width: int, height: int) -> Image.Image:
    """A 3×3 grid of the GRID colours (row by row)."""
    image = Image.new("RGB", (width, height))
    for row in range(3):
        for column in range(3):
            image.paste(GRID[row * 3 + column], (width * column // 3, height * row // 3,
                                                 width * (column + 1) // 3, height * (row + 1) // 3))
    return image


def colour_at(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    pixel = image.getpixel(xy)
    return (pixel,) * 3 if isinstance(pixel, int) else tuple(pixel)


def assert_colour(image: Image.Image, xy: tuple[int, int], expected: tuple[int, ...], tolerance: int = 8) -> None:
    """The pixel at `xy` has `expected` RGB (and alpha, if given) within `tolerance` per channel."""
    actual = colour_at(image.convert("RGBA") if len(expected) == 4 else image.convert("RGB"), xy)
    assert all(abs(a - e) <= tolerance for a, e in zip(actual, expected)), \
        f"pixel {xy} is {actual}, expected {expected} ±{tolerance}"


def is_red(pixel) -> bool:
    r, g, b = pixel[:3]
    return r > 200 and g < 70 and b < 70


def inner_points(size: tuple[int, int], margin: int = 5) -> list[tuple[int, int]]:
    """Corners (inset by `margin`) and centre of an image."""
    width, height = size
    return [(margin, margin), (width - 1 - margin, margin), (margin, height - 1 - margin),
            (width - 1 - margin, height - 1 - margin), (width // 2, height // 2)]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A PNG whose IHDR claims width×height (8-bit RGB) but whose data is tiny (or garbage)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64) if idat is None else idat
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def quadrant_png() -> bytes:
    return encoded(quadrants(400, 200))


# ---------------------------------------------------------------------------------------------------------------
# Modes 1–5
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, tolerance", [("png", 8), ("jpg", JPEG_TOLERANCE)])
def test_type1_fits_and_keeps_every_quadrant(quadrant_png, fmt, tolerance):
    rendered, output = render(quadrant_png, f"width/200/height/200/format/{fmt}")
    assert output.size == (200, 100)
    for xy, colour in [((50, 25), RED), ((150, 25), GREEN), ((50, 75), BLUE), ((150, 75), YELLOW)]:
        assert_colour(output, xy, colour, tolerance)


def test_default_box_is_120x90_bounding_box(quadrant_png):
    _, output = render(quadrant_png, "format/png")
    assert output.size == (120, 60)


def test_original_size_when_width_and_height_are_0(quadrant_png):
    _, output = render(quadrant_png, "width/0/height/0/format/png")
    assert output.size == (400, 200)
    assert_colour(output, (100, 50), RED, 0)
    assert_colour(output, (300, 150), YELLOW, 0)


@pytest.mark.parametrize("fmt, tolerance", [("png", 0), ("jpg", JPEG_TOLERANCE)])
def test_type2_pads_top_and_bottom_of_a_wide_source(quadrant_png, fmt, tolerance):
    _, output = render(quadrant_png, f"width/200/height/200/type/2/bgcolor/ff00ff/format/{fmt}")
    assert output.size == (200, 200)
    # the 200×100 picture is centred: rows 50..149; rows 0..49 and 150..199 are padding
    for xy in [(5, 5), (100, 25), (194, 44), (5, 155), (100, 175), (194, 194)]:
        assert_colour(output, xy, MAGENTA, tolerance)
    for xy, colour in [((50, 75), RED), ((150, 75), GREEN), ((50, 125), BLUE), ((150, 125), YELLOW)]:
        assert_colour(output, xy, colour, 8 if fmt == "png" else tolerance)
    if fmt == "png":  # exactly where the picture begins and ends
        assert_colour(output, (50, 49), MAGENTA, 0)
        assert_colour(output, (50, 50), RED, 8)
        assert_colour(output, (150, 149), YELLOW, 8)
        assert_colour(output, (150, 150), MAGENTA, 0)


def test_type2_pads_left_and_right_of_a_tall_source():
    source = encoded(quadrants(200, 400))
    _, output = render(source, "width/200/height/200/type/2/bgcolor/00ff00/format/png")
    assert output.size == (200, 200)
    # the 100×200 picture is centred: columns 50..149
    for xy in [(5, 5), (25, 100), (49, 194), (150, 5), (175, 100), (194, 194)]:
        assert_colour(output, xy, GREEN, 0)
    for xy, colour in [((75, 50), RED), ((125, 50), GREEN), ((75, 150), BLUE), ((125, 150), YELLOW)]:
        assert_colour(output, xy, colour)


def test_type2_with_one_dimension_is_type1(quadrant_png):
    _, output = render(quadrant_png, "width/200/type/2/bgcolor/ff00ff/format/png")
    assert output.size == (200, 100)
    assert_colour(output, (5, 5), RED)


@pytest.mark.parametrize("source_size, mode, survivor", [
    pytest.param((300, 100), 3, GREEN, id="3-wide-keeps-the-middle-band"),
    pytest.param((300, 100), 4, GREEN, id="4-wide-keeps-the-middle-band"),
    pytest.param((100, 300), 3, GREEN, id="3-tall-keeps-the-middle-band"),
    pytest.param((100, 300), 4, RED, id="4-tall-keeps-the-top-band"),
])
@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_crop_to_fill_keeps_only_the_right_band(source_size, mode, survivor, fmt):
    source = encoded(bands(*source_size))  # red | green | blue (left to right, or top to bottom)
    _, output = render(source, f"width/60/height/60/type/{mode}/format/{fmt}")
    assert output.size == (60, 60)  # never padded
    for xy in inner_points(output.size, margin=4):
        assert_colour(output, xy, survivor, 8 if fmt == "png" else JPEG_TOLERANCE)


def test_type1_of_the_same_bands_keeps_all_three():
    _, output = render(encoded(bands(300, 100)), "width/60/height/60/format/png")
    assert output.size == (60, 20)
    for xy, colour in [((5, 10), RED), ((30, 10), GREEN), ((55, 10), BLUE)]:
        assert_colour(output, xy, colour)


def test_crop_with_one_dimension_is_a_square():
    _, output = render(encoded(bands(300, 100)), "width/50/type/3/format/png")
    assert output.size == (50, 50)
    for xy in inner_points(output.size, margin=4):
        assert_colour(output, xy, GREEN)


@pytest.mark.parametrize("params", ["width/100/height/300/type/5", "width/100!/height/300", "width/100/height/300!"])
def test_type5_stretches_ignoring_the_aspect_ratio(quadrant_png, params):
    _, output = render(quadrant_png, f"{params}/format/png")
    assert output.size == (100, 300)  # a 2:1 source made 1:3: each quadrant is now 50×150
    for xy, colour in [((25, 75), RED), ((75, 75), GREEN), ((25, 225), BLUE), ((75, 225), YELLOW),
                       ((5, 145), RED), ((5, 154), BLUE)]:
        assert_colour(output, xy, colour, 10)


def test_type5_with_one_dimension_is_type1(quadrant_png):
    _, output = render(quadrant_png, "height/50/type/5/format/png")
    assert output.size == (100, 50)


# ---------------------------------------------------------------------------------------------------------------
# Pre-crop: src_x, src_y, src_w, src_h (types 1, 2, 5), rel_width/rel_height, and src_w/src_h of types 3/4
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def square_quadrants() -> bytes:
    return encoded(quadrants(400, 400))


@pytest.mark.parametrize("region, colour", [
    pytest.param("src_x/0/src_y/0/src_w/200/src_h/200", RED, id="top-left"),
    pytest.param("src_x/200/src_y/0/src_w/200/src_h/200", GREEN, id="top-right"),
    pytest.param("src_x/0/src_y/200/src_w/200/src_h/200", BLUE, id="bottom-left"),
    pytest.param("src_x/200/src_y/200/src_w/200/src_h/200", YELLOW, id="bottom-right"),
    pytest.param("src_x/200/src_y/200", YELLOW, id="0-size-is-to-the-edge"),
    pytest.param("src_x/200/src_h/200", GREEN, id="src_w-0-to-the-right-edge"),
    pytest.param("src_x/250/src_y/250/src_w/100/src_h/100", YELLOW, id="inside-a-quadrant"),
    pytest.param("src_x/300/src_y/300/src_w/5000/src_h/5000", YELLOW, id="clamped-to-the-source"),
    pytest.param("src_x/50/src_w/50/src_h/50/rel_width/100/rel_height/100", GREEN, id="rel-scaled-x4"),
    pytest.param("src_y/400/src_w/400/src_h/400/rel_width/800/rel_height/800", BLUE, id="rel-scaled-half"),
])
@pytest.mark.parametrize("mode", [1, 5])
def test_pre_crop_picks_the_region(square_quadrants, region, colour, mode):
    _, output = render(square_quadrants, f"{region}/width/50/height/50/type/{mode}/format/png")
    assert output.size == (50, 50)
    for xy in inner_points(output.size, margin=3):
        assert_colour(output, xy, colour)


def test_pre_crop_then_pad(square_quadrants):
    params = "src_x/200/src_w/200/src_h/200/width/100/height/50/type/2/bgcolor/0/format/png"
    _, output = render(square_quadrants, params)
    assert output.size == (100, 50)  # the 50×50 region sits in the middle, black on both sides
    for xy in [(5, 25), (20, 5), (79, 44), (94, 25)]:
        assert_colour(output, xy, BLACK, 0)
    for xy in [(30, 5), (50, 25), (70, 44)]:
        assert_colour(output, xy, GREEN)


def test_pre_crop_region_at_its_own_size(square_quadrants):
    _, output = render(square_quadrants, "src_x/100/src_y/150/src_w/200/src_h/100/width/0/height/0/format/png")
    assert output.size == (200, 100)
    for xy, colour in [((50, 25), RED), ((150, 25), GREEN), ((50, 75), BLUE), ((150, 75), YELLOW)]:
        assert_colour(output, xy, colour, 0)


@pytest.mark.parametrize("params, cell", [
    pytest.param("type/3/src_w/100", (0, 1), id="3-src_w-anchors-left-centred-vertically"),
    pytest.param("type/4/src_w/100", (0, 0), id="4-src_w-anchors-left-and-top"),
    pytest.param("type/3/src_h/100", (1, 0), id="3-src_h-anchors-top-centred-horizontally"),
    pytest.param("type/3/src_w/200/src_h/100", (0, 0), id="3-both-anchor-top-left"),
    pytest.param("type/4/src_w/50/rel_width/150", (0, 0), id="4-src_w-scaled-by-rel_width"),
])
def test_crop_modes_anchor_src_w_and_src_h(params, cell):
    source = encoded(grid(300, 300))  # 100×100 cells
    _, output = render(source, f"{params}/width/50/height/50/format/png")
    assert output.size == (50, 50)
    column, row = cell
    for xy in inner_points(output.size, margin=5):
        assert_colour(output, xy, GRID[row * 3 + column])


# ---------------------------------------------------------------------------------------------------------------
# EXIF orientation
# ---------------------------------------------------------------------------------------------------------------

# where the stored top-left corner is seen once the orientation is applied
MARKER_CORNER = {1: "top-left", 2: "top-right", 3: "bottom-right", 4: "bottom-left",
                 5: "top-left", 6: "top-right", 7: "bottom-right", 8: "bottom-left"}
# the transposition that turns an upright picture into what a file of that orientation stores
STORED_AS = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
             4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
             7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


def corners(size: tuple[int, int], inset: int) -> dict[str, tuple[int, int]]:
    width, height = size
    return {"top-left": (inset, inset), "top-right": (width - 1 - inset, inset),
            "bottom-left": (inset, height - 1 - inset), "bottom-right": (width - 1 - inset, height - 1 - inset)}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_puts_the_marker_in_the_right_corner(orientation):
    # photo_like_jpeg stores a red square (side 12 here) in its stored top-left corner
    source = photo_like_jpeg(200, 120, exif_orientation=orientation)
    rendered, output = render(source, "width/0/height/0")
    upright = (120, 200) if orientation >= 5 else (200, 120)
    assert output.size == upright
    marked = [name for name, xy in corners(output.size, 5).items() if is_red(output.getpixel(xy))]
    assert marked == [MARKER_CORNER[orientation]]
    assert output.getexif().get(ORIENTATION) is None  # the output carries no orientation

    _, scaled = render(source, "width/60")
    assert scaled.size == ((60, 100) if orientation >= 5 else (60, 36))


@pytest.mark.parametrize("source_format, orientation", [
    (source_format, orientation) for source_format in ("JPEG", "PNG", "WEBP", "TIFF") for orientation in range(1, 9)
    if not (source_format == "TIFF" and orientation >= 5)  # test_tiff_orientation_that_swaps_axes
])
def test_every_orientation_gives_the_same_upright_picture(source_format, orientation):
    upright = quadrants(90, 60)
    stored = upright.transpose(STORED_AS[orientation]) if STORED_AS[orientation] is not None else upright
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    options = {"quality": 95} if source_format == "JPEG" else {"lossless": True} if source_format == "WEBP" else {}
    source = encoded(stored, source_format, exif=exif.tobytes(), **options)

    _, output = render(source, "width/45/format/jpg")
    assert output.size == (45, 30)
    for xy, colour in [((11, 7), RED), ((33, 7), GREEN), ((11, 22), BLUE), ((33, 22), YELLOW)]:
        assert_colour(output, xy, colour, JPEG_TOLERANCE)
    assert output.getexif().get(ORIENTATION) is None


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_tiff_orientation_that_swaps_axes(orientation):
    upright = quadrants(90, 60)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    source = encoded(upright.transpose(STORED_AS[orientation]), "TIFF", exif=exif.tobytes())
    _, output = render(source, "width/45/format/png")
    assert output.size == (45, 30)
    for xy, colour in [((11, 7), RED), ((33, 7), GREEN), ((11, 22), BLUE), ((33, 22), YELLOW)]:
        assert_colour(output, xy, colour)


# ---------------------------------------------------------------------------------------------------------------
# Shrink-on-load (JPEG draft)
# ---------------------------------------------------------------------------------------------------------------

BIG_QUADRANTS = (AZURE, GREEN, BLUE, YELLOW)  # + a red 300×300 marker in the top-left corner


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    image = quadrants(4000, 3000, BIG_QUADRANTS)
    image.paste(RED, (0, 0, 300, 300))
    return encoded(image, "JPEG", quality=90)


def test_shrink_on_load_decodes_fewer_pixels(big_jpeg):
    decoded, plan = decode(big_jpeg, lambda size: plan_thumbnail(size, 320, 240, ResizeMode.FIT), 100_000_000)
    assert decoded.source_size == (4000, 3000)
    assert plan.size == (320, 240)
    width, height = decoded.image.size
    assert width < 4000 and height < 3000  # decoded at a reduced scale...
    assert width >= 320 and height >= 240  # ...that still has every pixel the output needs
    assert decoded.shrink == pytest.approx((width / 4000, height / 3000))


def test_shrink_on_load_output_is_still_right(big_jpeg):
    _, output = render(big_jpeg, "width/320/height/240/format/png")
    assert output.size == (320, 240)
    # the 300-pixel marker is 24 pixels now
    assert_colour(output, (10, 10), RED, JPEG_TOLERANCE)
    assert_colour(output, (40, 40), AZURE, JPEG_TOLERANCE)
    for xy, colour in [((80, 180), BLUE), ((240, 60), GREEN), ((240, 180), YELLOW)]:
        assert_colour(output, xy, colour, JPEG_TOLERANCE)
    # and as good as resizing the fully decoded original
    reference = Image.open(io.BytesIO(big_jpeg)).convert("RGB").resize((320, 240), Image.Resampling.LANCZOS)
    difference = ImageStat.Stat(ImageChops.difference(output.convert("RGB"), reference)).mean
    assert max(difference) < 3, difference


def test_shrink_on_load_with_a_crop(big_jpeg):
    decoded, plan = decode(big_jpeg, lambda size: plan_thumbnail(size, 100, 100, ResizeMode.CROP_CENTER),
                           100_000_000)
    assert decoded.image.width < 4000
    _, output = render(big_jpeg, "width/100/height/100/type/3/format/png")
    assert output.size == (100, 100)
    # the centre 3000×3000: the marker (x < 300) is cut off; the split between quadrants stays in the middle
    assert not is_red(output.getpixel((1, 1)))
    for xy, colour in [((25, 25), AZURE), ((75, 25), GREEN), ((25, 75), BLUE), ((75, 75), YELLOW)]:
        assert_colour(output, xy, colour, JPEG_TOLERANCE)


def test_shrink_on_load_with_a_pre_crop_keeps_full_detail(big_jpeg):
    # a 400×400 region around the marker's corner, to 400×400: nothing may be shrunk on load
    decoded, _ = decode(big_jpeg, lambda size: plan_thumbnail(size, 400, 400, ResizeMode.FIT,
                                                              Region(100, 100, 400, 400)), 100_000_000)
    assert decoded.image.size == (4000, 3000)
    _, output = render(big_jpeg, "src_x/100/src_y/100/src_w/400/src_h/400/width/400/height/400/format/png")
    assert output.size == (400, 400)
    assert_colour(output, (100, 100), RED, JPEG_TOLERANCE)
    assert_colour(output, (300, 300), AZURE, JPEG_TOLERANCE)
    assert_colour(output, (197, 100), RED, JPEG_TOLERANCE)  # the marker ends at source x=300: output x=200
    assert_colour(output, (203, 100), AZURE, JPEG_TOLERANCE)


def test_shrink_on_load_with_orientation():
    image = quadrants(2400, 1600, BIG_QUADRANTS)
    image.paste(RED, (0, 0, 160, 160))
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored top-left is seen top-right
    source = encoded(image, "JPEG", quality=90, exif=exif.tobytes())
    decoded, _ = decode(source, lambda size: plan_thumbnail(size, 150, 0, ResizeMode.FIT), 100_000_000)
    assert decoded.source_size == (1600, 2400)
    assert 150 <= decoded.image.width < 1600 and 225 <= decoded.image.height < 2400
    _, output = render(source, "width/150/format/png")
    assert output.size == (150, 225)
    assert_colour(output, (145, 4), RED, JPEG_TOLERANCE)
    # rotated 90° clockwise: stored TL (azure) → top-right, TR (green) → bottom-right, BL (blue) → top-left
    for xy, colour in [((110, 50), AZURE), ((110, 170), GREEN), ((37, 50), BLUE), ((37, 170), YELLOW)]:
        assert_colour(output, xy, colour, JPEG_TOLERANCE)


# ---------------------------------------------------------------------------------------------------------------
# Alpha and bgcolor
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def alpha_source() -> bytes:
    return alpha_png(200, 200)  # TL opaque red, BL opaque blue, TR transparent (magenta below), BR green at 128


@pytest.mark.parametrize("fmt, tolerance", [("png", 0), ("webp", 6), ("avif", 10)])
def test_outputs_with_alpha_keep_transparency(alpha_source, fmt, tolerance):
    _, output = render(alpha_source, f"width/100/format/{fmt}")
    assert output.size == (100, 100)
    rgba = output.convert("RGBA")
    assert rgba.getpixel((75, 25))[3] == 0
    assert abs(rgba.getpixel((75, 75))[3] - 128) <= 3
    assert_colour(rgba, (75, 75), GREEN + (128,), tolerance + 3)
    assert_colour(rgba, (25, 25), RED + (255,), tolerance)
    assert_colour(rgba, (25, 75), BLUE + (255,), tolerance)


@pytest.mark.parametrize("fmt", ["jpg", "gif"])
@pytest.mark.parametrize("bgcolor, hidden, half", [
    pytest.param(None, WHITE, (127, 255, 127), id="default-white"),
    pytest.param("000000", BLACK, (0, 128, 0), id="black"),
    pytest.param("ff0000", RED, (127, 128, 0), id="red"),
])
def test_outputs_without_alpha_paint_transparency_with_bgcolor(alpha_source, fmt, bgcolor, hidden, half):
    params = f"width/100/format/{fmt}" + (f"/bgcolor/{bgcolor}" if bgcolor else "")
    _, output = render(alpha_source, params)
    tolerance = JPEG_TOLERANCE if fmt == "jpg" else 12
    assert_colour(output, (75, 25), hidden, tolerance)  # never the magenta hidden under alpha 0
    assert_colour(output, (75, 75), half, tolerance)  # half green over bgcolor
    assert_colour(output, (25, 25), RED, tolerance)
    assert_colour(output, (25, 75), BLUE, tolerance)


def test_type2_padding_is_opaque_in_png():
    source = alpha_png(200, 100)
    _, output = render(source, "width/100/height/100/type/2/bgcolor/0000ff/format/png")
    assert output.size == (100, 100)
    rgba = output.convert("RGBA")
    for xy in [(5, 5), (50, 20), (94, 24), (5, 75), (50, 94)]:  # padding: rows 0..24 and 75..99
        assert rgba.getpixel(xy) == BLUE + (255,)
    assert rgba.getpixel((75, 35))[3] == 0  # the picture's own transparency is kept
    assert_colour(rgba, (25, 35), RED + (255,), 0)


def test_type2_jpg_pads_and_flattens_with_the_same_bgcolor():
    source = alpha_png(200, 100)
    _, output = render(source, "width/100/height/100/type/2/bgcolor/00ff00/format/jpg")
    for xy in [(50, 10), (50, 90), (75, 35)]:  # padding and the transparent quadrant alike
        assert_colour(output, xy, GREEN, JPEG_TOLERANCE)


@pytest.mark.parametrize("bgcolor, colour", [
    ("fff", (0, 15, 255)),  # a number: #000fff, not #ffffff
    ("0", BLACK),
    ("f", (0, 0, 15)),
    ("123", (0, 1, 35)),
    ("ff0000", RED),
    ("ABCDEF", (171, 205, 239)),
    (None, WHITE),
])
def test_bgcolor_is_parsed_as_a_number(quadrant_png, bgcolor, colour):
    params = "width/100/height/100/type/2/format/png" + (f"/bgcolor/{bgcolor}" if bgcolor else "")
    _, output = render(quadrant_png, params)
    assert output.size == (100, 100)
    assert_colour(output, (50, 5), colour, 0)
    assert_colour(output, (50, 95), colour, 0)


@pytest.mark.parametrize("mode, value", [("RGB", (10, 20, 30)), ("L", 77)])
def test_png_transparent_colour_is_painted_with_bgcolor(mode, value):
    image = Image.new(mode, (40, 40), value)
    image.paste(255 if mode == "L" else WHITE, (0, 0, 20, 40))
    source = encoded(image, transparency=value)
    _, output = render(source, "width/20/format/jpg/bgcolor/ff0000")
    assert_colour(output, (15, 10), RED, JPEG_TOLERANCE)


# ---------------------------------------------------------------------------------------------------------------
# Output formats, quality, density
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, pillow_format, content_type", [
    ("jpg", "JPEG", "image/jpeg"),
    ("png", "PNG", "image/png"),
    ("gif", "GIF", "image/gif"),
    ("webp", "WEBP", "image/webp"),
    ("avif", "AVIF", "image/avif"),
])
def test_output_formats(quadrant_png, fmt, pillow_format, content_type):
    rendered, output = render(quadrant_png, f"width/100/format/{fmt}")
    assert output.format == pillow_format
    assert rendered.content_type == content_type
    assert output.size == (100, 50) == (rendered.width, rendered.height)
    for xy, colour in [((25, 12), RED), ((75, 12), GREEN), ((25, 37), BLUE), ((75, 37), YELLOW)]:
        assert_colour(output, xy, colour, JPEG_TOLERANCE)


@pytest.mark.parametrize("output, pillow_format, options", [
    (OutputFormat.JPG, "JPEG", {"quality": 80}),
    (OutputFormat.PNG, "PNG", {"compress_level": 6}),
])
def test_encoding_through_the_memory_file_gives_pillows_bytes_whatever_came_before(output, pillow_format, options,
                                                                                  monkeypatch):
    """Pictures are encoded into a thread's memory file (the encoder then runs without the GIL): a small picture
    after a large one is not followed by the large one's leftover bytes, and a file that held more than a few MB is
    emptied after use."""
    def pillows(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, pillow_format, **options)
        return buffer.getvalue()

    large = photo_like_image(1600, 1200, seed=3)
    noise = Image.effect_noise((1400, 1400), 100).convert("RGB")  # a PNG of it is larger than what is kept
    small = large.resize((80, 60))
    for image in (large, small, noise, small, large):
        assert encoding.encode(image.copy(), output, 80) == pillows(image)
    encoding.encode(noise.copy(), OutputFormat.PNG, 80)
    assert os.fstat(encoding._scratch.file.fileno()).st_size == 0

    elsewhere: list[bytes] = []  # another thread has a memory file of its own
    thread = threading.Thread(target=lambda: elsewhere.append(encoding.encode(small.copy(), output, 80)))
    thread.start()
    thread.join()
    assert elsewhere == [pillows(small)]

    monkeypatch.delattr(os, "memfd_create")  # a system without memfd: a Python buffer
    without: list[bytes] = []
    thread = threading.Thread(target=lambda: without.append(encoding.encode(small.copy(), output, 80)))
    thread.start()
    thread.join()
    assert without == [pillows(small)]


@pytest.fixture(scope="module")
def photo() -> bytes:
    return photo_like_jpeg(400, 300, quality=95)


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_quality_changes_the_size(photo, fmt):
    low, _ = render(photo, f"width/400/format/{fmt}", quality=10)
    high, _ = render(photo, f"width/400/format/{fmt}", quality=95)
    assert len(low.body) * 3 < len(high.body)


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_density_writes_dpi(quadrant_png, fmt):
    _, output = render(quadrant_png, f"width/100/format/{fmt}/density/300")
    assert output.info["dpi"] == pytest.approx((300, 300), abs=0.01)
    _, plain = render(quadrant_png, f"width/100/format/{fmt}")
    assert plain.info.get("dpi") in (None, (0, 0))


# ---------------------------------------------------------------------------------------------------------------
# Metadata: kept (without orientation) unless strip
# ---------------------------------------------------------------------------------------------------------------

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Make="TestCam"/></rdf:RDF></x:xmpmeta>')


@pytest.fixture(scope="module")
def tagged_jpeg() -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    exif[MAKE] = "TestCam"
    return encoded(quadrants(80, 60), "JPEG", quality=90, exif=exif.tobytes(), icc_profile=SRGB, xmp=XMP,
                   comment=b"a private comment")


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp", "avif"])
def test_metadata_is_kept_without_orientation(tagged_jpeg, fmt):
    _, output = render(tagged_jpeg, f"width/30/format/{fmt}")
    assert output.size == (30, 40)
    exif = output.getexif()
    assert exif.get(MAKE) == "TestCam"
    assert ORIENTATION not in exif
    assert output.info.get("icc_profile") == SRGB
    if fmt != "png":  # Pillow writes no XMP into PNG
        xmp = output.info.get("xmp")
        assert xmp and b"TestCam" in xmp and b"Orientation" not in xmp


STRIP_KEEPS_ICC = "encode.encode passes no icc_profile when stripped, but Pillow's {} writer then falls back to " \
                  "image.info['icc_profile'], which the decoded picture still carries: the ICC profile survives strip"


@pytest.mark.parametrize("fmt", [
    "jpg", "webp", "gif",
    "png",
    "avif",
])
def test_strip_removes_exif_icc_and_xmp(tagged_jpeg, fmt):
    _, output = render(tagged_jpeg, f"width/30/format/{fmt}/strip/1")
    assert output.size == (30, 40)
    assert not output.getexif()
    assert "exif" not in output.info
    assert "icc_profile" not in output.info
    assert "xmp" not in output.info


def test_strip_removes_the_jpeg_comment(tagged_jpeg):
    _, output = render(tagged_jpeg, "width/30/strip/1")
    assert "comment" not in output.info


@pytest.mark.parametrize("value, stripped", [("1", True), ("true", True), ("yes", True), ("0", False),
                                             ("false", False)])
def test_strip_values(tagged_jpeg, value, stripped):
    _, output = render(tagged_jpeg, f"width/30/strip/{value}")
    assert ("icc_profile" not in output.info) is stripped
    assert (not output.getexif()) is stripped


# ---------------------------------------------------------------------------------------------------------------
# Source pixel modes and formats
# ---------------------------------------------------------------------------------------------------------------

def cmyk_jpeg(colour: tuple[int, int, int, int]) -> bytes:
    return encoded(Image.new("CMYK", (64, 48), colour), "JPEG", quality=95)


@pytest.mark.parametrize("source, expected", [
    pytest.param(encoded(quadrants(64, 48).quantize(8)), RED, id="P-palette-png"),
    pytest.param(encoded(quadrants(64, 48).quantize(8), "GIF"), RED, id="P-gif"),
    pytest.param(encoded(Image.new("L", (64, 48), 100)), (100, 100, 100), id="L-png"),
    pytest.param(encoded(Image.new("L", (64, 48), 100), "JPEG"), (100, 100, 100), id="L-jpeg"),
    pytest.param(encoded(Image.new("LA", (64, 48), (100, 255))), (100, 100, 100), id="LA-png"),
    pytest.param(encoded(Image.new("1", (64, 48), 1)), WHITE, id="1-bit-png"),
    pytest.param(encoded(Image.new("I;16", (64, 48), 32768)), (128, 128, 128), id="I16-mid-grey"),
    pytest.param(encoded(Image.new("I;16", (64, 48), 65535)), WHITE, id="I16-white"),
    pytest.param(encoded(Image.new("I;16", (64, 48), 0)), BLACK, id="I16-black"),
    pytest.param(encoded(Image.new("I;16", (64, 48), 4096), "TIFF"), (16, 16, 16), id="I16-tiff-dark"),
    pytest.param(cmyk_jpeg((0, 255, 255, 0)), RED, id="CMYK-jpeg-red"),
    pytest.param(cmyk_jpeg((255, 255, 0, 0)), BLUE, id="CMYK-jpeg-blue"),
    pytest.param(encoded(Image.new("RGBA", (64, 48), RED + (255,)), "WEBP", lossless=True), RED, id="RGBA-webp"),
    pytest.param(encoded(Image.new("RGB", (64, 48), RED), "BMP"), RED, id="bmp"),
    pytest.param(encoded(Image.new("RGB", (64, 48), RED), "TIFF"), RED, id="tiff"),
])
@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_source_modes_render(source, expected, fmt):
    _, output = render(source, f"width/32/format/{fmt}")
    assert output.size == (32, 24)
    assert output.mode in ("RGB", "RGBA")
    assert_colour(output, (8, 6), expected, JPEG_TOLERANCE if fmt == "jpg" else 3)


def test_16_bit_greyscale_keeps_its_tones():
    image = Image.new("I", (64, 16))
    for index, value in enumerate([0, 16384, 32768, 49152]):
        image.paste(value, (index * 16, 0, index * 16 + 16, 16))
    image = image.convert("I;16")
    assert image.getpixel((40, 8)) == 32768
    _, output = render(encoded(image), "width/64/format/png")
    tones = [output.getpixel((index * 16 + 8, 8))[0] for index in range(4)]
    assert tones == pytest.approx([0, 64, 128, 191], abs=2)


def test_palette_gif_with_transparency():
    image = Image.new("P", (40, 40), 0)
    image.putpalette(list(RED) + list(GREEN) + [0] * 762)
    image.paste(1, (20, 0, 40, 40))
    source = encoded(image, "GIF", transparency=1)
    _, png = render(source, "width/40/format/png")
    assert png.convert("RGBA").getpixel((30, 20))[3] == 0
    assert_colour(png, (10, 20), RED + (255,), 0)
    _, jpg = render(source, "width/40/format/jpg/bgcolor/0000ff")
    assert_colour(jpg, (30, 20), BLUE, JPEG_TOLERANCE)


@pytest.mark.parametrize("fmt", ["jpg", "png", "gif"])
def test_animated_gif_gives_the_first_frame(fmt):
    source = animated_gif(60, 40, frames=3)  # red, green, blue frames
    _, output = render(source, f"width/30/format/{fmt}")
    assert output.size == (30, 20)
    assert_colour(output, (15, 10), RED, JPEG_TOLERANCE)
    assert getattr(output, "n_frames", 1) == 1


def test_cmyk_source_profile_is_not_attached_to_rgb_output():
    profile = bytearray(SRGB)
    profile[16:20] = b"CMYK"  # the header's data colour space
    source = encoded(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG", icc_profile=bytes(profile))
    _, output = render(source, "width/32")
    icc = output.info.get("icc_profile")
    assert icc is None or icc[16:20] == b"RGB "


# ---------------------------------------------------------------------------------------------------------------
# Errors: undecodable (422) and too large (413)
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    pytest.param(photo_like_jpeg(200, 150)[:3000], id="truncated-jpeg"),
    pytest.param(encoded(quadrants(64, 48))[:-60], id="truncated-png"),
    pytest.param(random.Random(7).randbytes(4096), id="random-bytes"),
    pytest.param(b"", id="empty"),
    pytest.param(b"<html><body>not found</body></html>", id="html"),
    pytest.param(b"\xff\xd8\xff\xe0" + b"\0" * 100, id="jpeg-magic-only"),
])
def test_undecodable_is_unprocessable(data):
    with pytest.raises(Unprocessable) as caught:
        render(data, "width/50")
    assert caught.value.status == 422
    assert "\n" not in caught.value.message


def corrupted_png() -> bytes:
    data = bytearray(encoded(quadrants(64, 48)))
    start = data.find(b"IDAT") + 8
    data[start:start + 16] = b"\xaa" * 16  # a damaged stretch inside the compressed data
    return bytes(data)


CORRUPT_PNGS = [
    pytest.param(png_header_only(64, 48, idat=b"garbage, not zlib"), id="garbage-instead-of-zlib"),
    pytest.param(corrupted_png(), id="damaged-stream"),
]


@pytest.mark.parametrize("data", CORRUPT_PNGS)
def test_corrupt_pngs_are_refused_by_pillow(data):
    with pytest.raises(OSError):
        Image.open(io.BytesIO(data)).load()


@pytest.mark.parametrize("data", CORRUPT_PNGS)
def test_corrupt_png_data_is_unprocessable(data):
    with pytest.raises(Unprocessable):
        render(data, "width/50")


def test_too_many_pixels_is_too_large():
    source = encoded(quadrants(100, 100))
    with pytest.raises(TooLarge) as caught:
        render(source, "width/50", max_source_pixels=9_999)
    assert caught.value.status == 413
    _, output = render(source, "width/50", max_source_pixels=10_000)  # at the limit is allowed
    assert output.size == (50, 50)


def test_too_large_is_decided_from_the_header():
    # the data is garbage: decoding it would be Unprocessable, and a plan would be made first
    source = png_header_only(100, 100, idat=b"garbage, not zlib")

    def make_plan(size):
        raise AssertionError("planned (and so decoded) an original over the pixel limit")

    with pytest.raises(TooLarge):
        decode(source, make_plan, 9_999)


def test_decompression_bomb_is_too_large_quickly():
    bomb = png_header_only(30000, 30000)  # 900 megapixels claimed by a file of ~100 bytes
    assert len(bomb) < 200
    started = time.perf_counter()
    with pytest.raises(TooLarge) as caught:
        render(bomb, "width/100")
    assert time.perf_counter() - started < 2.0  # decoding 900 Mpx would take far longer (and 2.7 GB)
    assert caught.value.status == 413


def test_decompression_bomb_is_too_large_whatever_pillows_global_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)  # Pillow's default, as in a fresh process
    with pytest.raises(TooLarge):
        render(png_header_only(30000, 30000), "width/100")


# ---------------------------------------------------------------------------------------------------------------
# render_pictures: an already decoded picture (a video frame) through the same steps
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("params, size, samples", [
    pytest.param("width/100/height/100/type/3/format/png", (100, 100),
                 [((25, 25), RED), ((75, 25), GREEN), ((25, 75), BLUE), ((75, 75), YELLOW)], id="crop"),
    pytest.param("width/100/height/100/type/2/bgcolor/0/format/png", (100, 100),
                 [((50, 10), BLACK), ((25, 40), RED), ((75, 60), YELLOW), ((50, 90), BLACK)], id="pad"),
    pytest.param("src_x/200/src_w/200/src_h/100/width/40/format/png", (40, 20),
                 [((5, 5), GREEN), ((34, 14), GREEN)], id="pre-crop"),
])
def test_render_picture_follows_the_same_plan(params, size, samples):
    picture = quadrants(400, 200)
    rendered = render_pictures(thumbnail_options(params), [picture], picture.size, RenderSettings(75))
    output = Image.open(io.BytesIO(rendered.body))
    assert output.size == size == (rendered.width, rendered.height)
    for xy, colour in samples:
        assert_colour(output, xy, colour)


def test_render_picture_flattens_alpha_for_jpg():
    picture = Image.new("RGBA", (40, 40), (255, 0, 255, 0))
    rendered = render_pictures(thumbnail_options("width/20/format/jpg/bgcolor/00ff00"), [picture], picture.size,
                               RenderSettings(75))
    assert_colour(Image.open(io.BytesIO(rendered.body)), (10, 10), GREEN, JPEG_TOLERANCE)
