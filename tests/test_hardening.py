"""Issue 12, second round: metadata that outgrows its pixels, video frames over the pixel limit, MPO JPEGs, and
`mediaproxy warm` on large bodies. Each case over a real server on loopback, asserting on pixels, sizes, headers."""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path

import av
import pytest
from aiohttp import web
from PIL import Image

from fixtures.generate import SRGB_PRIMARIES_D50, h264_claiming, icc_profile, jpeg_with_icc, mpo, write_video
from mediaproxy.app import RUNTIME
from mediaproxy.errors import TooLarge
from mediaproxy.media.probe import MediaKind, probe
from mediaproxy.media.video import grab_frames, probe_video
from mediaproxy.warm import warm

from .conftest import make_config, make_entry
from .test_hostile import ask, assert_spec_error, picture

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
_r, _g, _b = SRGB_PRIMARIES_D50
SWAPPED = (_g, _r, _b)  # under this profile a stored pure red is sRGB's green, and green is red


def near(pixel, colour, tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], colour))


def with_exif_text(size: int) -> bytes:
    exif = Image.Exif()
    exif[0x010E] = "x" * size  # ImageDescription
    return exif.tobytes()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hardening")
    big_profile = icc_profile(SWAPPED, padding=16_000_000)
    make_entry(root, 100, "icc_big", {"original.jpg": jpeg_with_icc(640, 480, big_profile, colour=RED)})
    make_entry(root, 100, "icc_small", {"original.jpg": jpeg_with_icc(640, 480, icc_profile(SWAPPED, padding=10_000),
                                                                      colour=RED)})
    png = io.BytesIO()
    Image.new("RGBA", (200, 100), (0, 255, 0, 128)).save(png, "PNG", icc_profile=icc_profile(SWAPPED, padding=200_000))
    make_entry(root, 100, "icc_png", {"original.png": png.getvalue()})
    exif_png = io.BytesIO()
    Image.new("RGB", (64, 48), RED).save(exif_png, "PNG", exif=with_exif_text(100_000))
    make_entry(root, 100, "exif_png", {"original.png": exif_png.getvalue()})
    xmp_webp = io.BytesIO()
    Image.new("RGB", (64, 48), RED).save(xmp_webp, "WEBP", xmp=b"<x:xmpmeta>" + b"a" * 100_000 + b"</x:xmpmeta>")
    make_entry(root, 100, "xmp_webp", {"original.webp": xmp_webp.getvalue()})
    make_entry(root, 100, "huge_frames", {"original.mp4": h264_claiming(16000, 16000)})
    make_entry(root, 100, "mpo", {"original.jpg": mpo(320, 240, colours=(RED, BLUE))})
    make_entry(root, 100, "mpo_named", {"original.mpo": mpo(64, 48, colours=(GREEN, RED))})
    write_video(make_entry(root, 100, "small_video", {}) / "original.mp4", seconds=1, fps=5, width=64, height=48,
                audio=False)
    return root


@pytest.fixture
async def client(serve, tmp_path, root):
    extensions = '["jpg", "png", "webp", "mp4", "mpo"]'
    return await serve(make_config(tmp_path, f'kind = "local"\nroot = "{root}"\nextensions = {extensions}',
                                   "[limits]\nmax_source_pixels = 50000000\nrequest_seconds = 5\n"))


# ------------------------------------------------------------------------------------------ ICC profiles, EXIF, XMP


async def test_a_16_mb_icc_profile_is_applied_to_the_pixels_and_not_copied(client):
    answer = await ask(client, "/p/100/thumbnail/entry_id/icc_big/width/120")
    thumbnail = picture(answer)
    assert thumbnail.size == (120, 90)
    assert len(answer.body) < 20_000, len(answer.body)  # a few kB: its pixels, not the source's 16 MB
    assert "icc_profile" not in thumbnail.info
    assert near(thumbnail.getpixel((60, 45)), GREEN), thumbnail.getpixel((60, 45))  # converted to sRGB
    raw = await ask(client, "/p/100/raw/entry_id/icc_big")
    assert len(raw.body) > 16_000_000  # the original itself is untouched


async def test_eight_thumbnails_of_it_at_once_are_all_small_and_nothing_keeps_the_profile(client):
    answers = await asyncio.gather(*(ask(client, f"/p/100/thumbnail/entry_id/icc_big/width/{100 + i}")
                                     for i in range(8)))
    for answer in answers:
        assert answer.status == 200 and len(answer.body) < 20_000, (answer.status, len(answer.body))
    runtime = client.server.app[RUNTIME]
    kept = [value for value in runtime.decoded._cache.values()]
    assert kept, "the decoded picture is kept for other sizes"
    for decoded in kept:
        assert "icc_profile" not in decoded.info and "icc_profile" not in decoded.image.info
    assert runtime.result_memory.current_bytes < 2_000_000  # results in memory: kilobytes, not 8 x 16 MB


async def test_a_small_icc_profile_is_still_carried_and_the_pixels_left_as_stored(client):
    thumbnail = picture(await ask(client, "/p/100/thumbnail/entry_id/icc_small/width/120"))
    assert len(thumbnail.info["icc_profile"]) > 10_000  # what a viewer needs to show the colours right
    assert near(thumbnail.getpixel((60, 45)), RED)
    stripped = picture(await ask(client, "/p/100/thumbnail/entry_id/icc_small/width/120/strip/1"))
    assert "icc_profile" not in stripped.info


@pytest.mark.parametrize("output", ["jpg", "png", "webp"])
async def test_a_large_profile_is_applied_whatever_the_output(client, output):
    answer = await ask(client, f"/p/100/thumbnail/entry_id/icc_big/width/64/format/{output}")
    thumbnail = picture(answer)
    assert "icc_profile" not in thumbnail.info and len(answer.body) < 20_000
    assert near(thumbnail.convert("RGB").getpixel((32, 24)), GREEN)


async def test_a_large_profile_of_a_png_with_alpha_keeps_the_alpha(client):
    thumbnail = picture(await ask(client, "/p/100/thumbnail/entry_id/icc_png/width/100/format/png"))
    assert "icc_profile" not in thumbnail.info
    assert thumbnail.mode == "RGBA"
    red, green, blue, alpha = thumbnail.getpixel((50, 25))
    assert near((red, green, blue), RED) and abs(alpha - 128) <= 2  # stored green is sRGB red under the profile


@pytest.mark.parametrize("entry", ["exif_png", "xmp_webp"])
@pytest.mark.parametrize("output", ["jpg", "webp", "png"])
async def test_exif_or_xmp_larger_than_a_jpeg_segment_is_dropped_not_a_500(client, entry, output):
    answer = await ask(client, f"/p/100/thumbnail/entry_id/{entry}/width/32/format/{output}")
    thumbnail = picture(answer)
    assert len(answer.body) < 20_000
    assert near(thumbnail.convert("RGB").getpixel((16, 12)), RED)


# --------------------------------------------------------------------------- video frames over max_source_pixels


async def test_a_video_whose_frames_are_16000x16000_is_refused_from_its_header(client):
    for params in ("width/120", "vid_sec/0", "vid_slices/3", "width/0/height/0"):
        started = time.monotonic()
        answer = await ask(client, f"/p/100/thumbnail/entry_id/huge_frames/{params}")
        assert answer.status == 413, (params, answer.status, answer.text)
        assert_spec_error(answer)
        assert "16000x16000" in answer.text and "50000000" in answer.text
        assert time.monotonic() - started < 1.0
    assert picture(await ask(client, "/p/100/thumbnail/entry_id/small_video/width/32")).size == (32, 24)


async def test_the_refusal_decodes_nothing(client, monkeypatch):
    from mediaproxy.media import video

    decoding = []
    real = video._ForwardDecoder._decode
    monkeypatch.setattr(video._ForwardDecoder, "_decode", lambda self: decoding.append(self) or real(self))
    assert (await ask(client, "/p/100/thumbnail/entry_id/small_video")).status == 200
    assert decoding  # the spy sees probe_video's and grab_frames' decoding
    decoding.clear()
    assert (await ask(client, "/p/100/thumbnail/entry_id/huge_frames")).status == 413
    assert not decoding


async def test_flvclipper_copies_packets_of_such_a_video_without_decoding(client):
    started = time.monotonic()
    answer = await ask(client, "/p/100/flvclipper/entry_id/huge_frames/clip_to/80")
    assert answer.status == 200, answer.text
    assert answer.headers["content-type"] == "video/mp4"
    assert time.monotonic() - started < 3.0
    with av.open(io.BytesIO(answer.body), options={"max_pixels": "1"}) as clip:
        assert clip.streams.video[0].codec_context.width == 16000


def test_the_header_check_sits_before_any_decoding(root):
    path = root / "100" / "huge_frames" / "original.mp4"
    started = time.monotonic()
    media = probe(path)
    assert media.kind is MediaKind.VIDEO and (media.width, media.height) == (16000, 16000)
    info = probe_video(path)  # over the default limit: the size from the header, no frame decoded
    assert (info.width, info.height) == (16000, 16000)
    with pytest.raises(TooLarge, match="16000x16000"):
        grab_frames(path, [0.0], max_pixels=50_000_000)
    assert time.monotonic() - started < 1.0  # decoding one such frame takes seconds and 0.7 GB


def test_a_pixel_limit_below_the_frame_size_refuses_to_decode(root):
    path = root / "100" / "small_video" / "original.mp4"
    assert grab_frames(path, [0.0], max_pixels=64 * 48)[0].size == (64, 48)
    with pytest.raises(TooLarge):
        grab_frames(path, [0.0], max_pixels=64 * 48 - 1)


def test_the_decoder_itself_refuses_frames_far_over_the_limit(root):
    """What guards against a stream whose later header claims a larger frame than its first: the decoder's own
    limit (with room for its padding), refusing here the size the stream's first header declares."""
    from mediaproxy.media import video

    path = root / "100" / "huge_frames" / "original.mp4"
    with video._open(path) as container:
        stream = container.streams.video[0]
        video._limit_decoder(stream, 50_000_000)
        with pytest.raises(av.FFmpegError):
            next(container.decode(stream))


# ------------------------------------------------------------------------------------------------------------ MPO


async def test_an_mpo_is_a_jpeg_whose_first_picture_is_the_thumbnail(client, root):
    media = probe(root / "100" / "mpo" / "original.jpg")
    assert (media.kind, media.mime_type, media.extension) == (MediaKind.IMAGE, "image/jpeg", "jpg")
    thumbnail = picture(await ask(client, "/p/100/thumbnail/entry_id/mpo/width/80"))
    assert thumbnail.size == (80, 60)
    assert near(thumbnail.getpixel((40, 30)), RED)  # the first picture, not the second (blue)
    png = picture(await ask(client, "/p/100/thumbnail/entry_id/mpo/width/0/height/0/format/png"))
    assert png.size == (320, 240) and near(png.getpixel((160, 120)), RED, 4)


async def test_an_mpo_is_served_raw_as_image_jpeg(client, root):
    for entry, name in (("mpo", "original.jpg"), ("mpo_named", "original.mpo")):
        answer = await ask(client, f"/p/100/raw/entry_id/{entry}")
        assert answer.status == 200
        assert answer.headers["content-type"] == "image/jpeg"
        assert answer.body == (root / "100" / entry / name).read_bytes()
    assert near(picture(await ask(client, "/p/100/thumbnail/entry_id/mpo_named")).getpixel((10, 10)), GREEN)


# --------------------------------------------------------------------------------------------------- warm


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_warm_streams_a_large_body_in_chunks(aiohttp_server):
    size, block = 200 * 2**20, b"\0" * 2**20

    async def large(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(size)})
        await response.prepare(request)
        for _ in range(size // len(block)):
            await response.write(block)
        return response

    app = web.Application()
    app.router.add_get("/large", large)
    server = await aiohttp_server(app)
    baseline, peak = resident_bytes(), 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, resident_bytes() - baseline)
            await asyncio.sleep(0.002)

    watcher = asyncio.ensure_future(watch())
    try:
        summary = await warm([str(server.make_url("/large"))] * 2, concurrency=2, progress=None)
    finally:
        watcher.cancel()
    assert summary.ok and summary.statuses[200] == 2
    assert summary.bytes == 2 * size
    assert peak < 64 * 2**20, f"resident memory grew by {peak / 2**20:.0f} MiB for two 200 MiB bodies"


# ------------------------------------------------------------------------------------------ found on the way


def test_frames_of_a_short_mpeg_ts_as_ffmpeg_writes_it(tmp_path):
    """ffmpeg's MPEG-TS starts at 1.4 s; seeking it to that start landed at its end: no frame (422)."""
    import subprocess

    from .conftest import require_tool

    path = tmp_path / "short.ts"
    subprocess.run([require_tool("ffmpeg"), "-v", "error", "-f", "lavfi", "-i", "color=c=red:size=64x48:rate=10",
                    "-t", "2", "-c:v", "libx264", "-bf", "2", str(path)], check=True)
    info = probe_video(path)
    assert round(info.duration) == 2 and (info.width, info.height) == (64, 48)
    frames = grab_frames(path, [0.0, 1.0, 5.0], 1.0, info.keyframes, max_pixels=10_000)
    assert [frame.size for frame in frames] == [(64, 48)] * 3
    assert all(near(frame.getpixel((32, 24)), RED, 20) for frame in frames)


@pytest.mark.parametrize("name, codec", [("vp9.webm", "libvpx-vp9"), ("mpeg4.avi", "mpeg4"), ("hevc.mp4", "libx265")])
def test_probing_keeps_the_size_of_codecs_whose_parsers_do_not_give_it(tmp_path, name, codec):
    """Stream analysis may decode frames up to the limit: refusing every frame would leave these at 0 x 0, and
    a 0 x 0 video passes any pixel check from its header."""
    import subprocess

    from .conftest import require_tool

    path = tmp_path / name
    subprocess.run([require_tool("ffmpeg"), "-v", "error", "-f", "lavfi", "-i", "color=c=blue:size=96x64:rate=10",
                    "-t", "1", "-c:v", codec, "-pix_fmt", "yuv420p", str(path)], check=True, capture_output=True)
    media = probe(path)
    assert (media.kind, media.width, media.height) == (MediaKind.VIDEO, 96, 64)
    assert near(grab_frames(path, [0.5], max_pixels=96 * 64)[0].getpixel((48, 32)), BLUE, 20)
