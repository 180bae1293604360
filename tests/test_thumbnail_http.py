"""thumbnail over HTTP through a real server: URL forms, sizes, modes, formats, caching, errors (SPEC §1, §2, §6).

Every test decodes what the server sent and looks at its pixels, size and headers. Origins built here hold images
whose colours are known region by region, so a crop, a pad or a rotation shows in a few sampled pixels.
"""

from __future__ import annotations

import asyncio
import io
import random
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageCms

from fixtures.generate import alpha_png, colour_for_second, photo_like_image, photo_like_jpeg
from mediaproxy.app import RUNTIME, make_app

from .conftest import FIXTURE_MEDIA, cache_entries, make_config, make_entry, send_raw, until, url_forms

PHOTO = FIXTURE_MEDIA / "100" / "0_photo" / "original.jpg"  # 1280×853, red marker top-left
THUMB = "/p/100/sp/10000/thumbnail"

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
WHITE, BLACK = (255, 255, 255), (0, 0, 0)


# ------------------------------------------------------------------------------------------------ helpers


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def bands(size: tuple[int, int], spans: list[tuple[int, tuple[int, int, int]]], *, across: bool) -> bytes:
    """A PNG of solid bands: `across` = side by side along x (vertical stripes), else stacked along y."""
    image = Image.new("RGB", size)
    start = 0
    for length, colour in spans:
        box = (start, 0, start + length, size[1]) if across else (0, start, size[0], start + length)
        image.paste(colour, box)
        start += length
    return png(image)


# 400×200, stripes along x: red 0..100, green 100..300, blue 300..400
WIDE = bands((400, 200), [(100, RED), (200, GREEN), (100, BLUE)], across=True)
# 200×400, bands along y: red 0..100, green 100..300, blue 300..400
TALL = bands((200, 400), [(100, RED), (200, GREEN), (100, BLUE)], across=False)


def cell_colour(cx: int, cy: int) -> tuple[int, int, int]:
    return 30 + 65 * cx, 30 + 65 * cy, 128


def grid_png() -> bytes:
    """400×400 of 4×4 cells of 100 px; cell (cx, cy) is cell_colour(cx, cy)."""
    image = Image.new("RGB", (400, 400))
    for cx in range(4):
        for cy in range(4):
            image.paste(cell_colour(cx, cy), (cx * 100, cy * 100, cx * 100 + 100, cy * 100 + 100))
    return png(image)


def near(actual, expected, tolerance: int = 16) -> bool:
    return all(abs(int(a) - int(e)) <= tolerance for a, e in zip(actual, expected))


def assert_pixel(image: Image.Image, xy: tuple[int, int], expected, tolerance: int = 16) -> None:
    actual = image.getpixel(xy)
    assert near(actual, expected, tolerance), f"pixel {xy} is {actual}, expected about {expected}"


def is_red(pixel) -> bool:
    r, g, b = pixel[:3]
    return r > 190 and g < 70 and b < 70


async def thumbnail(client, path: str, pillow_format: str = "JPEG", headers: dict | None = None):
    """GET a thumbnail that must succeed; (response, body, decoded image)."""
    response = await client.get(path, headers=headers)
    body = await response.read()
    assert response.status == 200, body[:300]
    image = Image.open(io.BytesIO(body))
    assert image.format == pillow_format
    image.load()
    return response, body, image


def origin_config(tmp_path: Path, root: Path, origin_extra: str = "", extra: str = ""):
    return make_config(tmp_path, f'kind = "local"\nroot = "{root}"\n{origin_extra}', extra)


@pytest.fixture
def origin(tmp_path):
    """A folder of originals made by the test; the bundled images are not enough to see crops and pads."""
    root = tmp_path / "origin"
    make_entry(root, 100, "0_wide", {"original.png": WIDE})
    make_entry(root, 100, "0_tall", {"original.png": TALL})
    make_entry(root, 100, "0_grid", {"original.png": grid_png()})
    return root


@pytest.fixture
async def built(serve, tmp_path, origin):
    return await serve(origin_config(tmp_path, origin))


IMAGE_RENDERS = {"render_image", "decode_and_render", "render_decoded", "derive_and_render", "decode_finer_and_render"}


def count_renders(app) -> list[str]:
    """Wrap the app's work pool: the returned list grows by one name per render job."""
    runtime = app[RUNTIME]
    calls: list[str] = []
    run = runtime.pool.run

    async def counting(function, *args):
        if function.__name__ in IMAGE_RENDERS:
            calls.append("render_image")  # from the bytes, or from a decoded picture kept in memory
        elif function.__name__.startswith("render"):
            calls.append(function.__name__)
        return await run(function, *args)

    runtime.pool.run = counting
    return calls


async def cached_result_files(cache_dir: Path, body: bytes, timeout: float = 5.0) -> list[Path]:
    """The disk-cache entries whose body is `body`, once there is one (the write comes behind the response)."""
    def found() -> list[Path]:
        return [path for path in (cache_dir / "data").glob("*/*") if path.read_bytes().startswith(body)]

    await until(found, timeout, interval=0.05, failure="the rendered bytes never reached the disk cache")
    return found()


# ------------------------------------------------------------------------------------------------ grammar


@pytest.mark.parametrize("path", [
    *url_forms("thumbnail"),
    "/p/100/sp/10000/thumbnail/entry_id/0_photo.jpg",
    "/p/100/sp/10000/thumbnail/entry_id/0_photo?clientTag=x&playSessionId=y",
])
async def test_every_url_form_reaches_the_thumbnail(client, path):
    status, headers, body = await send_raw(client, path)
    assert status == 200, body[:200]
    assert headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(body))
    assert image.format == "JPEG"
    assert image.size == (120, 80)  # 1280×853 inside the default 120×90 box
    assert is_red(image.convert("RGB").getpixel((3, 3)))  # the photo's marker, top-left, unrotated
    reference = await client.get("/p/100/sp/10000/thumbnail/entry_id/0_photo")
    assert await reference.read() == body


async def test_query_string_parameters_and_path_precedence(client):
    _, _, by_query = await thumbnail(client, f"{THUMB}?entry_id=0_photo&width=300")
    assert by_query.size == (300, 200)
    _, _, mixed = await thumbnail(client, f"{THUMB}/entry_id/0_photo?height=100&format=png", "PNG")
    assert mixed.size == (150, 100)
    _, _, path_wins = await thumbnail(client, f"{THUMB}/entry_id/0_photo/width/200?width=300")
    assert path_wins.size == (200, 133)
    _, _, suffixes = await thumbnail(client, f"{THUMB}/entry_id/0_photo.jpg/width/200.jpg/format/png.png", "PNG")
    assert suffixes.size == (200, 133)


# ------------------------------------------------------------------------------------------------ dimensions


@pytest.mark.parametrize("params, size", [
    ("", (120, 80)),
    ("/def_width/200/def_height/200", (200, 133)),
    ("/def_width/200", (200, 133)),
    ("/def_height/60", (90, 60)),
    ("/width/50/def_width/200/def_height/200", (50, 33)),  # def_* only when neither width nor height is given
    ("/width/300", (300, 200)),
    ("/height/100", (150, 100)),
    ("/width/300/height/300", (300, 200)),
    ("/width/0/height/0", (1280, 853)),
    ("/width/-1/height/45", (68, 45)),
    ("/width/320!/height/100", (320, 100)),
    ("/width/320/height/100/type/5", (320, 100)),
    ("/width/320/height/100/type/9", (320, 100)),  # ≥ 6 is 5
    ("/width/320/height/100/type/0", (150, 100)),  # 0 is 1
    ("/width/320/height/100/type/abc", (150, 100)),
    ("/width/100/type/3", (100, 100)),  # crop types: the missing dimension equals the given one
    ("/height/70/type/4", (70, 70)),
    ("/width/100/type/5", (100, 67)),  # stretch with one dimension: as type 1
    ("/width/100/type/2", (100, 67)),  # pad with one dimension: as type 1
])
async def test_output_dimensions(client, params, size):
    _, _, image = await thumbnail(client, f"{THUMB}/entry_id/0_photo{params}")
    assert image.size == size


async def test_upscaling_is_allowed(client):
    _, _, image = await thumbnail(client, f"{THUMB}/entry_id/0_alpha/width/3000")
    assert image.size == (3000, 2250)  # 400×300 enlarged
    assert_pixel(image, (750, 560), RED)
    assert_pixel(image, (750, 1690), BLUE)
    assert_pixel(image, (2250, 560), WHITE)


async def test_forced_stretch_really_stretches(built):
    _, _, image = await thumbnail(built, f"{THUMB}/entry_id/0_wide/width/100!/height/100/format/png", "PNG")
    assert image.size == (100, 100)
    assert_pixel(image, (10, 50), RED, 4)
    assert_pixel(image, (50, 50), GREEN, 4)
    assert_pixel(image, (90, 50), BLUE, 4)


# ------------------------------------------------------------------------------------------------ modes


@pytest.mark.parametrize("entry, params, size, samples", [
    # type 1: fits inside, nothing cut
    ("0_wide", "/type/1/width/200/height/200", (200, 100), {(25, 50): RED, (100, 50): GREEN, (175, 50): BLUE}),
    ("0_tall", "/type/1/width/200/height/200", (100, 200), {(50, 25): RED, (50, 100): GREEN, (50, 175): BLUE}),
    # type 3: centre crop to fill
    ("0_wide", "/type/3/width/100/height/100", (100, 100), {(8, 50): GREEN, (50, 50): GREEN, (92, 50): GREEN}),
    ("0_tall", "/type/3/width/100/height/100", (100, 100), {(50, 8): GREEN, (50, 50): GREEN, (50, 92): GREEN}),
    ("0_wide", "/type/3/width/300/height/50", (300, 50), {(25, 25): RED, (150, 25): GREEN, (275, 25): BLUE}),
    ("0_tall", "/type/3/width/100/height/50", (100, 50), {(50, 8): GREEN, (50, 42): GREEN}),
    # type 4: crop anchored at the top (still centred horizontally)
    ("0_tall", "/type/4/width/100/height/100", (100, 100), {(50, 20): RED, (50, 80): GREEN}),
    ("0_tall", "/type/4/width/100/height/50", (100, 50), {(50, 20): RED, (50, 45): RED}),
    ("0_wide", "/type/4/width/100/height/100", (100, 100), {(8, 50): GREEN, (92, 50): GREEN}),
    # type 5: exact size, aspect ignored
    ("0_wide", "/type/5/width/100/height/100", (100, 100), {(10, 50): RED, (50, 50): GREEN, (90, 50): BLUE}),
    ("0_tall", "/type/5/width/100/height/100", (100, 100), {(50, 10): RED, (50, 50): GREEN, (50, 90): BLUE}),
    ("0_tall", "/type/5/width/300/height/40", (300, 40), {(150, 4): RED, (150, 20): GREEN, (150, 36): BLUE}),
])
async def test_modes_crop_and_scale_the_right_region(built, entry, params, size, samples):
    _, _, image = await thumbnail(built, f"{THUMB}/entry_id/{entry}{params}/format/png", "PNG")
    assert image.size == size
    for xy, colour in samples.items():
        assert_pixel(image, xy, colour, 6)


@pytest.mark.parametrize("bgcolor, colour", [
    (None, WHITE),
    ("ffffff", WHITE),
    ("ff0000", RED),
    ("00FF00", GREEN),
    ("fff", (0, 15, 255)),  # a number, not CSS shorthand
    ("abc", (0, 10, 188)),
    ("0", BLACK),
    ("80", (0, 0, 128)),
])
async def test_type_2_pads_with_bgcolor_on_the_right_sides(built, bgcolor, colour):
    extra = f"/bgcolor/{bgcolor}" if bgcolor is not None else ""
    _, _, wide = await thumbnail(built, f"{THUMB}/entry_id/0_wide/type/2/width/200/height/200{extra}/format/png", "PNG")
    assert wide.size == (200, 200)
    assert wide.mode == "RGB"
    for xy in [(100, 10), (5, 5), (195, 45), (100, 190), (195, 195)]:  # above and below the picture
        assert_pixel(wide, xy, colour, 2)
    for xy, expected in {(25, 100): RED, (100, 60): GREEN, (100, 140): GREEN, (175, 100): BLUE}.items():
        assert_pixel(wide, xy, expected, 6)  # the picture centred, uncut
    _, _, tall = await thumbnail(built, f"{THUMB}/entry_id/0_tall/type/2/width/200/height/200{extra}/format/png", "PNG")
    assert tall.size == (200, 200)
    for xy in [(10, 100), (5, 5), (45, 195), (190, 100), (195, 5)]:  # left and right of the picture
        assert_pixel(tall, xy, colour, 2)
    for xy, expected in {(100, 25): RED, (60, 100): GREEN, (140, 100): GREEN, (100, 175): BLUE}.items():
        assert_pixel(tall, xy, expected, 6)


async def test_type_2_pads_a_jpeg_too(built):
    _, _, image = await thumbnail(built, f"{THUMB}/entry_id/0_wide/type/2/width/200/height/200/bgcolor/0000ff")
    assert image.size == (200, 200)
    assert_pixel(image, (100, 15), BLUE, 20)
    assert_pixel(image, (100, 185), BLUE, 20)
    assert_pixel(image, (100, 100), GREEN, 20)


@pytest.mark.parametrize("params, size, samples", [
    # types 1/2/5: the region, in source pixels (0 width/height = to the edge)
    ("/src_x/100/src_y/200/src_w/200/src_h/100/width/0/height/0", (200, 100),
     {(50, 50): cell_colour(1, 2), (150, 50): cell_colour(2, 2)}),
    ("/src_x/50/src_y/100/src_w/100/src_h/50/rel_width/200/rel_height/200/width/0/height/0", (200, 100),
     {(50, 50): cell_colour(1, 2), (150, 50): cell_colour(2, 2)}),
    ("/src_x/10/src_y/20/src_w/20/src_h/10/rel_width/40/rel_height/40/width/0/height/0", (200, 100),
     {(50, 50): cell_colour(1, 2), (150, 50): cell_colour(2, 2)}),
    ("/src_x/200/width/0/height/0", (200, 400), {(50, 50): cell_colour(2, 0), (150, 350): cell_colour(3, 3)}),
    ("/src_y/300/width/0/height/0", (400, 100), {(50, 50): cell_colour(0, 3), (350, 50): cell_colour(3, 3)}),
    ("/src_x/100/src_y/100/src_w/200/src_h/200/width/100/height/100", (100, 100),
     {(25, 25): cell_colour(1, 1), (75, 25): cell_colour(2, 1),
      (25, 75): cell_colour(1, 2), (75, 75): cell_colour(2, 2)}),
    ("/src_x/300/src_y/0/src_w/100/src_h/400/width/50/height/50/type/5", (50, 50),
     {(25, 6): cell_colour(3, 0), (25, 44): cell_colour(3, 3)}),
    ("/src_x/0/src_y/0/src_w/200/src_h/100/width/100/height/100/type/2/bgcolor/000000", (100, 100),
     {(25, 50): cell_colour(0, 0), (75, 50): cell_colour(1, 0), (50, 10): BLACK, (50, 90): BLACK}),
    # types 3/4: src_w anchors left, src_h anchors top
    ("/type/3/src_w/200/width/100/height/100", (100, 100),
     {(25, 25): cell_colour(0, 1), (75, 75): cell_colour(1, 2)}),
    ("/type/3/src_h/200/width/100/height/100", (100, 100),
     {(25, 25): cell_colour(1, 0), (75, 75): cell_colour(2, 1)}),
    ("/type/3/src_w/200/src_h/200/width/100/height/100", (100, 100),
     {(25, 25): cell_colour(0, 0), (75, 75): cell_colour(1, 1)}),
    ("/type/4/src_w/200/width/100/height/100", (100, 100),
     {(25, 25): cell_colour(0, 0), (75, 75): cell_colour(1, 1)}),
])
async def test_source_region_selects_the_right_cells(built, params, size, samples):
    _, _, image = await thumbnail(built, f"{THUMB}/entry_id/0_grid{params}/format/png", "PNG")
    assert image.size == size
    for xy, colour in samples.items():
        assert_pixel(image, xy, colour, 6)


def grid_jpeg(side: int) -> bytes:
    """The grid at side×side as a JPEG (cells side/4): decoded with shrink-on-load when the output is small."""
    image = Image.open(io.BytesIO(grid_png())).resize((side, side), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@pytest.mark.parametrize("params, size, samples", [
    ("/width/40/height/40", (40, 40), {(5, 5): cell_colour(0, 0), (34, 34): cell_colour(3, 3)}),
    ("/src_x/400/src_y/800/src_w/800/src_h/400/width/50/height/50", (50, 25),
     {(12, 12): cell_colour(1, 2), (37, 12): cell_colour(2, 2)}),
    ("/src_x/1200/src_y/0/src_w/400/src_h/1600/width/0/height/100", (25, 100),
     {(12, 12): cell_colour(3, 0), (12, 87): cell_colour(3, 3)}),
    ("/src_x/100/src_y/200/src_w/200/src_h/100/rel_width/400/rel_height/400/width/60", (60, 30),
     {(15, 15): cell_colour(1, 2), (45, 15): cell_colour(2, 2)}),
    ("/type/3/width/60/height/20", (60, 20), {(5, 3): cell_colour(0, 1), (55, 17): cell_colour(3, 2)}),
    ("/type/4/width/60/height/20", (60, 20), {(5, 10): cell_colour(0, 0), (55, 10): cell_colour(3, 0)}),
    ("/type/3/src_w/800/src_h/800/width/30/height/30", (30, 30),
     {(7, 7): cell_colour(0, 0), (22, 22): cell_colour(1, 1)}),
    ("/type/5/width/80/height/20", (80, 20), {(10, 2): cell_colour(0, 0), (70, 17): cell_colour(3, 3)}),
])
async def test_regions_of_a_large_jpeg_decoded_at_a_reduced_scale(serve, tmp_path, params, size, samples):
    root = tmp_path / "origin"
    make_entry(root, 100, "0_big", {"original.jpg": grid_jpeg(1600)})
    client = await serve(origin_config(tmp_path, root))
    _, _, image = await thumbnail(client, f"{THUMB}/entry_id/0_big{params}/format/png", "PNG")
    assert image.size == size
    for xy, colour in samples.items():
        assert_pixel(image, xy, colour, 14)


async def test_a_source_region_is_read_in_the_upright_picture(serve, tmp_path):
    root = tmp_path / "origin"
    make_entry(root, 100, "0_o6", {"original.jpg": photo_like_jpeg(800, 600, exif_orientation=6)})
    client = await serve(origin_config(tmp_path, root))
    # upright the photo is 600×800 with its 60 px marker in the top-right corner
    _, _, corner = await thumbnail(client, f"{THUMB}/entry_id/0_o6/src_x/500/src_y/0/src_w/100/src_h/100/width/50")
    assert corner.size == (50, 50)
    assert is_red(corner.convert("RGB").getpixel((40, 8)))
    assert not is_red(corner.convert("RGB").getpixel((10, 40)))
    _, _, other = await thumbnail(client, f"{THUMB}/entry_id/0_o6/src_x/0/src_y/0/src_w/100/src_h/100/width/50")
    assert not is_red(other.convert("RGB").getpixel((40, 8)))
    _, _, top = await thumbnail(client, f"{THUMB}/entry_id/0_o6/type/4/width/60/height/20")
    assert top.size == (60, 20)
    assert is_red(top.convert("RGB").getpixel((58, 1)))


async def test_upscaling_is_capped_by_the_output_pixel_limit(serve, tmp_path):
    client = await serve(make_config(tmp_path, extra="[limits]\nmax_output_pixels = 1000000"))
    _, _, image = await thumbnail(client, f"{THUMB}/entry_id/0_alpha/width/5000")
    width, height = image.size
    assert width * height <= 1_000_000
    assert width > 1100 and abs(width / height - 4 / 3) < 0.01
    _, _, clamped = await thumbnail(client, f"{THUMB}/entry_id/0_alpha/height/99999/type/2/width/99999")
    assert clamped.size[0] * clamped.size[1] <= 1_000_000
    assert clamped.size[0] > 990 and abs(clamped.size[0] - clamped.size[1]) <= 1  # the 10000×10000 box, scaled


async def test_the_output_pixel_limit_is_never_exceeded(serve, tmp_path):
    client = await serve(make_config(tmp_path, extra="[limits]\nmax_output_pixels = 1000000"))
    _, _, image = await thumbnail(client, f"{THUMB}/entry_id/0_alpha/width/5000")
    assert image.size[0] * image.size[1] <= 1_000_000


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


async def test_sources_of_every_pixel_mode(serve, tmp_path):
    root = tmp_path / "origin"
    palette = Image.new("P", (40, 30))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (20, 0, 40, 30))  # left red (index 0), right index 1 = transparent
    grey_alpha = Image.new("LA", (40, 30), (200, 255))
    grey_alpha.paste((50, 0), (20, 0, 40, 30))
    deep = Image.frombytes("I;16", (40, 30), struct.pack("<40H", *[65535] * 20, *[32768] * 20) * 30)
    make_entry(root, 100, "0_p", {"original.png": encoded(palette, "PNG", transparency=1)})
    make_entry(root, 100, "0_la", {"original.png": encoded(grey_alpha, "PNG")})
    make_entry(root, 100, "0_cmyk", {"original.jpg": encoded(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG")})
    make_entry(root, 100, "0_i16", {"original.png": encoded(deep, "PNG")})
    make_entry(root, 100, "0_l", {"original.jpg": encoded(Image.new("L", (40, 30), 90), "JPEG")})
    client = await serve(origin_config(tmp_path, root))
    path = f"{THUMB}/width/0/height/0/entry_id/"
    _, _, p_png = await thumbnail(client, path + "0_p/format/png", "PNG")
    assert p_png.mode == "RGBA"
    assert_pixel(p_png, (10, 15), RED + (255,), 2)
    assert p_png.getpixel((30, 15))[3] == 0
    _, _, p_jpg = await thumbnail(client, path + "0_p/bgcolor/00ff00")
    assert_pixel(p_jpg, (30, 15), GREEN, 20)
    _, _, la_png = await thumbnail(client, path + "0_la/format/webp", "WEBP")
    assert la_png.mode == "RGBA"
    assert_pixel(la_png, (10, 15), (200, 200, 200, 255), 8)
    assert la_png.getpixel((30, 15))[3] <= 8
    _, _, cmyk = await thumbnail(client, path + "0_cmyk")
    assert cmyk.mode == "RGB" and cmyk.size == (40, 30)
    assert_pixel(cmyk, (20, 15), RED, 24)
    _, _, i16 = await thumbnail(client, path + "0_i16/format/png", "PNG")
    assert_pixel(i16.convert("RGB"), (10, 15), WHITE, 2)
    assert_pixel(i16.convert("RGB"), (30, 15), (128, 128, 128), 3)  # scaled to 8 bits, not clipped
    _, _, grey = await thumbnail(client, path + "0_l")
    assert grey.size == (40, 30)
    assert_pixel(grey.convert("RGB"), (20, 15), (90, 90, 90), 6)


# ------------------------------------------------------------------------------------------------ formats


@pytest.mark.parametrize("fmt, pillow_format, content_type, alpha", [
    ("", "JPEG", "image/jpeg", False),
    ("/format/jpg", "JPEG", "image/jpeg", False),
    ("/format/jpeg", "JPEG", "image/jpeg", False),
    ("/format/JPG", "JPEG", "image/jpeg", False),
    ("/format/png", "PNG", "image/png", True),
    ("/format/gif", "GIF", "image/gif", False),
    ("/format/webp", "WEBP", "image/webp", True),
    ("/format/avif", "AVIF", "image/avif", True),
])
async def test_formats_and_alpha(client, fmt, pillow_format, content_type, alpha):
    response, _, image = await thumbnail(client, f"{THUMB}/entry_id/0_alpha/width/200{fmt}", pillow_format)
    assert response.headers["Content-Type"] == content_type
    assert image.size == (200, 150)
    tolerance = 6 if pillow_format == "PNG" else 24
    if alpha:
        assert image.mode == "RGBA"
        assert_pixel(image, (50, 37), RED + (255,), tolerance)
        assert_pixel(image, (50, 112), BLUE + (255,), tolerance)
        assert image.getpixel((150, 37))[3] <= 8  # transparent stays transparent
        assert_pixel(image, (150, 112), GREEN + (128,), tolerance)
    else:
        picture = image.convert("RGB")
        assert_pixel(picture, (50, 37), RED, tolerance)
        assert_pixel(picture, (50, 112), BLUE, tolerance)
        assert_pixel(picture, (150, 37), WHITE, tolerance)  # painted with bgcolor, not the hidden magenta
        assert_pixel(picture, (150, 112), (127, 255, 127), tolerance)


@pytest.mark.parametrize("fmt", ["jpg", "gif"])
async def test_transparency_is_painted_with_bgcolor_where_the_format_has_no_alpha(client, fmt):
    pillow = {"jpg": "JPEG", "gif": "GIF"}[fmt]
    _, _, image = await thumbnail(client, f"{THUMB}/entry_id/0_alpha/width/200/bgcolor/000000/format/{fmt}", pillow)
    picture = image.convert("RGB")
    assert_pixel(picture, (150, 37), BLACK, 24)
    assert_pixel(picture, (150, 112), (0, 128, 0), 24)
    assert_pixel(picture, (50, 37), RED, 24)


async def test_alpha_is_kept_when_padding_a_png(client):
    _, _, image = await thumbnail(client, f"{THUMB}/entry_id/0_alpha/width/200/height/200/type/2/bgcolor/0000ff"
                                          "/format/png", "PNG")
    assert image.size == (200, 200) and image.mode == "RGBA"
    assert_pixel(image, (100, 10), BLUE + (255,), 2)  # the padding is opaque bgcolor
    assert image.getpixel((150, 62))[3] <= 8  # the picture's transparent quadrant (y 25..100) is still transparent
    assert_pixel(image, (50, 62), RED + (255,), 6)


async def test_quality_changes_the_jpeg(serve, tmp_path):
    client = await serve(make_config(tmp_path, extra="[partners.100]\nquality = 20"))
    low = await (await client.get(f"{THUMB}/entry_id/0_photo/width/400/quality/10")).read()
    high = await (await client.get(f"{THUMB}/entry_id/0_photo/width/400/quality/95")).read()
    assert len(low) * 2 < len(high)
    partner_default = await (await client.get(f"{THUMB}/entry_id/0_photo/width/400")).read()
    explicit = await (await client.get(f"{THUMB}/entry_id/0_photo/width/400/quality/20")).read()
    assert partner_default == explicit  # the partner's quality is the default
    other_partner = await (await client.get("/p/200/thumbnail/entry_id/0_private/width/400")).read()
    assert Image.open(io.BytesIO(other_partner)).size[0] == 400
    webp_low = await (await client.get(f"{THUMB}/entry_id/0_photo/width/400/format/webp/quality/10")).read()
    webp_high = await (await client.get(f"{THUMB}/entry_id/0_photo/width/400/format/webp/quality/95")).read()
    assert len(webp_low) * 2 < len(webp_high)


@pytest.mark.parametrize("fmt, pillow_format", [("jpg", "JPEG"), ("png", "PNG")])
async def test_density_sets_the_dpi(client, fmt, pillow_format):
    _, _, image = await thumbnail(client, f"{THUMB}/entry_id/0_photo/density/300/format/{fmt}", pillow_format)
    assert tuple(round(value) for value in image.info["dpi"]) == (300, 300)
    _, _, other = await thumbnail(client, f"{THUMB}/entry_id/0_photo/density/72/format/{fmt}", pillow_format)
    assert tuple(round(value) for value in other.info["dpi"]) == (72, 72)


MAKE_TAG = 0x010F
XMP = (b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
       b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
       b'xmlns:dc="http://purl.org/dc/elements/1.1/" dc:creator="MediaproxyXmp"/></rdf:RDF></x:xmpmeta>'
       b'<?xpacket end="w"?>')


@pytest.fixture
async def tagged(serve, tmp_path):
    """A client over an entry whose JPEG carries EXIF (a camera make), XMP and an ICC profile."""
    exif = Image.Exif()
    exif[MAKE_TAG] = "MediaproxyCam"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buffer = io.BytesIO()
    photo_like_image(400, 300, seed=3).save(buffer, "JPEG", quality=90, exif=exif.tobytes(), icc_profile=icc,
                                                 xmp=XMP)
    root = tmp_path / "origin"
    make_entry(root, 100, "0_tagged", {"original.jpg": buffer.getvalue()})
    return await serve(origin_config(tmp_path, root)), icc




@pytest.mark.parametrize("fmt, pillow_format", [
    ("jpg", "JPEG"),
    ("webp", "WEBP"),
    ("png", "PNG"),
    ("avif", "AVIF"),
])
async def test_metadata_survives_unless_stripped(tagged, fmt, pillow_format):
    client, icc = tagged
    _, _, kept = await thumbnail(client, f"{THUMB}/entry_id/0_tagged/width/200/format/{fmt}", pillow_format)
    assert kept.info.get("icc_profile") == icc
    assert kept.getexif().get(MAKE_TAG) == "MediaproxyCam"
    if fmt != "png":  # Pillow's PNG writer takes no XMP
        assert b"MediaproxyXmp" in kept.info.get("xmp", b"")
    _, _, also_kept = await thumbnail(client, f"{THUMB}/entry_id/0_tagged/width/200/strip/0/format/{fmt}",
                                      pillow_format)
    assert also_kept.info.get("icc_profile") == icc
    for flag in ("1", "true", "yes"):
        _, _, stripped = await thumbnail(client, f"{THUMB}/entry_id/0_tagged/width/200/strip/{flag}/format/{fmt}",
                                         pillow_format)
        assert not stripped.info.get("icc_profile")
        assert not stripped.info.get("exif")
        assert not stripped.info.get("xmp")
        assert len(stripped.getexif()) == 0
        assert stripped.size == (200, 150)


@pytest.mark.parametrize("params", ["/width/0/height/0", "/width/200/height/200"])
async def test_exif_orientation_is_applied(serve, tmp_path, params):
    root = tmp_path / "origin"
    for orientation in (1, 3, 6, 8):
        jpeg = photo_like_jpeg(400, 300, exif_orientation=orientation)
        make_entry(root, 100, f"0_o{orientation}", {"original.jpg": jpeg})
    make_entry(root, 100, "0_onone", {"original.jpg": photo_like_jpeg(400, 300)})
    client = await serve(origin_config(tmp_path, root))
    big = params == "/width/0/height/0"
    landscape, portrait = ((400, 300), (300, 400)) if big else ((200, 150), (150, 200))
    # where the stored top-left marker must appear once the picture is upright
    expected = {"0_onone": ("top-left", landscape), "0_o1": ("top-left", landscape),
                "0_o3": ("bottom-right", landscape), "0_o6": ("top-right", portrait),
                "0_o8": ("bottom-left", portrait)}
    for entry, (corner, size) in expected.items():
        _, body, image = await thumbnail(client, f"{THUMB}/entry_id/{entry}{params}")
        assert image.size == size, entry
        assert image.getexif().get(0x0112) is None, entry  # the output carries no orientation
        picture = image.convert("RGB")
        w, h = size
        corners = {"top-left": (4, 4), "top-right": (w - 5, 4), "bottom-left": (4, h - 5),
                   "bottom-right": (w - 5, h - 5)}
        for name, xy in corners.items():
            assert is_red(picture.getpixel(xy)) == (name == corner), (entry, name, picture.getpixel(xy))


async def test_animated_gif_gives_its_first_frame(client):
    first = colour_for_second(0)
    _, _, image = await thumbnail(client, f"{THUMB}/entry_id/0_anim")
    assert image.size == (120, 90)
    assert_pixel(image.convert("RGB"), (60, 45), first, 12)
    _, _, still = await thumbnail(client, f"{THUMB}/entry_id/0_anim/width/100/format/png", "PNG")
    assert still.size == (100, 75)
    assert_pixel(still.convert("RGB"), (50, 37), first, 2)
    _, _, gif = await thumbnail(client, f"{THUMB}/entry_id/0_anim/width/100/format/gif", "GIF")
    assert_pixel(gif.convert("RGB"), (50, 37), first, 12)


async def test_every_bundled_image_kind(client):
    for entry, size in [("0_photo", (120, 80)), ("0_alpha", (120, 90)), ("0_anim", (120, 90)),
                        ("0_webp", (120, 90)), ("0_named", (120, 90))]:
        _, _, image = await thumbnail(client, f"{THUMB}/entry_id/{entry}")
        assert image.size == size, entry
    _, _, private = await thumbnail(client, "/p/200/thumbnail/entry_id/0_private/width/0/height/0")
    assert private.size == Image.open(FIXTURE_MEDIA / "200/0_private/original.jpg").size


async def test_version_selects_a_versioned_original(serve, tmp_path):
    root = tmp_path / "origin"
    make_entry(root, 100, "0_v", {"original.png": alpha_png(40, 30), "original_v2.png": alpha_png(80, 60),
                                  "entry.json": '{"versions": {"2": "original_v2.png"}}'})
    client = await serve(origin_config(tmp_path, root))
    sizes = {}
    for version in ("", "/version/2", "/version/7"):
        _, _, image = await thumbnail(client, f"{THUMB}/entry_id/0_v{version}/width/0/height/0")
        sizes[version] = image.size
    assert sizes == {"": (40, 30), "/version/2": (80, 60), "/version/7": (40, 30)}


# ------------------------------------------------------------------------------------------------ HTTP


async def test_caching_headers_and_cors(client):
    response, body, _ = await thumbnail(client, f"{THUMB}/entry_id/0_photo")
    assert response.headers["Cache-Control"] == "public, max-age=3600"
    etag = response.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2  # strong
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Content-Length"] == str(len(body))
    import email.utils
    stamp = email.utils.parsedate_to_datetime(response.headers["Last-Modified"]).timestamp()
    assert abs(stamp - PHOTO.stat().st_mtime) <= 1  # whole seconds


async def test_partner_max_age_overrides_the_default(serve, tmp_path):
    client = await serve(make_config(tmp_path, extra="[partners.100]\nthumbnail_max_age = 60"))
    response = await client.get(f"{THUMB}/entry_id/0_photo")
    assert response.headers["Cache-Control"] == "public, max-age=60"
    other = await client.get("/p/200/thumbnail/entry_id/0_private")
    assert other.headers["Cache-Control"] == "public, max-age=3600"




async def test_if_none_match_answers_304_without_a_body(client):
    first = await client.get(f"{THUMB}/entry_id/0_photo/width/200")
    etag = first.headers["ETag"]
    status, headers, body = await send_raw(client, f"{THUMB}/entry_id/0_photo/width/200",
                                           headers={"If-None-Match": etag})
    assert status == 304
    assert body == b""
    assert headers["etag"] == etag
    assert headers["cache-control"] == "public, max-age=3600"
    listed = await client.get(f"{THUMB}/entry_id/0_photo/width/200", headers={"If-None-Match": f'"other", {etag}'})
    assert listed.status == 304
    stale = await client.get(f"{THUMB}/entry_id/0_photo/width/200", headers={"If-None-Match": '"other"'})
    assert stale.status == 200
    assert await stale.read() == await first.read()


async def test_if_none_match_uses_the_weak_comparison(client):
    first = await client.get(f"{THUMB}/entry_id/0_photo/width/200")
    weak = await client.get(f"{THUMB}/entry_id/0_photo/width/200",
                            headers={"If-None-Match": "W/" + first.headers["ETag"]})
    assert weak.status == 304  # RFC 9110 §13.1.2: If-None-Match compares weakly


async def test_a_non_matching_if_none_match_gets_the_picture(client):
    first = await client.get(f"{THUMB}/entry_id/0_photo/width/200")
    body = await first.read()
    for tag in ('"other"', 'W/"other"', '"other", "more"'):
        response = await client.get(f"{THUMB}/entry_id/0_photo/width/200", headers={"If-None-Match": tag})
        assert response.status == 200
        assert await response.read() == body
    # If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2)
    both = await client.get(f"{THUMB}/entry_id/0_photo/width/200", headers={
        "If-None-Match": '"other"', "If-Modified-Since": first.headers["Last-Modified"]})
    assert both.status == 200


async def test_if_none_match_star_answers_304(client):
    response = await client.get(f"{THUMB}/entry_id/0_photo/width/200", headers={"If-None-Match": "*"})
    assert response.status == 304


async def test_if_modified_since_answers_304(client):
    first = await client.get(f"{THUMB}/entry_id/0_photo/width/200")
    last_modified = first.headers["Last-Modified"]
    status, _, body = await send_raw(client, f"{THUMB}/entry_id/0_photo/width/200",
                                     headers={"If-Modified-Since": last_modified})
    assert status == 304 and body == b""
    older = await client.get(f"{THUMB}/entry_id/0_photo/width/200",
                             headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert older.status == 200


async def test_equivalent_urls_share_the_etag(client):
    base = f"{THUMB}/entry_id/0_photo/width/200/height/150"
    equivalent = [
        "/p/100/thumbnail/entry_id/0_photo/width/200/height/150",
        "/s/p/100/sp/0/thumbnail/height/150/width/200/entry_id/0_photo",
        f"{THUMB}?height=150&entry_id=0_photo&width=200",
        f"{THUMB}/entry_id/0_photo?width=200&height=150",
        f"{THUMB}/entry_id/0_photo.jpg/width/200/height/150/a.jpg",
        f"{THUMB}/entryId/0_photo/width/200/height/150",
        f"{base}/type/1/bgcolor/ffffff/format/jpg",
        f"{base}/type/0/bgcolor/FFFFFF/format/jpeg",
        f"{base}/quality/0/density/0/strip/0/src_x/0/src_y/0/src_w/0/src_h/0/rel_width/-1/rel_height/-1",
        f"{base}/clientTag/abc/file_name/x/novar/0",
    ]
    reference = await client.get(base)
    etag = reference.headers["ETag"]
    body = await reference.read()
    for path in equivalent:
        response = await client.get(path)
        assert response.status == 200, path
        assert response.headers["ETag"] == etag, path
        assert await response.read() == body, path
    defaults = await client.get(f"{THUMB}/entry_id/0_photo")
    explicit = await client.get(f"{THUMB}/entry_id/0_photo/width/120/height/90/type/1")
    assert defaults.headers["ETag"] == explicit.headers["ETag"]


async def test_an_explicit_default_quality_shares_the_etag(client):
    implicit = await client.get(f"{THUMB}/entry_id/0_photo/width/200")
    explicit = await client.get(f"{THUMB}/entry_id/0_photo/width/200/quality/75")
    assert await implicit.read() == await explicit.read()
    assert implicit.headers["ETag"] == explicit.headers["ETag"]


async def test_a_different_parameter_or_version_changes_the_etag(client):
    base = f"{THUMB}/entry_id/0_photo/width/200"
    variants = ["", "/height/50", "/type/3/height/150", "/type/2/height/150", "/type/2/height/150/bgcolor/0",
                "/quality/50", "/format/png", "/format/webp", "/strip/1", "/density/72", "/src_x/10",
                "/version/1", "/version/2"]
    etags = {}
    for variant in variants:
        response = await client.get(base + variant)
        assert response.status == 200, variant
        etags[variant] = response.headers["ETag"]
    assert len(set(etags.values())) == len(variants), etags
    other_entry = await client.get(f"{THUMB}/entry_id/0_webp/width/200")
    assert other_entry.headers["ETag"] not in etags.values()


async def test_a_changed_original_changes_the_etag_and_the_picture(serve, tmp_path):
    root = tmp_path / "origin"
    folder = make_entry(root, 100, "0_e", {"original.png": alpha_png(40, 30)})
    client = await serve(origin_config(tmp_path, root, "revalidate_seconds = 0"))
    path = f"{THUMB}/entry_id/0_e/width/0/height/0/format/png"
    first, _, before = await thumbnail(client, path, "PNG")
    assert before.size == (40, 30)
    (folder / "original.png").write_bytes(alpha_png(60, 20))
    second, _, after = await thumbnail(client, path, "PNG", headers={"If-None-Match": first.headers["ETag"]})
    assert after.size == (60, 20)
    assert second.headers["ETag"] != first.headers["ETag"]


async def test_head_has_the_length_and_no_body(client):
    get = await client.get(f"{THUMB}/entry_id/0_photo/width/250")
    body = await get.read()
    status, headers, head_body = await send_raw(client, f"{THUMB}/entry_id/0_photo/width/250", method="HEAD")
    assert status == 200
    assert head_body == b""
    assert headers["content-length"] == str(len(body))
    assert headers["content-type"] == "image/jpeg"
    assert headers["etag"] == get.headers["ETag"]
    # HEAD of a picture never asked for before renders it too (the length must be right)
    status, headers, head_body = await send_raw(client, f"{THUMB}/entry_id/0_photo/width/251", method="HEAD")
    fresh = await (await client.get(f"{THUMB}/entry_id/0_photo/width/251")).read()
    assert status == 200 and head_body == b"" and headers["content-length"] == str(len(fresh))


async def test_cors_preflight_on_a_thumbnail(client):
    response = await client.options(f"{THUMB}/entry_id/0_photo", headers={
        "Origin": "http://example.test", "Access-Control-Request-Method": "GET"})
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"


# ------------------------------------------------------------------------------------------------ caching


async def test_the_second_request_is_served_from_memory(aiohttp_client, tmp_path):
    root = tmp_path / "origin"
    folder = make_entry(root, 100, "0_e", {"original.png": alpha_png(200, 100)})
    app = make_app(origin_config(tmp_path, root, "revalidate_seconds = 3600"))
    renders = count_renders(app)
    client = await aiohttp_client(app)
    path = f"{THUMB}/entry_id/0_e/width/100"
    first = await client.get(path)
    body = await first.read()
    assert first.status == 200 and renders == ["render_image"]
    (folder / "original.png").write_bytes(b"garbage, not a picture" * 40)
    for _ in range(3):
        again = await client.get(path)
        assert again.status == 200
        assert await again.read() == body
        assert again.headers["ETag"] == first.headers["ETag"]
    assert renders == ["render_image"]


async def test_identical_concurrent_requests_render_once(aiohttp_client, tmp_path):
    app = make_app(make_config(tmp_path))
    renders = count_renders(app)
    client = await aiohttp_client(app)
    path = f"{THUMB}/entry_id/0_photo/width/640/type/3/height/300"

    async def one() -> tuple[int, bytes]:
        response = await client.get(path)
        return response.status, await response.read()

    answers = await asyncio.gather(*(one() for _ in range(20)))
    assert {status for status, _ in answers} == {200}
    assert len({body for _, body in answers}) == 1
    assert Image.open(io.BytesIO(answers[0][1])).size == (640, 300)
    assert renders == ["render_image"]


async def test_results_survive_a_restart_through_the_disk_cache(aiohttp_client, tmp_path):
    config = make_config(tmp_path)
    first_app = make_app(config)
    first_renders = count_renders(first_app)
    first = await aiohttp_client(first_app)
    path = f"{THUMB}/entry_id/0_photo/width/500/format/webp"
    body = await (await first.get(path)).read()
    assert await (await first.get(path)).read() == body  # asked again: from memory
    assert first_renders == ["render_image"]
    assert await cached_result_files(config.cache.dir, body), "the rendered bytes never reached the disk cache"
    second_app = make_app(config)  # a new process: empty memory, same cache folder
    second_renders = count_renders(second_app)
    second = await aiohttp_client(second_app)
    response = await second.get(path)
    assert response.status == 200
    assert response.headers["Content-Type"] == "image/webp"
    assert await response.read() == body
    assert second_renders == []


@pytest.mark.parametrize("min_uses", [1, 2])
async def test_a_result_is_written_to_disk_at_its_render_or_at_its_second_use(aiohttp_client, tmp_path, min_uses):
    config = make_config(tmp_path, extra=f"results_min_uses = {min_uses}")
    app = make_app(config)
    renders = count_renders(app)
    client = await aiohttp_client(app)
    path = f"{THUMB}/entry_id/0_photo/width/260/format/png"
    response = await client.get(path)
    body = await response.read()
    assert response.headers["Server-Timing"].endswith("cache;desc=render")
    await app[RUNTIME].results.flush()
    if min_uses == 2:  # behind the response there was nothing to write
        assert not cache_entries(config.cache.dir)
        response = await client.get(path)
        assert await response.read() == body
        assert response.headers["Server-Timing"].endswith("cache;desc=memory")
    assert renders == ["render_image"]
    [stored] = await cached_result_files(config.cache.dir, body)
    assert stored.stat().st_size > len(body)  # the body, then its trailer
    for _ in range(3):  # written once, whatever the uses after
        await client.get(path)
    await app[RUNTIME].results.flush()
    assert len(cache_entries(config.cache.dir)) == 1


async def test_a_result_asked_once_leaves_nothing_on_disk_and_renders_again_after_a_restart(aiohttp_client,
                                                                                          tmp_path):
    config = make_config(tmp_path, extra="results_min_uses = 2")
    first_app = make_app(config)
    first = await aiohttp_client(first_app)
    path = f"{THUMB}/entry_id/0_photo/width/250"
    body = await (await first.get(path)).read()
    await first_app[RUNTIME].results.flush()
    assert not cache_entries(config.cache.dir)
    second_app = make_app(config)
    renders = count_renders(second_app)
    second = await aiohttp_client(second_app)
    assert await (await second.get(path)).read() == body
    assert renders == ["render_image"]  # counted afresh in this process: its second use writes it
    assert await (await second.get(path)).read() == body
    assert await cached_result_files(config.cache.dir, body)


async def test_a_damaged_result_on_disk_is_not_served(aiohttp_client, tmp_path):
    config = make_config(tmp_path)  # written at its render ([cache] results_min_uses = 1, the default)
    first = await aiohttp_client(make_app(config))
    path = f"{THUMB}/entry_id/0_photo/width/300/format/png"
    body = await (await first.get(path)).read()
    [stored] = await cached_result_files(config.cache.dir, body)
    damaged = bytearray(body)
    for index in range(len(damaged) // 3, len(damaged) // 3 + 64):
        damaged[index] ^= 0xFF
    stored.write_bytes(bytes(damaged))  # same size: only the digest can tell
    app = make_app(config)
    renders = count_renders(app)
    second = await aiohttp_client(app)
    response = await second.get(path)
    assert response.status == 200
    again = await response.read()
    assert again == body  # rendered afresh, identical
    assert Image.open(io.BytesIO(again)).size == (300, 200)
    assert renders == ["render_image"]


# ------------------------------------------------------------------------------------------------ errors


def assert_error(status: int, headers, body: bytes, expected_status: int, code: int) -> str:
    text = body.decode()
    assert status == expected_status, text
    assert "Traceback" not in text
    assert text.endswith("\n") and text.count("\n") == 1
    assert headers["x-kaltura"] == f"error-{code}"
    assert headers["x-kaltura-app"].startswith(f"exiting on error {code} - ")
    cache_control = headers["cache-control"]
    assert cache_control == "no-store" or (cache_control.startswith("public, max-age=")
                                           and int(cache_control.rpartition("=")[2]) <= 10)
    assert not headers.get("etag")  # an error is no picture to revalidate
    return text


@pytest.mark.parametrize("params, name", [
    ("/width/abc", "width"),
    ("/height/1.5", "height"),
    ("/bgcolor/xyz", "bgcolor"),
    ("/bgcolor/1234567", "bgcolor"),
    ("/format/bogus", "format"),
    ("/quality/x", "quality"),
    ("/src_x/left", "src_x"),
    ("/density/high", "density"),
])
async def test_bad_parameters_are_400_naming_them(client, params, name):
    status, headers, body = await send_raw(client, f"{THUMB}/entry_id/0_photo{params}")
    text = assert_error(status, headers, body, 400, 25)
    assert name in text


@pytest.mark.parametrize("path, status, code", [
    (f"{THUMB}/entry_id/0_nothing", 404, 1),
    ("/p/200/thumbnail/entry_id/0_photo", 404, 1),  # scoped to the partner
    (f"{THUMB}/width/100", 400, 25),  # no entry_id
    (f"{THUMB}/entry_id/..%2F0_photo", 400, 25),
])
async def test_missing_entries(client, path, status, code):
    got, headers, body = await send_raw(client, path)
    assert_error(got, headers, body, status, code)


async def test_undecodable_originals_are_422_and_the_server_carries_on(serve, tmp_path):
    root = tmp_path / "origin"
    photo = photo_like_jpeg(800, 600)
    make_entry(root, 100, "0_random", {"original.jpg": random.Random(7).randbytes(20_000)})
    make_entry(root, 100, "0_truncated", {"original.jpg": photo[: len(photo) // 2]})
    make_entry(root, 100, "0_empty", {"original.jpg": b""})
    make_entry(root, 100, "0_text", {"original.png": "just some text\n" * 20})
    make_entry(root, 100, "0_good", {"original.png": alpha_png(40, 30)})
    client = await serve(origin_config(tmp_path, root))
    for entry in ("0_random", "0_truncated", "0_empty", "0_text"):
        for params in ("", "/width/50/format/png"):
            started = time.monotonic()
            status, headers, body = await send_raw(client, f"{THUMB}/entry_id/{entry}{params}")
            assert time.monotonic() - started < 5, entry
            assert_error(status, headers, body, 422, 17)
        _, _, good = await thumbnail(client, f"{THUMB}/entry_id/0_good")
        assert good.size == (120, 90)


async def test_a_repaired_original_is_rendered_once_noticed(serve, tmp_path):
    root = tmp_path / "origin"
    folder = make_entry(root, 100, "0_e", {"original.png": b"this is no picture\n" * 10})
    client = await serve(origin_config(tmp_path, root, "revalidate_seconds = 0"))
    status, headers, body = await send_raw(client, f"{THUMB}/entry_id/0_e")
    assert_error(status, headers, body, 422, 17)
    (folder / "original.png").write_bytes(alpha_png(40, 30))
    _, _, image = await thumbnail(client, f"{THUMB}/entry_id/0_e")
    assert image.size == (120, 90)
    assert_pixel(image, (30, 22), RED, 16)


async def test_an_original_with_a_png_signature_and_garbage_is_422(serve, tmp_path):
    root = tmp_path / "origin"
    make_entry(root, 100, "0_badpng", {"original.png": b"\x89PNG\r\n\x1a\n and then garbage"})
    client = await serve(origin_config(tmp_path, root))
    status, headers, body = await send_raw(client, f"{THUMB}/entry_id/0_badpng")
    assert_error(status, headers, body, 422, 17)


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width×height (a decompression bomb's calling card)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" + b"\x00" * 3 * width)  # one row; the rest is missing
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


async def test_images_over_the_pixel_limit_are_413(serve, tmp_path):
    root = tmp_path / "origin"
    make_entry(root, 100, "0_bomb", {"original.png": png_claiming(40_000, 40_000)})
    make_entry(root, 100, "0_big", {"original.png": png(Image.new("RGB", (400, 300), RED))})
    make_entry(root, 100, "0_small", {"original.png": png(Image.new("RGB", (100, 100), RED))})
    client = await serve(origin_config(tmp_path, root, extra="[limits]\nmax_source_pixels = 50000"))
    for entry in ("0_bomb", "0_big"):
        started = time.monotonic()
        status, headers, body = await send_raw(client, f"{THUMB}/entry_id/{entry}")
        assert time.monotonic() - started < 5
        assert_error(status, headers, body, 413, 17)
    _, _, small = await thumbnail(client, f"{THUMB}/entry_id/0_small")
    assert small.size == (90, 90)
    assert_pixel(small, (45, 45), RED, 12)


async def test_originals_over_the_byte_limit_are_413(serve, tmp_path):
    client = await serve(make_config(tmp_path, extra="[limits]\nmax_original_bytes = 100000"))
    status, headers, body = await send_raw(client, f"{THUMB}/entry_id/0_photo")  # 249 kB
    assert_error(status, headers, body, 413, 17)
    _, _, small = await thumbnail(client, f"{THUMB}/entry_id/0_alpha")  # a few hundred bytes
    assert small.size == (120, 90)


async def test_a_bomb_header_is_413_under_the_default_limit(serve, tmp_path):
    root = tmp_path / "origin"
    make_entry(root, 100, "0_bomb", {"original.png": png_claiming(60_000, 60_000)})
    client = await serve(origin_config(tmp_path, root))
    status, headers, body = await send_raw(client, f"{THUMB}/entry_id/0_bomb")
    assert_error(status, headers, body, 413, 17)


# ------------------------------------------------------------------------------------------------ http origin


async def test_a_thumbnail_through_the_http_origin(serve, tmp_path, nginx):
    client = await serve(make_config(tmp_path, f'kind = "http"\nurl = "{nginx.url}"\ntimeout_seconds = 2'))
    response, body, image = await thumbnail(client, f"{THUMB}/entry_id/0_photo/width/200")
    assert image.size == (200, 133)
    assert is_red(image.convert("RGB").getpixel((4, 4)))
    assert response.headers["Cache-Control"] == "public, max-age=3600"
    again = await client.get(f"{THUMB}/entry_id/0_photo/width/200")
    assert await again.read() == body
    (tmp_path / "local").mkdir()
    local = await serve(make_config(tmp_path / "local"))
    same = await (await local.get(f"{THUMB}/entry_id/0_photo/width/200")).read()
    assert same == body  # the same picture as from the local folder
    assert [path for method, path, status in nginx.requests()
            if method == "GET" and path == "/100/0_photo/original.jpg"] == ["/100/0_photo/original.jpg"]
