"""Animated GIF/WebP sources kept animated (`[thumbnail] keep_animation`, SPEC §2): every frame resized along one
plan, each frame's duration and the loop count kept, the work bounded by a pixel budget (past it, the first frame),
and the first frame only by default, as Kaltura gives it."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from fixtures.generate import colour_for_second, mpo
from mediaproxy.media.thumbnail import RenderSettings, render_image
from mediaproxy.urls import parse

from .conftest import make_config, make_entry

DURATIONS = [100, 200, 300, 400]
BUDGET = 10_000_000


def animated(pillow_format: str, size=(120, 80), frames: int = 4, loop: int | None = 0, alpha: bool = False,
             durations=None) -> bytes:
    """Frame i a solid colour_for_second(i) (with alpha: its right half transparent), shown DURATIONS[i] ms."""
    pictures = []
    for index in range(frames):
        picture = Image.new("RGBA", size, colour_for_second(index) + (255,))
        if alpha:
            picture.paste((0, 0, 0, 0), (size[0] // 2, 0, size[0], size[1]))
        pictures.append(picture if alpha else picture.convert("RGB"))
    # (kmax=1: whole frames, else libwebp leaves the alpha flag unset for a background that no frame covers)
    options = {"lossless": True, "kmax": 1} if pillow_format == "WEBP" else {"disposal": 2}
    if loop is not None:
        options["loop"] = loop
    buffer = io.BytesIO()
    pictures[0].save(buffer, pillow_format, save_all=True, append_images=pictures[1:],
                     duration=durations or DURATIONS[:frames], **options)
    return buffer.getvalue()


def render(data: bytes, params: str, budget: int = BUDGET):
    request = parse(f"/p/100/thumbnail/entry_id/0_a/{params}", 100)
    rendered = render_image(request.options, data, RenderSettings(90, animation_pixels=budget))
    return rendered, Image.open(io.BytesIO(rendered.body))


def frames_of(image: Image.Image) -> list[tuple[tuple[int, ...], int]]:
    """(centre pixel as RGBA, duration) of every frame."""
    seen = []
    for index in range(image.n_frames):
        image.seek(index)
        frame = image.convert("RGBA")
        seen.append((frame.getpixel((frame.width // 4, frame.height // 2)), image.info.get("duration")))
    return seen


def near(pixel, colour, tolerance=24) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour))


@pytest.mark.parametrize("source_format", ["GIF", "WEBP"])
@pytest.mark.parametrize("output, pillow_output", [("gif", "GIF"), ("webp", "WEBP")])
def test_every_frame_is_resized_with_its_duration_and_the_loop_count(source_format, output, pillow_output):
    rendered, image = render(animated(source_format, loop=3), f"width/60/height/60/type/3/format/{output}")
    assert image.format == pillow_output and image.size == (60, 60)
    assert rendered.frames == 4 and getattr(image, "n_frames", 1) == 4
    seen = frames_of(image)
    assert [duration for _, duration in seen] == DURATIONS
    assert all(near(pixel, colour_for_second(index)) for index, (pixel, _) in enumerate(seen)), seen
    assert image.info["loop"] == 3


@pytest.mark.parametrize("output", ["gif", "webp"])
def test_forever_stays_forever(output):
    _, image = render(animated("GIF", loop=0), f"width/30/format/{output}")
    assert image.info["loop"] == 0 and image.n_frames == 4


def test_a_gif_that_plays_once_still_plays_once():
    _, gif = render(animated("GIF", loop=None), "width/30/format/gif")
    assert "loop" not in gif.info  # no loop extension: browsers play it once
    _, webp = render(animated("GIF", loop=None), "width/30/format/webp")
    assert webp.info["loop"] == 1


def test_type_2_pads_every_frame_and_alpha_follows_the_output():
    source = animated("WEBP", size=(120, 60), alpha=True)
    _, webp = render(source, "width/80/height/80/type/2/bgcolor/0000ff/format/webp")
    assert webp.size == (80, 80) and webp.n_frames == 4
    for index in range(4):
        webp.seek(index)
        frame = webp.convert("RGBA")
        assert near(frame.getpixel((40, 5)), (0, 0, 255, 255))  # the padding, opaque bgcolor
        assert frame.getpixel((60, 40))[3] == 0  # the transparent half is kept transparent
        assert near(frame.getpixel((20, 40)), colour_for_second(index) + (255,))
    _, gif = render(source, "width/80/height/80/type/2/bgcolor/0000ff/format/gif")
    gif.seek(2)
    assert near(gif.convert("RGB").getpixel((60, 40)), (0, 0, 255))  # no alpha in the output: painted bgcolor


def test_past_the_pixel_budget_only_the_first_frame():
    source = animated("GIF", size=(100, 100), frames=4)  # 4 frames × 10,000 pixels
    kept, image = render(source, "width/50/format/gif", budget=40_000)
    assert kept.frames == 4 and image.n_frames == 4
    still, image = render(source, "width/50/format/gif", budget=39_999)
    assert still.frames == 1 and getattr(image, "n_frames", 1) == 1
    assert near(image.convert("RGBA").getpixel((25, 25)), colour_for_second(0) + (255,))
    # an upscaled output counts its own, larger frames
    upscaled, _ = render(source, "width/200/format/gif", budget=4 * 100 * 100 * 2)
    assert upscaled.frames == 1


def test_many_frames_cost_at_most_the_budget():
    source = animated("GIF", size=(64, 48), frames=300, durations=[20] * 300)
    rendered, image = render(source, "width/32/format/webp", budget=300 * 64 * 48)
    assert rendered.frames == 300 and image.n_frames == 300
    rendered, image = render(source, "width/32/format/webp", budget=300 * 64 * 48 - 1)
    assert rendered.frames == 1


def test_other_outputs_and_the_default_give_the_first_frame():
    source = animated("GIF")
    for params, budget in (("width/60/format/png", BUDGET), ("width/60/format/jpg", BUDGET),
                           ("width/60/format/gif", 0)):
        rendered, image = render(source, params, budget=budget)
        assert rendered.frames == 1 and getattr(image, "n_frames", 1) == 1
        assert near(image.convert("RGBA").getpixel((30, 20)), colour_for_second(0) + (255,))


def test_several_pictures_that_are_no_animation_give_the_first():
    source = mpo(60, 40, colours=((255, 0, 0), (0, 0, 255)))  # a stereo pair: MPO's second picture is no frame
    rendered, image = render(source, "width/30/format/gif")
    assert rendered.frames == 1 and getattr(image, "n_frames", 1) == 1
    assert near(image.convert("RGBA").getpixel((15, 10)), (255, 0, 0, 255))


async def test_over_http_only_where_the_config_keeps_animation(serve, tmp_path):
    root = tmp_path / "origin"
    make_entry(root, 100, "0_anim", {"original.gif": animated("GIF", loop=0)})
    origin = f'kind = "local"\nroot = "{root}"'
    (tmp_path / "kept").mkdir()
    kept = await serve(make_config(tmp_path / "kept", origin, "[thumbnail]\nkeep_animation = true"))
    default = await serve(make_config(tmp_path, origin))
    path = "/p/100/sp/10000/thumbnail/entry_id/0_anim/width/60"
    for client, frames in ((kept, 4), (default, 1)):
        for output in ("gif", "webp"):
            response = await client.get(f"{path}/format/{output}")
            image = Image.open(io.BytesIO(await response.read()))
            assert getattr(image, "n_frames", 1) == frames, (output, frames)
            assert image.size == (60, 40)
        jpeg = await client.get(path)
        assert jpeg.headers["Content-Type"] == "image/jpeg"
    kept_etag = (await kept.get(f"{path}/format/gif")).headers["ETag"]
    assert kept_etag != (await default.get(f"{path}/format/gif")).headers["ETag"]  # another picture, another tag

    # format/auto keeps the animation in the format that can: webp where taken, else gif
    auto = await kept.get(f"{path}/format/auto", headers={"Accept": "image/avif,image/webp,*/*"})
    assert auto.headers["Content-Type"] == "image/webp" and auto.headers["Vary"] == "Accept"
    assert Image.open(io.BytesIO(await auto.read())).n_frames == 4
    old = await kept.get(f"{path}/format/auto", headers={"Accept": "*/*"})
    assert old.headers["Content-Type"] == "image/gif"
    assert Image.open(io.BytesIO(await old.read())).n_frames == 4


async def test_over_http_an_animation_past_the_budget_negotiates_as_a_still(serve, tmp_path):
    root = tmp_path / "origin"
    make_entry(root, 100, "0_anim", {"original.gif": animated("GIF", size=(100, 100))})
    client = await serve(make_config(tmp_path, f'kind = "local"\nroot = "{root}"',
                                     "[thumbnail]\nkeep_animation = true\nanimation_pixels = 39999"))
    response = await client.get("/p/100/sp/10000/thumbnail/entry_id/0_anim/width/50/format/auto",
                                headers={"Accept": "image/webp,*/*"})
    assert response.headers["Content-Type"] == "image/webp"
    assert getattr(Image.open(io.BytesIO(await response.read())), "n_frames", 1) == 1
    old = await client.get("/p/100/sp/10000/thumbnail/entry_id/0_anim/width/50/format/auto",
                           headers={"Accept": "*/*"})
    assert old.headers["Content-Type"] == "image/jpeg"
