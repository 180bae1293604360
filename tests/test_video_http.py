"""Video over HTTP: thumbnails of video and audio entries (SPEC §2) and flvclipper clips (SPEC §3, §6).

Every frame of second i of the videos is a solid colour_for_second(i), so the centre of a thumbnail (or of each
tile of a strip) says which second it was grabbed from. Clips are written to a file and read back with PyAV:
container, first and last frame, rebased timestamps, audio, atom order.

Bundled entries (fixtures/media/100): 0_video (320×240, 6 s, keyframe each second, H.264/AAC MP4, thumb_offset
2.5, flavor 0_small 160×120), 0_flv (320×240, 5 s H.264/AAC FLV), 0_audio (4 s m4a), 0_photo (1280×853 JPEG).
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from pathlib import Path

import av
import pytest
from PIL import Image

from fixtures.generate import colour_for_second, write_video
from mediaproxy.services.thumbnail import BUNDLED_AUDIO_PLACEHOLDER

from .conftest import FIXTURE_MEDIA, cache_entries, make_config, make_entry, send_raw, until
from .test_media_video import MP4_FORMAT, RANGE_COLOURS, RANGE_TOLERANCE, describe, second_of, top_level_atoms

THUMB = "/p/100/sp/10000/thumbnail/entry_id"
CLIP = "/p/100/sp/10000/flvclipper/entry_id"
VIDEO = FIXTURE_MEDIA / "100" / "0_video" / "original.mp4"
FLV = FIXTURE_MEDIA / "100" / "0_flv" / "original.flv"
FRAME = 1 / 25


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> Path:
    """An origin of generated entries, written once for the module."""
    root = tmp_path_factory.mktemp("origin")
    work = tmp_path_factory.mktemp("work")
    small = {"width": 160, "height": 120}
    write_video(work / "four.mp4", seconds=4, **small)
    write_video(work / "two.mp4", seconds=2, **small)
    write_video(work / "silent.mp4", seconds=3, audio=False, **small)
    write_video(work / "full.mp4", seconds=3, width=64, height=48, audio=False, full_range=True,
                colours=RANGE_COLOURS)
    four = (work / "four.mp4").read_bytes()
    make_entry(root, 100, "0_nojson", {"original.mp4": four})  # no entry.json: no thumb_offset
    make_entry(root, 100, "0_two", {"original.mp4": (work / "two.mp4").read_bytes()})
    make_entry(root, 100, "0_silent", {"original.mp4": (work / "silent.mp4").read_bytes()})
    make_entry(root, 100, "0_full", {"original.mp4": (work / "full.mp4").read_bytes()})
    make_entry(root, 100, "0_photo", {"original.jpg": (FIXTURE_MEDIA / "100/0_photo/original.jpg").read_bytes()})
    make_entry(root, 100, "0_audio", {"original.m4a": (FIXTURE_MEDIA / "100/0_audio/original.m4a").read_bytes()})
    make_entry(root, 100, "0_garbage", {"original.mp4": b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 64})
    make_entry(root, 100, "0_half", {"original.mp4": four[:len(four) // 2]})  # moov intact, media cut in half
    make_entry(root, 100, "0_hollow", {"original.mp4": four[:four.index(b"mdat") + 4]})  # moov, no frames at all
    return root


async def serve_origin(serve, tmp_path: Path, root: Path, extra: str = ""):
    return await serve(make_config(tmp_path, f'kind = "local"\nroot = "{root}"', extra))


# ------------------------------------------------------------------------------------------------ helpers


async def thumbnail(client, path: str, image_format: str = "JPEG"):
    response = await client.get(path)
    body = await response.read()
    assert response.status == 200, (path, response.status, body[:200])
    image = Image.open(io.BytesIO(body))
    assert image.format == image_format
    return response, image


async def frame_second(client, path: str) -> int:
    _, image = await thumbnail(client, path)
    return second_of(image)


def tile_seconds(image: Image.Image, count: int) -> list[int]:
    """The colour second of each of `count` equal tiles laid side by side, read at each tile's centre."""
    tile = image.width // count
    rgb = image.convert("RGB")
    return [second_of(rgb.crop((index * tile, 0, (index + 1) * tile, image.height))) for index in range(count)]


def max_age(response) -> int:
    match = re.fullmatch(r"public, max-age=(\d+)", response.headers["Cache-Control"])
    assert match, response.headers["Cache-Control"]
    return int(match.group(1))


def assert_error(status: int, headers, body: bytes, expected: int | tuple[int, ...], code: int | None = None):
    allowed = expected if isinstance(expected, tuple) else (expected,)
    assert status in allowed, (status, body[:200])
    assert body.strip() and b"\n" not in body.strip() and b"Traceback" not in body  # one plain line
    assert headers["x-kaltura"].startswith("error-")
    if code is not None:
        assert headers["x-kaltura"] == f"error-{code}"
    assert headers["cache-control"] == "no-store"


async def get_clip(client, path: str, tmp_path: Path, name: str = "clip", headers: dict | None = None):
    """(response, body, described) of a clip; the body is written to tmp_path for PyAV to read."""
    response = await client.get(path, headers=headers or {})
    body = await response.read()
    assert response.status == 200, (path, response.status, body[:200])
    extension = "flv" if response.headers["Content-Type"] == "video/x-flv" else "mp4"
    target = tmp_path / f"{name}.{extension}"
    target.write_bytes(body)
    return response, body, describe(target)


def clip_size(body: bytes, tmp_path: Path) -> tuple[int, int]:
    target = tmp_path / "sized.bin"
    target.write_bytes(body)
    with av.open(str(target)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.width, stream.codec_context.height


def cached_clip_entries(tmp_path: Path) -> list[dict]:
    """The clip indexes and remuxed clips in the disk cache of a server made by make_config(tmp_path)."""
    return [entry for entry in cache_entries(tmp_path / "cache")
            if entry["ns"] == "indexes" or entry["ns"] == "results" and "|remux|" in entry["key"]]


# ------------------------------------------------------------------------------------------------ thumbnails: frames


@pytest.mark.parametrize("vid_sec, second", [
    ("0", 0), ("0.5", 0), ("0.99", 0), ("1", 1), ("1.5", 1), ("2.999", 2), ("3.04", 3), ("4.5", 4), ("5.99", 5),
    ("6", 5), ("100", 5),  # past the end: the last frame
])
async def test_vid_sec_selects_the_frame(client, vid_sec, second):
    assert await frame_second(client, f"{THUMB}/0_video/vid_sec/{vid_sec}") == second


@pytest.mark.parametrize("params", ["", "/vid_sec/-1", "/vid_sec/"])
async def test_default_frame_is_the_entry_thumb_offset(client, params):
    assert await frame_second(client, f"{THUMB}/0_video{params}") == 2  # thumb_offset 2.5


async def test_vid_sec_in_the_query_string(client):
    assert await frame_second(client, f"{THUMB}/0_video?vid_sec=4.2") == 4


async def test_default_frame_without_an_entry_json_is_at_three_seconds(serve, tmp_path, origin):
    client = await serve_origin(serve, tmp_path, origin)
    assert await frame_second(client, f"{THUMB}/0_nojson") == 3
    assert await frame_second(client, f"{THUMB}/0_two") == 1  # 3 s is past the end of a 2-s video: last frame


@pytest.mark.parametrize("params, size", [
    ("", (120, 90)),
    ("/width/0/height/0", (320, 240)),
    ("/width/160", (160, 120)),
    ("/height/60", (80, 60)),
    ("/width/640", (640, 480)),  # upscaling
    ("/width/100/height/100", (100, 75)),
    ("/width/100/height/100/type/2", (100, 100)),
    ("/width/100/height/100/type/3", (100, 100)),
    ("/width/100/type/3", (100, 100)),
    ("/width/100/height/40/type/4", (100, 40)),
    ("/width/100/height/50/type/5", (100, 50)),
    ("/width/90!/height/30", (90, 30)),
])
async def test_sizes_and_modes_apply_to_frames(client, params, size):
    _, image = await thumbnail(client, f"{THUMB}/0_video/vid_sec/1.5{params}")
    assert image.size == size
    assert second_of(image) == 1


async def test_type_2_pads_the_frame_with_bgcolor(client):
    _, image = await thumbnail(client, f"{THUMB}/0_video/vid_sec/4.5/width/100/height/100/type/2/format/png",
                               "PNG")
    rgb = image.convert("RGB")
    assert rgb.getpixel((50, 3)) == (255, 255, 255) and rgb.getpixel((50, 96)) == (255, 255, 255)  # 100×75 centred
    assert second_of(image) == 4
    _, black = await thumbnail(client, f"{THUMB}/0_video/vid_sec/4.5/width/100/height/100/type/2/bgcolor/0/format/png",
                               "PNG")
    assert black.convert("RGB").getpixel((50, 3)) == (0, 0, 0)


@pytest.mark.parametrize("fmt, pillow_format, content_type", [
    ("png", "PNG", "image/png"), ("webp", "WEBP", "image/webp"), ("gif", "GIF", "image/gif"),
    ("jpg", "JPEG", "image/jpeg"),
])
async def test_frames_in_every_format(client, fmt, pillow_format, content_type):
    response, image = await thumbnail(client, f"{THUMB}/0_video/vid_sec/3.5/width/80/format/{fmt}", pillow_format)
    assert response.headers["Content-Type"] == content_type
    assert image.size == (80, 60)
    assert second_of(image) == 3


async def test_a_png_frame_has_the_exact_colour(client):
    _, image = await thumbnail(client, f"{THUMB}/0_video/vid_sec/2.5/width/0/height/0/format/png", "PNG")
    centre = image.convert("RGB").getpixel((160, 120))
    assert max(abs(a - b) for a, b in zip(centre, colour_for_second(2))) <= 4


async def test_frames_of_a_full_range_video_keep_their_colours(serve, tmp_path, origin):
    client = await serve_origin(serve, tmp_path, origin)
    for second, colour in enumerate(RANGE_COLOURS):
        _, image = await thumbnail(client, f"{THUMB}/0_full/vid_sec/{second + 0.5}/width/0/height/0/format/png", "PNG")
        centre = image.convert("RGB").getpixel((32, 24))
        assert max(abs(a - b) for a, b in zip(centre, colour)) <= RANGE_TOLERANCE, (second, centre)


@pytest.mark.parametrize("vid_sec, second", [("0.5", 0), ("2.2", 2), ("4.99", 4), ("50", 4)])
async def test_frames_of_an_flv_entry(client, vid_sec, second):
    _, image = await thumbnail(client, f"{THUMB}/0_flv/vid_sec/{vid_sec}/width/0/height/0")
    assert image.size == (320, 240)
    assert second_of(image) == second


# ------------------------------------------------------------------------------------------------ slices and strips


@pytest.mark.parametrize("index", range(6))
async def test_one_slice_of_six(client, index):
    assert await frame_second(client, f"{THUMB}/0_video/vid_slices/6/vid_slice/{index}") == index


async def test_slice_index_past_the_last_is_the_last(client):
    assert await frame_second(client, f"{THUMB}/0_video/vid_slices/6/vid_slice/9") == 5
    assert await frame_second(client, f"{THUMB}/0_video/vid_slices/3/vid_slice/1") in (2, 3)  # slice [2, 4)


async def test_a_slice_of_a_window(client):
    # window 1..5 in 4 slices: slice 2 is [3, 4)
    assert await frame_second(client, f"{THUMB}/0_video/start_sec/1/end_sec/5/vid_slices/4/vid_slice/2") == 3


async def test_a_strip_lays_the_slices_side_by_side(client):
    _, image = await thumbnail(client, f"{THUMB}/0_video/vid_slices/6/width/40/height/30/format/png", "PNG")
    assert image.size == (240, 30)  # n × tile width
    assert tile_seconds(image, 6) == [0, 1, 2, 3, 4, 5]  # slice 0 on the left


async def test_a_strip_of_a_window(client):
    _, image = await thumbnail(client, f"{THUMB}/0_video/vid_slices/4/start_sec/1/end_sec/5/width/40/format/png",
                               "PNG")
    assert image.size == (160, 30)
    assert tile_seconds(image, 4) == [1, 2, 3, 4]
    _, image = await thumbnail(client, f"{THUMB}/0_video/vid_slices/2/start_sec/4/width/40/format/png", "PNG")
    assert tile_seconds(image, 2) == [4, 5]  # to the end of the video


async def test_strips_with_crop_and_of_an_flv(client):
    _, image = await thumbnail(client, f"{THUMB}/0_video/vid_slices/3/width/50/height/50/type/3")
    assert image.size == (150, 50)
    assert tile_seconds(image, 3) == [0, 2, 4]
    _, image = await thumbnail(client, f"{THUMB}/0_flv/vid_slices/5/width/32/format/png", "PNG")
    assert image.size == (160, 24)
    assert tile_seconds(image, 5) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("params", [
    "/vid_slices/7/width/10000",  # 70000 wide
    "/vid_slices/7/height/10000",
    "/vid_slices/300/width/0/height/0",  # the frame's own 320 px × 300: known only from the video
])
async def test_a_strip_over_the_limit_is_400(client, params):
    status, headers, body = await send_raw(client, f"{THUMB}/0_video{params}")
    assert_error(status, headers, body, 400, 25)
    assert b"vid_slices" in body


@pytest.mark.parametrize("params, name", [
    ("/vid_slices/0", b"vid_slices"),
    ("/start_sec/4/end_sec/2", b"start_sec"),
    ("/vid_slices/3/start_sec/4/end_sec/2", b"start_sec"),
    ("/vid_sec/abc", b"vid_sec"),
])
async def test_bad_video_parameters_are_400(client, params, name):
    status, headers, body = await send_raw(client, f"{THUMB}/0_video{params}")
    assert_error(status, headers, body, 400, 25)
    assert name in body


# ------------------------------------------------------------------------------------------------ flavors, audio


async def test_flavor_id_selects_the_flavor(client):
    _, image = await thumbnail(client, f"{THUMB}/0_video/flavor_id/0_small/vid_sec/4.5/width/0/height/0")
    assert image.size == (160, 120)
    assert second_of(image) == 4
    _, original = await thumbnail(client, f"{THUMB}/0_video/vid_sec/4.5/width/0/height/0")
    assert original.size == (320, 240)


async def test_unknown_flavor_is_404(client):
    status, headers, body = await send_raw(client, f"{THUMB}/0_video/flavor_id/0_nope")
    assert_error(status, headers, body, 404, 6)


async def test_the_configured_thumbnail_flavor_is_used_where_it_exists(serve, tmp_path):
    client = await serve(make_config(tmp_path, extra='[video]\nthumbnail_flavor = "0_small"'))
    _, image = await thumbnail(client, f"{THUMB}/0_video/vid_sec/1.5/width/0/height/0")
    assert image.size == (160, 120)
    assert second_of(image) == 1
    _, flv = await thumbnail(client, f"{THUMB}/0_flv/vid_sec/1.5/width/0/height/0")  # has no such flavor
    assert flv.size == (320, 240)


@pytest.mark.parametrize("params, size", [
    ("/width/64/height/36", (64, 36)),
    ("/width/100/height/100/type/3", (100, 100)),
    ("", (120, 68)),
])
async def test_an_audio_entry_gives_the_placeholder(client, params, size):
    response, image = await thumbnail(client, f"{THUMB}/0_audio/vid_sec/2{params}")
    assert response.headers["Content-Type"] == "image/jpeg"
    assert image.size == size
    assert 0 < max_age(response) <= 300
    video, _ = await thumbnail(client, f"{THUMB}/0_video")
    assert max_age(response) < max_age(video)


async def test_the_audio_placeholder_is_the_configured_picture(client):
    _, image = await thumbnail(client, f"{THUMB}/0_audio/width/0/height/0/format/png", "PNG")
    placeholder = Image.open(BUNDLED_AUDIO_PLACEHOLDER).convert("RGB")
    assert image.size == placeholder.size
    assert image.convert("RGB").tobytes() == placeholder.tobytes()


# ------------------------------------------------------------------------------------------------ flvclipper


async def test_an_mp4_clip(client, tmp_path):
    response, body, clip = await get_clip(client, f"{CLIP}/0_video/clip_from/1500/clip_to/3200", tmp_path)
    assert response.headers["Content-Type"] == "video/mp4"
    assert response.headers["X-Clip-Start-Ms"] == "1000"  # the keyframe at or before 1.5 s
    assert response.headers["Cache-Control"] == "public, max-age=8640000"
    assert response.headers["Content-Length"] == str(len(body))
    assert clip.format == MP4_FORMAT
    assert (clip.first_second, clip.last_second) == (1, 3)
    assert clip.first_video_pts == pytest.approx(0.0, abs=1e-6)
    assert clip.video_duration == pytest.approx(2.2, abs=FRAME + 1e-3)
    assert clip.audio_start is not None and abs(clip.audio_start) <= 0.05
    assert clip.audio_duration == pytest.approx(clip.video_duration, abs=0.1)
    atoms = top_level_atoms(body)
    assert atoms.index("moov") < atoms.index("mdat")
    assert (320, 240) == clip_size(body, tmp_path)


@pytest.mark.parametrize("path", [
    f"{CLIP}/0_video/seek_from/2500",
    f"{CLIP}/0_video?seek_from=2500",
    "/flvclipper/entry_id/0_video/clip_from/2500",  # partner from [defaults]
    "/p/100/flvclipper/entry_id/0_video/clip_from/2500/clip_to/0",  # clip_to 0: to the end
    f"{CLIP}/0_video/clip_from/2500/seek_from/4500",  # clip_from beats seek_from
])
async def test_clip_from_alternatives(client, tmp_path, path):
    response, _, clip = await get_clip(client, path, tmp_path)
    assert response.headers["X-Clip-Start-Ms"] == "2000"
    assert (clip.first_second, clip.last_second) == (2, 5)
    assert clip.video_duration == pytest.approx(4.0, abs=FRAME + 1e-3)


async def test_a_trailing_flv_name_converts_an_mp4(client, tmp_path):
    response, body, clip = await get_clip(client, f"{CLIP}/0_video/clip_from/3000/clip_to/5000/a.flv", tmp_path)
    assert response.headers["Content-Type"] == "video/x-flv"
    assert response.headers["X-Clip-Start-Ms"] == "3000"
    assert body[:3] == b"FLV"
    assert clip.format == "flv"
    assert (clip.first_second, clip.last_second, clip.first_video_pts) == (3, 4, 0.0)
    assert clip.video_duration == pytest.approx(2.0, abs=FRAME + 1e-3)
    assert clip.audio_duration == pytest.approx(2.0, abs=0.1)


async def test_an_flv_clip_of_the_flv_entry(client, tmp_path):
    response, body, clip = await get_clip(client, f"{CLIP}/0_flv/clip_from/2400/clip_to/4000", tmp_path)
    assert response.headers["Content-Type"] == "video/x-flv"
    assert response.headers["X-Clip-Start-Ms"] == "2000"
    assert body[:3] == b"FLV"
    assert (clip.format, clip.first_second, clip.last_second, clip.first_video_pts) == ("flv", 2, 3, 0.0)
    assert clip.video_duration == pytest.approx(2.0, abs=FRAME + 1e-3)
    assert clip.audio_start is not None and abs(clip.audio_start) <= 0.05


async def test_a_trailing_mp4_name_converts_an_flv(client, tmp_path):
    response, body, clip = await get_clip(client, f"{CLIP}/0_flv/clip_from/1000/a.mp4", tmp_path)
    assert response.headers["Content-Type"] == "video/mp4"
    assert response.headers["X-Clip-Start-Ms"] == "1000"
    assert (clip.format, clip.first_second, clip.last_second, clip.first_video_pts) == (MP4_FORMAT, 1, 4, 0.0)
    assert clip.video_duration == pytest.approx(4.0, abs=FRAME + 1e-3)
    atoms = top_level_atoms(body)
    assert atoms.index("moov") < atoms.index("mdat")


@pytest.mark.parametrize("path, original, content_type", [
    (f"{CLIP}/0_video", VIDEO, "video/mp4"),
    (f"{CLIP}/0_video/a.mp4", VIDEO, "video/mp4"),
    (f"{CLIP}/0_video/clip_from/0", VIDEO, "video/mp4"),
    (f"{CLIP}/0_flv", FLV, "video/x-flv"),
    (f"{CLIP}/0_flv/a.flv", FLV, "video/x-flv"),
])
async def test_no_clip_parameters_serve_the_whole_file(client, path, original, content_type):
    response = await client.get(path)
    assert response.status == 200
    assert response.headers["Content-Type"] == content_type
    assert response.headers["X-Clip-Start-Ms"] == "0"
    assert await response.read() == original.read_bytes()


async def test_the_whole_video_in_the_other_container(client, tmp_path):
    response, body, clip = await get_clip(client, f"{CLIP}/0_video/a.flv", tmp_path)
    assert response.headers["X-Clip-Start-Ms"] == "0"
    assert (clip.format, clip.first_second, clip.last_second) == ("flv", 0, 5)
    assert clip.video_duration == pytest.approx(6.0, abs=FRAME + 1e-3)


async def test_a_clip_of_a_flavor(client, tmp_path):
    response, body, clip = await get_clip(client, f"{CLIP}/0_video/flavor/0_small/clip_from/4100", tmp_path)
    assert response.headers["X-Clip-Start-Ms"] == "4000"
    assert clip_size(body, tmp_path) == (160, 120)
    assert (clip.first_second, clip.last_second) == (4, 5)
    _, body, _ = await get_clip(client, f"{CLIP}/0_video/flavor/1/clip_from/4100", tmp_path)  # 1: the best
    assert clip_size(body, tmp_path) == (320, 240)


async def test_range_requests_on_a_clip(client):
    path = f"{CLIP}/0_video/clip_from/2000/clip_to/4000"
    full = await client.get(path)
    assert full.status == 200
    assert full.headers["Accept-Ranges"] == "bytes"
    body = await full.read()
    size = len(body)
    assert size > 2000

    part = await client.get(path, headers={"Range": "bytes=100-999"})
    assert part.status == 206
    assert part.headers["Content-Range"] == f"bytes 100-999/{size}"
    assert part.headers["X-Clip-Start-Ms"] == "2000"
    assert await part.read() == body[100:1000]

    open_ended = await client.get(path, headers={"Range": "bytes=1000-"})
    assert open_ended.status == 206
    assert await open_ended.read() == body[1000:]

    suffix = await client.get(path, headers={"Range": "bytes=-500"})
    assert suffix.status == 206
    assert suffix.headers["Content-Range"] == f"bytes {size - 500}-{size - 1}/{size}"
    assert await suffix.read() == body[-500:]

    past_end = await client.get(path, headers={"Range": f"bytes={size}-"})
    assert past_end.status == 416


async def test_range_on_the_whole_file(client):
    response = await client.get(f"{CLIP}/0_flv", headers={"Range": "bytes=0-99"})
    assert response.status == 206
    assert await response.read() == FLV.read_bytes()[:100]


async def test_identical_concurrent_clips_are_cut_once(client, tmp_path):
    path = f"{CLIP}/0_video/clip_from/1200/clip_to/2600"
    responses = await asyncio.gather(*(client.get(path) for _ in range(6)))
    bodies = [await response.read() for response in responses]
    assert [response.status for response in responses] == [200] * 6
    assert all(body == bodies[0] for body in bodies)
    assert {response.headers["X-Clip-Start-Ms"] for response in responses} == {"1000"}
    assert cached_clip_entries(tmp_path) == []  # a short window's index is rebuilt faster than read from disk
    again = await client.get(path)
    assert await again.read() == bodies[0] and again.headers["Server-Timing"].endswith("cache;desc=memory")


async def test_the_index_of_a_long_clip_is_kept_on_disk_and_nothing_else(serve, tmp_path):
    root = tmp_path / "media"
    long_video = tmp_path / "long.mp4"
    write_video(long_video, seconds=80, width=64, height=48)
    make_entry(root, 100, "0_long", {"original.mp4": long_video.read_bytes()})
    config = make_config(tmp_path, f'kind = "local"\nroot = "{root}"')
    path = f"{CLIP}/0_long/clip_from/5000/clip_to/75000"
    first = await (await serve(config)).get(path)
    body = await first.read()
    assert first.status == 200 and "cache;desc=index" in first.headers["Server-Timing"]
    await until(lambda: len(cached_clip_entries(tmp_path)) == 1)  # written behind the answer
    [entry] = cached_clip_entries(tmp_path)
    assert entry["ns"] == "indexes" and entry["size"] < len(body) // 10  # the index, never the media
    restarted = await (await serve(config)).get(path)
    assert await restarted.read() == body and restarted.headers["Server-Timing"].endswith("cache;desc=disk")


async def test_starts_that_snap_to_one_keyframe_are_one_clip(client, tmp_path):
    answers = [await client.get(f"{CLIP}/0_video/clip_from/{start}/clip_to/2600") for start in (1000, 1200, 1900)]
    assert {answer.headers["ETag"] for answer in answers} == {answers[0].headers["ETag"]}
    assert len({await answer.read() for answer in answers}) == 1
    assert [answer.headers["Server-Timing"].rpartition("desc=")[2] for answer in answers] == [
        "index", "memory", "memory"]  # one index built, for the window they snap to


@pytest.mark.parametrize("params", [
    "/clip_from/6000",  # the video lasts 6 s
    "/clip_from/7000",
    "/clip_from/7000/clip_to/9000",
    "/clip_from/3000/clip_to/2000",
    "/clip_from/2000/clip_to/2000",
    "/clip_from/-5",
    "/clip_from/abc",
    "/seek_from/99000",
])
async def test_bad_clip_bounds_are_400(client, params):
    status, headers, body = await send_raw(client, f"{CLIP}/0_video{params}")
    assert_error(status, headers, body, 400, 25)
    assert b"clip_from" in body or b"clip_to" in body or b"seek_from" in body


async def test_a_clip_of_an_unknown_flavor_is_404(client):
    status, headers, body = await send_raw(client, f"{CLIP}/0_video/flavor/0_nope/clip_from/1000")
    assert_error(status, headers, body, 404, 6)


@pytest.mark.parametrize("entry", ["0_photo", "0_audio"])
async def test_a_clip_of_something_that_is_no_video_is_400(client, entry):
    status, headers, body = await send_raw(client, f"{CLIP}/{entry}/clip_from/1000")
    assert_error(status, headers, body, 400, 25)
    assert b"not a video" in body and entry.encode() in body


async def test_corrupt_videos_are_4xx_and_the_server_carries_on(serve, tmp_path, origin):
    client = await serve_origin(serve, tmp_path, origin)
    checks = [
        (f"{THUMB}/0_garbage", 422),  # the content says it is not media at all
        (f"{CLIP}/0_garbage/clip_from/1000", (400, 422)),
        (f"{THUMB}/0_hollow", 422),  # an MP4 index without any frame data
        (f"{THUMB}/0_hollow/vid_slices/3", 422),
        (f"{CLIP}/0_hollow/clip_from/1000", 422),
        (f"{CLIP}/0_hollow", (200, 422)),  # whole-file requests may be served as they are
        (f"{THUMB}/0_half/vid_sec/3.5", (200, 422)),  # past what survived: the last decodable frame, or 422
        (f"{CLIP}/0_half/clip_from/3500", (200, 400, 422)),  # a clip of what survived, or a 4xx
    ]
    for path, expected in checks:
        status, headers, body = await send_raw(client, path)
        assert status != 500, (path, body)
        if status != 200:
            assert_error(status, headers, body, expected, None if isinstance(expected, tuple) else 17)
        else:
            assert 200 in (expected if isinstance(expected, tuple) else (expected,)), path
    # what survived of the truncated file still works, and so does a healthy entry
    assert await frame_second(client, f"{THUMB}/0_half/vid_sec/1.5") == 1
    response, _, clip = await get_clip(client, f"{CLIP}/0_half/clip_from/1000/clip_to/1400", tmp_path, "half")
    assert response.headers["X-Clip-Start-Ms"] == "1000"
    assert clip.first_second == 1
    assert await frame_second(client, f"{THUMB}/0_nojson/vid_sec/2.5") == 2
    _, _, clip = await get_clip(client, f"{CLIP}/0_nojson/clip_from/2000", tmp_path, "healthy")
    assert (clip.first_second, clip.last_second) == (2, 3)


async def test_thumbnails_of_a_video_without_audio(serve, tmp_path, origin):
    client = await serve_origin(serve, tmp_path, origin)
    assert await frame_second(client, f"{THUMB}/0_silent/vid_sec/2.5") == 2


async def test_a_clip_of_a_video_without_audio(serve, tmp_path, origin):
    client = await serve_origin(serve, tmp_path, origin)
    response, _, clip = await get_clip(client, f"{CLIP}/0_silent/clip_from/1500", tmp_path)
    assert response.headers["X-Clip-Start-Ms"] == "1000"
    assert (clip.first_second, clip.last_second, clip.audio_duration) == (1, 2, None)


async def test_a_clip_of_an_undecodable_original_is_422(serve, tmp_path, origin):
    client = await serve_origin(serve, tmp_path, origin)
    status, headers, body = await send_raw(client, f"{CLIP}/0_garbage/clip_from/1000")
    assert_error(status, headers, body, 422, 17)


# ------------------------------------------------------------------------------------------------ clips by index


def decoded_frame_hashes(body: bytes, tmp_path: Path, name: str) -> list[str]:
    """SHA-1 of every decoded video frame's planes, in display order: equal lists mean the same pictures."""
    import hashlib

    target = tmp_path / name
    target.write_bytes(body)
    with av.open(str(target)) as container:
        frames = [frame for frame in container.decode(video=0)]
    frames.sort(key=lambda frame: frame.pts)
    return [hashlib.sha1(b"".join(bytes(plane) for plane in frame.planes)).hexdigest() for frame in frames]


@pytest.mark.parametrize("entry, window", [("0_video", "clip_from/1200/clip_to/4500"), ("0_flv", "clip_from/2100")])
async def test_range_slices_of_an_index_clip_concatenate_to_the_whole_clip(client, entry, window):
    whole = await client.get(f"{CLIP}/{entry}/{window}")
    body = await whole.read()
    assert whole.status == 200 and whole.headers["Content-Length"] == str(len(body))
    assert "cache;desc=index" in whole.headers["Server-Timing"]  # built by index, not remuxed
    size = len(body)
    cuts = sorted({0, 1, 7, 13, 600, size // 3, size // 2, size - 9, size})
    pieces = []
    for first, stop in zip(cuts, cuts[1:]):
        part = await client.get(f"{CLIP}/{entry}/{window}", headers={"Range": f"bytes={first}-{stop - 1}"})
        assert part.status == 206 and part.headers["Content-Range"] == f"bytes {first}-{stop - 1}/{size}"
        pieces.append(await part.read())
    assert b"".join(pieces) == body
    past = await client.get(f"{CLIP}/{entry}/{window}", headers={"Range": f"bytes={size}-"})
    assert past.status == 416 and past.headers["Content-Range"] == f"bytes */{size}"


async def test_an_index_clip_and_a_remux_of_the_same_window_show_the_same_frames(client, tmp_path):
    window = "clip_from/1500/clip_to/4200"
    by_index = await client.get(f"{CLIP}/0_video/{window}")
    remuxed = await client.get(f"{CLIP}/0_video/{window}/a.flv")  # another container: cut by packet copy
    assert "cache;desc=index" in by_index.headers["Server-Timing"]
    assert "cache;desc=remux" in remuxed.headers["Server-Timing"]
    assert by_index.headers["X-Clip-Start-Ms"] == remuxed.headers["X-Clip-Start-Ms"] == "1000"
    index_frames = decoded_frame_hashes(await by_index.read(), tmp_path, "index.mp4")
    remux_frames = decoded_frame_hashes(await remuxed.read(), tmp_path, "remux.flv")
    assert index_frames == remux_frames and len(index_frames) > 50


async def test_an_index_clip_of_an_http_original_reads_its_index_and_its_own_range(serve, tmp_path, nginx):
    config = make_config(tmp_path, f'kind = "http"\nurl = "{nginx.url}"\nblock_bytes = 4096')
    client = await serve(config)
    local = await client.get(f"{CLIP}/0_video/clip_from/2000/clip_to/3000")
    body = await local.read()
    assert local.status == 200 and local.headers["X-Clip-Start-Ms"] == "2000"
    (tmp_path / "local").mkdir()
    reference = await (await serve(make_config(tmp_path / "local"))).get(f"{CLIP}/0_video/clip_from/2000/clip_to/3000")
    assert body == await reference.read()  # the same bytes as from the local original
    def ranges() -> int:
        return len([line for line in nginx.requests() if line[1] == "/100/0_video/original.mp4" and line[0] == "GET"])

    before = ranges()
    later = await client.get(f"{CLIP}/0_video/clip_from/4000/clip_to/5000")  # the index is known: only its range
    span = int(later.headers["Content-Length"])  # its header and its media range
    assert later.status == 200 and len(await later.read()) == span
    assert ranges() - before <= span // 4096 + 2
