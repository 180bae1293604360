"""Checks for the fixture media generator (fixtures/generate.py).

Independent of mediaproxy: only PyAV and Pillow are used to inspect the files.
"""

from __future__ import annotations

import io
import json
import sys
from fractions import Fraction
from pathlib import Path

import av
import pytest
from av.video.reformatter import ColorRange
from PIL import Image, ImageSequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from fixtures.generate import (  # noqa: E402
    SECOND_COLOURS,
    alpha_png,
    animated_gif,
    colour_for_second,
    main,
    nearest_second_colour,
    photo_like_jpeg,
    write_audio,
    write_video,
)

MP4_FORMAT = "mov,mp4,m4a,3gp,3g2,mj2"
SECONDS = 5
FPS = 25
PROBE_TIMES = (0.0, 0.5, 1.96, 2.5, 3.04, 4.2, 4.96)


# ---------------------------------------------------------------- helpers


def _video_frames(path: Path) -> list[tuple[float, tuple[int, int, int], int]]:
    """(time, centre RGB, colour range) of every decoded video frame."""
    out = []
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            rgb = frame.to_image().getpixel((frame.width // 2, frame.height // 2))
            out.append((frame.time, rgb, frame.color_range))
    return out


def _frame_at(frames, t: float):
    """The frame displayed at time t (last frame with time <= t)."""
    shown = [f for f in frames if f[0] <= t + 1e-6]
    assert shown, f"no frame at {t}"
    return shown[-1]


def _stream_seconds(path: Path, kind: str) -> float:
    """Duration of the first stream of ``kind``: from the container's stream
    header when known (MP4), else from the packets (FLV has no per-stream
    duration)."""
    with av.open(str(path)) as c:
        stream = getattr(c.streams, kind)[0]
        if stream.duration:
            return float(stream.duration * stream.time_base)
        first = end = None
        for pkt in c.demux(stream):
            if pkt.pts is None:
                continue
            t0 = pkt.pts * pkt.time_base
            first = t0 if first is None else min(first, t0)
            t1 = (pkt.pts + (pkt.duration or 0)) * pkt.time_base
            end = t1 if end is None else max(end, t1)
        return float(end - first)


def _keyframe_times(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        return [float(p.pts * p.time_base) for p in c.demux(video=0) if p.is_keyframe and p.pts is not None]


# ---------------------------------------------------------------- colours


def test_second_colours_are_well_separated_and_self_matching():
    assert len(SECOND_COLOURS) >= 10
    for i, c in enumerate(SECOND_COLOURS):
        assert all(v < 40 or 100 <= v <= 156 or v > 215 for v in c)
        assert colour_for_second(i) == c
        assert colour_for_second(i + len(SECOND_COLOURS)) == c
        assert nearest_second_colour(c) == i
        # survives moderate coding error, also given as RGBA
        assert nearest_second_colour(tuple(max(0, min(255, v + 25 * (1 if v < 128 else -1))) for v in c) + (255,)) == i
    for a in range(len(SECOND_COLOURS)):
        for b in range(a + 1, len(SECOND_COLOURS)):
            d2 = sum((x - y) ** 2 for x, y in zip(SECOND_COLOURS[a], SECOND_COLOURS[b]))
            assert d2 >= 127**2


# ---------------------------------------------------------------- video


@pytest.mark.parametrize(
    "name, full_range, fmt_name, audio_codec",
    [
        ("clip.mp4", False, MP4_FORMAT, "aac"),
        ("clip.flv", False, "flv", "aac"),
        ("full.mp4", True, MP4_FORMAT, "aac"),
    ],
)
def test_colour_second_video(tmp_path, name, full_range, fmt_name, audio_codec):
    path = tmp_path / name
    write_video(path, seconds=SECONDS, fps=FPS, full_range=full_range)

    with av.open(str(path)) as c:
        assert c.format.name == fmt_name
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        vs, as_ = c.streams.video[0], c.streams.audio[0]
        assert vs.codec_context.name == "h264"
        assert as_.codec_context.name == audio_codec
        assert (vs.codec_context.width, vs.codec_context.height) == (320, 240)
        expected_range = ColorRange.JPEG if full_range else ColorRange.MPEG
        assert vs.codec_context.color_range == expected_range
        assert vs.codec_context.pix_fmt == ("yuvj420p" if full_range else "yuv420p")
        assert c.duration is not None
        assert abs(c.duration / av.time_base - SECONDS) <= 0.1

    frames = _video_frames(path)
    assert len(frames) == SECONDS * FPS
    # exact timestamps: frame n at n / fps, starting at 0
    assert [round(f[0] * FPS, 6) for f in frames] == list(range(SECONDS * FPS))
    assert {f[2] for f in frames} == {expected_range}
    for t in PROBE_TIMES:
        _, rgb, _ = _frame_at(frames, t)
        assert nearest_second_colour(rgb) == int(t), (t, rgb)

    assert _keyframe_times(path) == [float(s) for s in range(SECONDS)]
    assert abs(_stream_seconds(path, "video") - SECONDS) <= 0.1
    assert abs(_stream_seconds(path, "audio") - SECONDS) <= 0.1


def test_mp4_is_faststart(tmp_path):
    path = tmp_path / "fs.mp4"
    write_video(path, seconds=1, audio=False)
    data = path.read_bytes()
    atoms, pos = [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        atoms.append(data[pos + 4 : pos + 8])
        assert size >= 8
        pos += size
    assert atoms[0] == b"ftyp"
    assert atoms.index(b"moov") < atoms.index(b"mdat")
    with av.open(str(path)) as c:
        assert not c.streams.audio


def test_keyframe_interval_and_fps(tmp_path):
    path = tmp_path / "k.mp4"
    write_video(path, seconds=2, fps=30, keyframe_interval=15, width=160, height=120, audio=False)
    assert _keyframe_times(path) == [0.0, 0.5, 1.0, 1.5]
    frames = _video_frames(path)
    assert len(frames) == 60
    assert nearest_second_colour(_frame_at(frames, 1.2)[1]) == 1


def test_old_style_flv(tmp_path):
    path = tmp_path / "old.flv"
    write_video(path, seconds=2, video_codec="flv")
    with av.open(str(path)) as c:
        assert c.format.name == "flv"
        assert c.streams.video[0].codec_context.name == "flv"
        assert c.streams.audio[0].codec_context.name in ("mp3", "mp3float")
    frames = _video_frames(path)
    assert len(frames) == 50
    assert nearest_second_colour(_frame_at(frames, 1.5)[1]) == 1


# ---------------------------------------------------------------- audio only


@pytest.mark.parametrize("name, fmt_name, codec", [("a.m4a", MP4_FORMAT, "aac"), ("a.mp3", "mp3", ("mp3", "mp3float"))])
def test_audio_only(tmp_path, name, fmt_name, codec):
    path = tmp_path / name
    write_audio(path, seconds=4)
    with av.open(str(path)) as c:
        assert c.format.name == fmt_name
        assert not c.streams.video
        assert len(c.streams.audio) == 1
        assert c.streams.audio[0].codec_context.name in (codec if isinstance(codec, tuple) else (codec,))
        assert abs(c.duration / av.time_base - 4) <= 0.1
        decoded = sum(f.samples for f in c.decode(audio=0))
        assert abs(decoded / 44100 - 4) <= 0.1
    if name.endswith(".m4a"):
        assert path.read_bytes()[4:8] == b"ftyp"


# ---------------------------------------------------------------- images


def test_alpha_png_documented_pixels():
    w, h = 400, 300
    data = alpha_png(w, h)
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.mode == "RGBA" and img.size == (w, h)
    assert img.getpixel((w // 4, h // 4)) == (255, 0, 0, 255)
    assert img.getpixel((w // 4, 3 * h // 4)) == (0, 0, 255, 255)
    assert img.getpixel((3 * w // 4, h // 4))[3] == 0
    assert img.getpixel((3 * w // 4, 3 * h // 4)) == (0, 255, 0, 128)
    # quadrant edges
    assert img.getpixel((w // 2 - 1, 0))[3] == 255 and img.getpixel((w // 2, 0))[3] == 0
    assert img.getpixel((w - 1, h // 2))[3] == 128 and img.getpixel((w - 1, h // 2 - 1))[3] == 0


def test_animated_gif_frames():
    data = animated_gif(200, 150, frames=4)
    img = Image.open(io.BytesIO(data))
    assert img.format == "GIF" and img.size == (200, 150)
    assert img.n_frames == 4 and img.is_animated
    colours = [nearest_second_colour(f.convert("RGB").getpixel((100, 75))) for f in ImageSequence.Iterator(img)]
    assert colours == [0, 1, 2, 3]
    img.seek(0)
    assert img.convert("RGB").getpixel((0, 0)) == colour_for_second(0)


@pytest.mark.parametrize("orientation", [None, 1, 6, 8])
def test_photo_like_jpeg_exif(orientation):
    data = photo_like_jpeg(320, 240, exif_orientation=orientation, seed=7)
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and img.size == (320, 240) and img.mode == "RGB"
    exif = img.getexif()
    if orientation is None:
        assert 0x0112 not in exif
    else:
        assert exif[0x0112] == orientation
    # stored (unrotated) top-left marker is red
    assert nearest_second_colour(img.getpixel((5, 5))) == 0


def test_photo_like_jpeg_deterministic_and_photo_sized():
    a = photo_like_jpeg(640, 427, seed=3)
    assert a == photo_like_jpeg(640, 427, seed=3)
    assert a != photo_like_jpeg(640, 427, seed=4)
    # a real 640x427 q90 photo is some tens of kB; solid fills would be ~5 kB
    assert 30_000 < len(a) < 200_000
    assert len(photo_like_jpeg(640, 427, seed=3, quality=60)) < len(a)


# ---------------------------------------------------------------- bundled entries


def test_main_layout(tmp_path):
    root = main(tmp_path / "media")
    expected = {
        "100/0_photo/original.jpg",
        "100/0_photo/entry.json",
        "100/0_alpha/original.png",
        "100/0_anim/original.gif",
        "100/0_webp/original.webp",
        "100/0_video/original.mp4",
        "100/0_video/flavor_0_small.mp4",
        "100/0_video/entry.json",
        "100/0_flv/original.flv",
        "100/0_audio/original.m4a",
        "100/0_named/source.jpg",
        "100/0_named/entry.json",
        "200/0_private/original.jpg",
    }
    files = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
    assert set(files) == expected
    assert sum(p.stat().st_size for p in files.values()) < 1_500_000

    assert Image.open(files["100/0_photo/original.jpg"]).size == (1280, 853)
    assert Image.open(files["100/0_webp/original.webp"]).format == "WEBP"
    named = json.loads(files["100/0_named/entry.json"].read_text(encoding="utf-8"))
    assert named == {"name": 'Café déjà vu "quoted"/slash', "original": "source.jpg"}
    video = json.loads(files["100/0_video/entry.json"].read_text(encoding="utf-8"))
    assert video == {"name": "Colour seconds", "thumb_offset": 2.5}
    with av.open(str(files["100/0_video/flavor_0_small.mp4"])) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (160, 120)
        assert abs(c.duration / av.time_base - 6) <= 0.1


def test_bundled_media_present():
    media = REPO_ROOT / "fixtures" / "media"
    for rel in ("100/0_photo/original.jpg", "100/0_video/original.mp4", "100/0_flv/original.flv", "200/0_private/original.jpg"):
        assert (media / rel).is_file(), rel
