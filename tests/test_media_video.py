"""mediaproxy.media.video without a server: probe_video, grab_frames, frame_times, cut_clip (SPEC §2 Sources, §3).

Videos are generated once per module by fixtures.generate: every frame of second i is a solid colour_for_second(i),
so the centre pixel of a grabbed frame (or of a clip's first frame) says which second it came from. Clips are
inspected with PyAV (and once with ffprobe): container, first and last frame, rebased timestamps, audio, atom order.
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

import av
import pytest

from fixtures.generate import colour_for_second, nearest_second_colour, remux_video, write_video
from mediaproxy.errors import BadRequest, Unprocessable
from mediaproxy.media.video import Clip, VideoInfo, cut_clip, frame_times, grab_frames, probe_video

from .conftest import FIXTURE_MEDIA, require_tool

MP4_FORMAT = "mov,mp4,m4a,3gp,3g2,mj2"
FPS = 25
FRAME = 1 / FPS
BUNDLED_VIDEO = FIXTURE_MEDIA / "100" / "0_video" / "original.mp4"  # 320×240, 6 s, keyframe every second
BUNDLED_FLV = FIXTURE_MEDIA / "100" / "0_flv" / "original.flv"  # 320×240, 5 s, H.264/AAC

# Colours where reading the range wrongly shows: a dark grey, a light grey and a muted red. (A mid grey would
# not do: limited and full range agree within 2 levels around 128.)
RANGE_COLOURS = [(32, 32, 32), (224, 224, 224), (200, 60, 40)]
RANGE_TOLERANCE = 6


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Small "colour seconds" videos, written once for the module (about 2 s of encoding in all)."""
    folder = tmp_path_factory.mktemp("videos")
    small = {"width": 160, "height": 120, "fps": FPS}
    specs = {
        "mp4": ("a.mp4", dict(seconds=4, **small)),  # keyframe every second, AAC
        "gop": ("gop.mp4", dict(seconds=6, keyframe_interval=3 * FPS, **small)),  # keyframes at 0 and 3 s only
        "bframes": ("bframes.mp4", dict(seconds=4, bframes=2, **small)),
        "flv": ("a.flv", dict(seconds=4, **small)),  # H.264/AAC in FLV
        "sorenson": ("sorenson.flv", dict(seconds=4, video_codec="flv", **small)),  # flv1 + MP3, old-style
        "mp3flv": ("mp3.flv", dict(seconds=3, audio_codec="mp3", **small)),  # H.264 + MP3 in FLV
        "silent": ("silent.mp4", dict(seconds=3, audio=False, **small)),
        "limited": ("limited.mp4", dict(seconds=3, width=64, height=48, audio=False, colours=RANGE_COLOURS)),
        "full": ("full.mp4", dict(seconds=3, width=64, height=48, audio=False, full_range=True,
                                  colours=RANGE_COLOURS)),
    }
    paths = {}
    for key, (name, options) in specs.items():
        paths[key] = folder / name
        write_video(paths[key], **options)
    # the same packets in other wrappings
    paths["late"] = folder / "late.mp4"  # streams start at 10 s (a recording of a live stream)
    remux_video(paths["mp4"], paths["late"], offset=10.0)
    paths["ts"] = folder / "a.ts"  # MPEG-TS: no index, seeking is by bytes
    remux_video(paths["mp4"], paths["ts"])
    paths["flv_noindex"] = folder / "noindex.flv"  # FLV without an onMetaData keyframe index
    remux_video(paths["flv"], paths["flv_noindex"])
    return paths


# ------------------------------------------------------------------------------------------------ helpers


def second_of(image) -> int:
    """The second a solid frame came from, by its centre pixel (checked to be really close to that colour)."""
    rgb = image.convert("RGB").getpixel((image.width // 2, image.height // 2))
    second = nearest_second_colour(rgb)
    expected = colour_for_second(second)
    assert max(abs(a - b) for a, b in zip(rgb, expected)) <= 24, f"{rgb} is not a clean second colour"
    return second


def expected_second(time: float, seconds: int) -> int:
    """The second whose frame is shown at `time` in a video of `seconds` (past the end: the last frame)."""
    return min(int(math.floor(time + 1e-9)), seconds - 1)


@dataclass
class Described:
    format: str
    video_codec: str
    audio_codec: str | None
    first_video_pts: float  # seconds, of the earliest video packet
    first_packet_is_keyframe: bool
    video_duration: float  # last frame's time + one frame - first frame's time
    frames: int
    first_second: int  # the colour second of the first / last decoded frames
    last_second: int
    audio_start: float | None
    audio_duration: float | None  # decoded samples / rate
    container_duration: float


def describe(path: Path) -> Described:
    """Everything a test wants to know about a clip, read back with PyAV (all packets demuxed, all decoded)."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        first_is_keyframe = None
        video_pts: list[float] = []
        first_image = last_image = None
        audio_start, samples = None, 0
        for packet in container.demux(*filter(None, (video, audio))):  # ends with flush packets (pts None)
            if packet.stream is video:
                if packet.pts is not None:
                    video_pts.append(float(packet.pts * packet.time_base))
                    if first_is_keyframe is None:
                        first_is_keyframe = packet.is_keyframe
                for frame in packet.decode():
                    if first_image is None:
                        first_image = frame.to_image()
                    last_image = frame
            else:
                for frame in packet.decode():
                    if audio_start is None:
                        audio_start = float(frame.pts * frame.time_base)
                    samples += frame.samples
        assert video_pts, f"{path.name} has no video packets"
        times = sorted(video_pts)
        return Described(
            format=container.format.name,
            video_codec=video.codec_context.name,
            audio_codec=audio.codec_context.name if audio is not None else None,
            first_video_pts=times[0],
            first_packet_is_keyframe=bool(first_is_keyframe),
            video_duration=times[-1] + FRAME - times[0],
            frames=len(times),
            first_second=second_of(first_image),
            last_second=second_of(last_image.to_image()),
            audio_start=audio_start,
            audio_duration=samples / audio.codec_context.sample_rate if audio is not None and samples else None,
            container_duration=(container.duration or 0) / av.time_base,
        )


def top_level_atoms(data: bytes) -> list[str]:
    """The types of an MP4's top-level boxes, in file order."""
    atoms, offset = [], 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset:offset + 4], "big")
        kind = data[offset + 4:offset + 8].decode("latin-1")
        if size == 1:
            size = int.from_bytes(data[offset + 8:offset + 16], "big")
        elif size == 0:
            size = len(data) - offset
        atoms.append(kind)
        assert size >= 8, f"bad box size at {offset}"
        offset += size
    return atoms


def info(duration: float) -> VideoInfo:
    return VideoInfo(duration=duration, width=320, height=240, frame_rate=25.0, keyframes=(), has_audio=False,
                     container=MP4_FORMAT, video_codec="h264", audio_codec=None)


# ------------------------------------------------------------------------------------------------ probe_video


def test_probe_mp4(videos):
    probed = probe_video(videos["mp4"])
    assert probed.duration == pytest.approx(4.0, abs=0.05)
    assert (probed.width, probed.height) == (160, 120)
    assert probed.frame_rate == pytest.approx(25.0)
    assert probed.keyframes == pytest.approx((0.0, 1.0, 2.0, 3.0), abs=1e-3)
    assert probed.container == MP4_FORMAT
    assert (probed.video_codec, probed.audio_codec, probed.has_audio) == ("h264", "aac", True)


def test_probe_the_bundled_video_and_its_long_gop_sibling(videos):
    bundled = probe_video(BUNDLED_VIDEO)
    assert bundled.duration == pytest.approx(6.0, abs=0.05)
    assert (bundled.width, bundled.height) == (320, 240)
    assert bundled.keyframes == pytest.approx((0.0, 1.0, 2.0, 3.0, 4.0, 5.0), abs=1e-3)
    gop = probe_video(videos["gop"])
    assert gop.duration == pytest.approx(6.0, abs=0.05)
    assert gop.keyframes == pytest.approx((0.0, 3.0), abs=1e-3)


@pytest.mark.parametrize("key, video_codecs, audio_codecs, seconds", [
    ("flv", {"h264"}, {"aac"}, 4),
    ("sorenson", {"flv", "flv1"}, {"mp3", "mp3float"}, 4),
])
def test_probe_flv(videos, key, video_codecs, audio_codecs, seconds):
    probed = probe_video(videos[key])
    assert probed.container == "flv"
    assert probed.duration == pytest.approx(seconds, abs=0.06)  # FLV's duration includes the AAC/MP3 priming
    assert (probed.width, probed.height) == (160, 120)
    assert probed.video_codec in video_codecs
    assert probed.audio_codec in audio_codecs and probed.has_audio
    # FLV indexes keyframes only through onMetaData: whatever is listed must be a real keyframe time
    assert all(abs(key_time - round(key_time)) < 1e-3 for key_time in probed.keyframes)


def test_probe_a_video_without_audio(videos):
    probed = probe_video(videos["silent"])
    assert (probed.has_audio, probed.audio_codec) == (False, None)
    assert probed.duration == pytest.approx(3.0, abs=0.05)


def test_probe_keyframes_are_presentation_times_with_b_frames(videos):
    assert probe_video(videos["bframes"]).keyframes == pytest.approx((0.0, 1.0, 2.0, 3.0), abs=1e-3)


def test_probe_of_something_that_is_not_a_video(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 16)
    with pytest.raises(Unprocessable):
        probe_video(garbage)


def test_probe_of_an_mp4_whose_media_data_is_missing(videos, tmp_path):
    """The index (moov, at the front) is intact but no frame can be read: 422, not a crash."""
    data = videos["mp4"].read_bytes()
    cut = tmp_path / "header_only.mp4"
    cut.write_bytes(data[:data.index(b"mdat") + 4])
    with pytest.raises(Unprocessable):
        probe_video(cut)


# ------------------------------------------------------------------------------------------------ grab_frames

# Asked deliberately out of order (and with a repeat): the answer must come back in the asked order.
GRAB_TIMES = [2.999, 0.0, 1.5, 1.0, 100.0, 0.99, 1.0 + FRAME + 0.001, 3.001, 0.96, 2.0, 1.001, 0.5, 1.5, 3.97]


@pytest.mark.parametrize("key", ["mp4", "gop", "bframes", "flv", "sorenson", "late", "ts", "flv_noindex"])
def test_grab_frames_gives_the_exact_frame_in_the_asked_order(videos, key):
    seconds = round(probe_video(videos[key]).duration)
    frames = grab_frames(videos[key], GRAB_TIMES)
    assert len(frames) == len(GRAB_TIMES)
    assert all(frame.mode == "RGB" and frame.size == (160, 120) for frame in frames)
    got = [second_of(frame) for frame in frames]
    assert got == [expected_second(time, seconds) for time in GRAB_TIMES]


def test_grab_frames_decodes_forward_from_a_distant_keyframe(videos):
    """Keyframes at 0 and 3 s only: 2.5 s and 5.9 s need decoding forward from the keyframe before."""
    times = [5.9, 2.5, 4.04, 1.2, 3.0, 2.96]
    assert [second_of(frame) for frame in grab_frames(videos["gop"], times)] == [5, 2, 4, 1, 3, 2]


def test_grab_frames_of_the_bundled_videos():
    times = [0.2, 5.5, 2.5, 4.99, 60]
    assert [second_of(frame) for frame in grab_frames(BUNDLED_VIDEO, times)] == [0, 5, 2, 4, 5]
    assert [second_of(frame) for frame in grab_frames(BUNDLED_FLV, times)] == [0, 4, 2, 4, 4]


@pytest.mark.parametrize("scale, size", [(0.5, (80, 60)), (0.25, (40, 30)), (1.0, (160, 120))])
def test_grab_frames_scales_in_the_decoder(videos, scale, size):
    frames = grab_frames(videos["mp4"], [1.5, 3.5], scale)
    assert [frame.size for frame in frames] == [size, size]
    assert [second_of(frame) for frame in frames] == [1, 3]


def test_grab_frames_of_the_same_time_twice(videos):
    frames = grab_frames(videos["flv"], [2.5, 2.5])
    assert [second_of(frame) for frame in frames] == [2, 2]


# ------------------------------------------------------------------------------------------------ colour range


def _yuv_at_centre(path: Path, time: float) -> tuple[int, int, int, int]:
    """(Y, U, V, colour_range) of the frame shown at `time`, read from the decoded planes."""
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if frame.time >= time:
                y_plane, u_plane, v_plane = frame.planes
                x, y = frame.width // 2, frame.height // 2
                return (bytes(y_plane)[y * y_plane.line_size + x],
                        bytes(u_plane)[(y // 2) * u_plane.line_size + x // 2],
                        bytes(v_plane)[(y // 2) * v_plane.line_size + x // 2],
                        int(frame.color_range))
    raise AssertionError(f"no frame at {time}")


def _bt601_to_rgb(y: int, u: int, v: int, full: bool) -> tuple[float, float, float]:
    if full:
        luma, cb, cr = float(y), (u - 128.0), (v - 128.0)
    else:
        luma, cb, cr = (y - 16) * 255 / 219, (u - 128) * 255 / 224, (v - 128) * 255 / 224
    return (luma + 1.402 * cr, luma - 0.344136 * cb - 0.714136 * cr, luma + 1.772 * cb)


def _off_by(rgb, expected) -> float:
    return max(abs(a - b) for a, b in zip(rgb, expected))


@pytest.mark.parametrize("key, full", [("limited", False), ("full", True)])
def test_full_and_limited_range_videos_both_decode_to_the_intended_colours(videos, key, full):
    frames = grab_frames(videos[key], [0.5, 1.5, 2.5])
    for second, frame in enumerate(frames):
        rgb = frame.getpixel((frame.width // 2, frame.height // 2))
        assert _off_by(rgb, RANGE_COLOURS[second]) <= RANGE_TOLERANCE, (key, second, rgb)
    # the same frames scaled down in the decoder keep their colours too
    for second, frame in enumerate(grab_frames(videos[key], [0.5, 1.5, 2.5], 0.5)):
        assert _off_by(frame.getpixel((16, 12)), RANGE_COLOURS[second]) <= RANGE_TOLERANCE


@pytest.mark.parametrize("key, full", [("limited", False), ("full", True)])
def test_reading_the_other_range_would_have_been_visible(videos, key, full):
    """The test above can tell a range mix-up: the stored samples, read with the wrong range, miss by more."""
    for second, colour in enumerate(RANGE_COLOURS):
        y, u, v, colour_range = _yuv_at_centre(videos[key], second + 0.5)
        assert colour_range == (2 if full else 1)  # the streams really are tagged pc / tv
        assert _off_by(_bt601_to_rgb(y, u, v, full), colour) <= RANGE_TOLERANCE
        assert _off_by(_bt601_to_rgb(y, u, v, not full), colour) > RANGE_TOLERANCE + 3, (key, colour)


# ------------------------------------------------------------------------------------------------ frame_times


def test_frame_times_default_is_three_seconds_or_the_thumb_offset():
    args = dict(vid_sec=None, slices=None, slice_index=None, start_sec=None, end_sec=None)
    assert frame_times(info(10), thumb_offset=None, **args) == [3.0]
    assert frame_times(info(10), thumb_offset=2.5, **args) == [2.5]
    assert frame_times(info(10), thumb_offset=float("nan"), **args) == [3.0]
    assert frame_times(info(10), thumb_offset=0.0, **args) == [0.0]


def test_frame_times_vid_sec_wins_and_is_clamped_into_the_video():
    args = dict(thumb_offset=2.5, slices=None, slice_index=None, start_sec=None, end_sec=None)
    assert frame_times(info(10), vid_sec=7.25, **args) == [7.25]
    assert frame_times(info(10), vid_sec=0.0, **args) == [0.0]
    assert frame_times(info(10), vid_sec=99.0, **args) == [10.0]
    assert frame_times(info(2), vid_sec=None, **{**args, "thumb_offset": None}) == [2.0]  # 3 s default, 2-s video
    assert frame_times(info(2), vid_sec=None, **{**args, "thumb_offset": 5.0}) == [2.0]


def _in_slice(time: float, start: float, end: float, slices: int, index: int) -> bool:
    step = (end - start) / slices
    return start + step * index - 1e-9 <= time < start + step * (index + 1) + 1e-9


def test_frame_times_slices_over_the_whole_video():
    times = frame_times(info(8), vid_sec=None, thumb_offset=2.5, slices=4, slice_index=None,
                        start_sec=None, end_sec=None)
    assert len(times) == 4
    assert times == sorted(times)
    assert all(_in_slice(time, 0, 8, 4, index) for index, time in enumerate(times))


def test_frame_times_slices_over_a_window():
    times = frame_times(info(10), vid_sec=None, thumb_offset=None, slices=4, slice_index=None,
                        start_sec=2.0, end_sec=6.0)
    assert len(times) == 4
    assert all(_in_slice(time, 2, 6, 4, index) for index, time in enumerate(times))
    # a window running past the end is cut at the end
    times = frame_times(info(5), vid_sec=None, thumb_offset=None, slices=3, slice_index=None,
                        start_sec=2.0, end_sec=50.0)
    assert all(_in_slice(time, 2, 5, 3, index) for index, time in enumerate(times))
    # only start_sec: to the end of the video
    times = frame_times(info(6), vid_sec=None, thumb_offset=None, slices=2, slice_index=None,
                        start_sec=4.0, end_sec=None)
    assert all(_in_slice(time, 4, 6, 2, index) for index, time in enumerate(times))


def test_frame_times_one_slice():
    for index in range(5):
        times = frame_times(info(10), vid_sec=3.0, thumb_offset=None, slices=5, slice_index=index,
                            start_sec=None, end_sec=None)
        assert len(times) == 1 and _in_slice(times[0], 0, 10, 5, index)
    times = frame_times(info(10), vid_sec=None, thumb_offset=None, slices=4, slice_index=1, start_sec=6.0,
                        end_sec=10.0)
    assert len(times) == 1 and _in_slice(times[0], 6, 10, 4, 1)


def test_frame_times_window_that_ends_before_it_starts():
    with pytest.raises(BadRequest, match="start_sec"):
        frame_times(info(10), vid_sec=None, thumb_offset=None, slices=2, slice_index=None, start_sec=6.0,
                    end_sec=3.0)


# ------------------------------------------------------------------------------------------------ cut_clip


@pytest.mark.parametrize("key, output, start, end, clip_start, first, last", [
    ("mp4", "mp4", 1.5, 3.2, 1.0, 1, 3),  # MP4 → MP4, from the keyframe at 1 s to 3.2 s
    ("mp4", "mp4", 2.0, None, 2.0, 2, 3),  # starting exactly on a keyframe, to the end
    ("mp4", "mp4", 0.0, None, 0.0, 0, 3),  # the whole video
    ("flv", "flv", 1.5, 3.2, 1.0, 1, 3),  # FLV → FLV
    ("flv", "mp4", 2.5, None, 2.0, 2, 3),  # FLV → MP4
    ("mp4", "flv", 2.0, 3.0, 2.0, 2, 2),  # MP4 → FLV
    ("gop", "mp4", 4.5, 5.5, 3.0, 3, 5),  # long GOP: back to the keyframe at 3 s
    ("flv_noindex", "flv", 2.5, 3.5, 2.0, 2, 3),  # an FLV without a keyframe index
    ("flv_noindex", "mp4", 1.2, None, 1.0, 1, 3),
])
def test_cut_clip(videos, tmp_path, key, output, start, end, clip_start, first, last):
    target = tmp_path / f"clip.{output}"
    clip = cut_clip(videos[key], target, start, end, output)
    assert isinstance(clip, Clip)
    assert clip.start == pytest.approx(clip_start, abs=1e-3)
    source_end = round(probe_video(videos[key]).duration)
    expected_duration = (end if end is not None else source_end) - clip_start
    described = describe(target)
    assert described.format == (MP4_FORMAT if output == "mp4" else "flv")
    assert described.video_codec == "h264" and described.audio_codec == "aac"
    assert described.first_video_pts == pytest.approx(0.0, abs=1e-6)  # rebased
    assert described.first_packet_is_keyframe
    assert (described.first_second, described.last_second) == (first, last)
    assert described.video_duration == pytest.approx(expected_duration, abs=FRAME + 1e-3)
    assert described.frames == pytest.approx(expected_duration * FPS, abs=1)
    assert clip.duration == pytest.approx(expected_duration, abs=0.1)
    # audio: there, starting with the video, lasting as long as it
    assert described.audio_start is not None and abs(described.audio_start) <= 0.05
    assert described.audio_duration == pytest.approx(described.video_duration, abs=0.1)
    if output == "mp4":
        atoms = top_level_atoms(target.read_bytes())
        assert atoms.index("moov") < atoms.index("mdat")  # faststart: playable while it downloads
    else:
        assert target.read_bytes()[:3] == b"FLV"


def test_a_clip_checked_with_ffprobe(videos, tmp_path):
    ffprobe = require_tool("ffprobe")
    target = tmp_path / "clip.mp4"
    clip = cut_clip(videos["mp4"], target, 2.3, 3.5, "mp4")
    assert clip.start == pytest.approx(2.0, abs=1e-3)
    report = json.loads(subprocess.run(
        [ffprobe, "-v", "error", "-show_entries", "format=duration,format_name:stream=codec_type,start_time",
         "-of", "json", str(target)], capture_output=True, text=True, check=True).stdout)
    assert report["format"]["format_name"] == MP4_FORMAT
    assert float(report["format"]["duration"]) == pytest.approx(1.5, abs=0.06)
    starts = {stream["codec_type"]: float(stream["start_time"]) for stream in report["streams"]}
    assert starts["video"] == pytest.approx(0.0, abs=1e-6)
    assert starts["audio"] == pytest.approx(0.0, abs=0.05)


def test_cut_clip_of_the_bundled_files(tmp_path):
    clip = cut_clip(BUNDLED_VIDEO, tmp_path / "a.flv", 4.2, None, "flv")
    assert clip.start == pytest.approx(4.0, abs=1e-3)
    described = describe(tmp_path / "a.flv")
    assert (described.first_second, described.last_second) == (4, 5)
    assert described.video_duration == pytest.approx(2.0, abs=FRAME + 1e-3)
    clip = cut_clip(BUNDLED_FLV, tmp_path / "b.mp4", 3.5, 4.5, "mp4")
    assert clip.start == pytest.approx(3.0, abs=1e-3)
    described = describe(tmp_path / "b.mp4")
    assert (described.first_second, described.last_second, described.format) == (3, 4, MP4_FORMAT)


def test_cut_clip_refuses_codecs_the_container_cannot_hold(videos, tmp_path):
    with pytest.raises(BadRequest, match="mp4"):  # Sorenson Spark exists only in FLV
        cut_clip(videos["sorenson"], tmp_path / "clip.mp4", 1.0, 2.0, "mp4")


@pytest.mark.parametrize("key, output", [("sorenson", "flv"), ("mp3flv", "flv"), ("mp3flv", "mp4")])
def test_cut_clip_keeps_classic_flv_codecs(videos, tmp_path, key, output):
    target = tmp_path / f"clip.{output}"
    clip = cut_clip(videos[key], target, 1.5, None, output)
    assert clip.start == pytest.approx(1.0, abs=1e-3)
    with av.open(str(target)) as container:
        first = next(container.decode(video=0))
        assert second_of(first.to_image()) == 1
        assert container.streams.audio


def test_cut_clip_of_a_video_without_audio(videos, tmp_path):
    target = tmp_path / "clip.mp4"
    clip = cut_clip(videos["silent"], target, 1.2, None, "mp4")
    assert clip.start == pytest.approx(1.0, abs=1e-3)
    assert clip.duration == pytest.approx(2.0, abs=0.05)
    assert target.exists()
    with av.open(str(target)) as container:
        assert not container.streams.audio
        assert second_of(next(container.decode(video=0)).to_image()) == 1


def test_cut_clip_with_b_frames_starts_at_the_keyframe_and_at_zero(videos, tmp_path):
    target = tmp_path / "clip.mp4"
    clip = cut_clip(videos["bframes"], target, 1.5, 3.0, "mp4")
    described = describe(target)
    assert described.first_second == 1
    assert clip.start == pytest.approx(1.0, abs=1e-3)
    assert described.first_video_pts == pytest.approx(0.0, abs=1e-3)


def test_cut_clip_of_an_flv_from_within_its_last_frame(videos, tmp_path):
    clip = cut_clip(videos["flv"], tmp_path / "clip.flv", 3.99, None, "flv")
    assert clip.start == pytest.approx(3.0, abs=1e-3)
    assert describe(tmp_path / "clip.flv").first_second == 3


def test_cut_clip_of_a_video_that_starts_late_keeps_its_audio(videos, tmp_path):
    target = tmp_path / "clip.mp4"
    clip = cut_clip(videos["late"], target, 1.5, 3.2, "mp4")
    assert clip.start == pytest.approx(1.0, abs=1e-3)  # measured from the video's start, not from 0
    described = describe(target)
    assert (described.first_second, described.first_video_pts) == (1, 0.0)
    assert described.audio_start is not None and abs(described.audio_start) <= 0.05
    assert described.audio_duration == pytest.approx(described.video_duration, abs=0.1)


@pytest.mark.parametrize("start, clip_start", [(1.5, 1.0), (3.5, 3.0)])
def test_cut_clip_of_an_mpeg_ts_starts_at_the_keyframe_before(videos, tmp_path, start, clip_start):
    target = tmp_path / "clip.mp4"
    clip = cut_clip(videos["ts"], target, start, None, "mp4")
    assert clip.start == pytest.approx(clip_start, abs=0.03)
    assert describe(target).first_second == int(clip_start)
