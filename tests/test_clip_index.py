"""Clips by index rewrite (mediaproxy.media.mp4clip / flvclip / clipparts), without a server.

Generated "colour seconds" videos are indexed, snapped, laid out, and the virtual file is written out through
iter_clip_bytes and read back with PyAV and ffprobe: first frame's colour, durations, timestamps from 0, audio
beside the video, the same decoded frames as video.cut_clip's remux of the same window, byte ranges that agree.
Large files are made sparse in tmp_path (a hole in the mdat costs nothing); what is checked there is the number
of bytes read from the source, never the time.
"""

from __future__ import annotations

import array
import dataclasses
import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
from pathlib import Path

import av
import pytest

from fixtures.generate import remux_video, write_video
from mediaproxy.errors import BadRequest
from mediaproxy.media.clipindex import (FlvTags, Literal, NotIndexable, SourceRange, iter_clip_bytes,
                                        read_clip_index, read_flv_index, read_mp4_index)
from mediaproxy.media.video import cut_clip

from .conftest import require_tool
from .test_media_video import describe, second_of, top_level_atoms

FPS = 25
FRAME = 1 / FPS
AUDIO_FRAME = 1024 / 44100


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clipvideos")
    small = {"width": 160, "height": 120, "fps": FPS}
    specs = {
        "mp4": ("a.mp4", dict(seconds=4, **small)),
        "bframes": ("b.mp4", dict(seconds=4, bframes=2, **small)),
        "gop": ("gop.mp4", dict(seconds=6, keyframe_interval=3 * FPS, **small)),
        "halfgop": ("half.mp4", dict(seconds=3, keyframe_interval=FPS // 2 + 1, bframes=3, **small)),
        "silent": ("silent.mp4", dict(seconds=3, audio=False, **small)),
        "flv": ("a.flv", dict(seconds=4, **small)),
        "sorenson": ("s.flv", dict(seconds=4, video_codec="flv", **small)),
    }
    paths = {}
    for key, (name, options) in specs.items():
        paths[key] = folder / name
        write_video(paths[key], **options)
    paths["moov_end"] = folder / "end.mp4"  # no faststart: the moov after the mdat
    remux_video(paths["mp4"], paths["moov_end"])
    paths["bframes_end"] = folder / "bend.mp4"
    remux_video(paths["bframes"], paths["bframes_end"])
    paths["late"] = folder / "late.mp4"  # empty edits: the streams start at 10 s
    remux_video(paths["mp4"], paths["late"], offset=10.0)
    paths["flv_noindex"] = folder / "noindex.flv"
    remux_video(paths["flv"], paths["flv_noindex"])
    return paths


MP4S = ["mp4", "bframes", "gop", "halfgop", "silent", "moov_end", "bframes_end", "late"]
FLVS = ["flv", "sorenson", "flv_noindex"]


class Counting(io.RawIOBase):
    """A file object that counts what is read from it."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "rb")
        self.read_bytes = 0
        self.reads = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self.read_bytes += len(data)
        self.reads += 1
        return data

    def close(self) -> None:
        self.file.close()
        super().close()


def index_of(path: Path):
    with open(path, "rb") as source:
        return read_clip_index(source, path.stat().st_size)


def write_clip(path: Path, start: float, end: float | None, target: Path):
    """(window, layout) of a clip of `path`, its virtual file written to `target`."""
    index = index_of(path)
    window = index.snap(start, end)
    layout = index.layout(window)
    with open(path, "rb") as source, open(target, "wb") as out:
        for piece in iter_clip_bytes(layout, source):
            out.write(piece)
    assert target.stat().st_size == layout.size
    return window, layout


def frame_hashes(path: Path) -> list[str]:
    """A hash of every decoded video frame (its planes), in display order."""
    with av.open(str(path)) as container:
        return [hashlib.sha1(b"".join(bytes(plane) for plane in frame.planes)).hexdigest()[:12]
                for frame in container.decode(video=0)]


def ffprobe_errors(path: Path) -> str:
    ffprobe = require_tool("ffprobe")
    result = subprocess.run([ffprobe, "-v", "error", "-show_entries", "format=duration", "-of", "json", str(path)],
                            capture_output=True, text=True)
    return result.stderr.strip()


def decode_errors(path: Path) -> str:
    ffmpeg = require_tool("ffmpeg")
    result = subprocess.run([ffmpeg, "-v", "error", "-nostdin", "-i", str(path), "-f", "null", "-"],
                            capture_output=True, text=True)
    return result.stderr.strip()


# ------------------------------------------------------------------------------------------------ MP4


@pytest.mark.parametrize("key", MP4S)
@pytest.mark.parametrize("start, end", [(0.0, None), (1.5, 3.2), (2.0, None), (2.99, 3.5), (0.4, 1.0)])
def test_mp4_clip_plays_from_the_keyframe(videos, tmp_path, key, start, end):
    source = videos[key]
    seconds = round(index_of(source).duration)
    if start >= seconds:
        pytest.skip("past the end")
    gop = {"gop": 3.0, "halfgop": 13 / FPS}.get(key, 1.0)
    keyframe = int(start / gop + 1e-9) * gop
    target = tmp_path / "clip.mp4"
    window, layout = write_clip(source, start, end, target)
    assert window.start_seconds == pytest.approx(keyframe, abs=1e-3)
    stop = min(end if end is not None else seconds, seconds)
    described = describe(target)
    assert described.first_second == int(keyframe + 1e-9)
    assert described.first_video_pts == pytest.approx(0.0, abs=1e-6)
    assert described.first_packet_is_keyframe
    assert described.container_duration == pytest.approx(stop - keyframe, abs=FRAME * 3 + 1e-3)
    assert window.duration == pytest.approx(stop - keyframe, abs=FRAME * 3 + 1e-3)
    if key != "silent":
        assert described.audio_start is not None and abs(described.audio_start) <= AUDIO_FRAME + 1e-3
        assert described.audio_duration == pytest.approx(described.video_duration, abs=0.1)
    else:
        assert described.audio_codec is None
    atoms = top_level_atoms(target.read_bytes())
    assert atoms.index("moov") < atoms.index("mdat")  # faststart, whatever the source's order
    assert ffprobe_errors(target) == ""
    assert decode_errors(target) == ""
    assert isinstance(layout.parts[0], Literal) and isinstance(layout.parts[1], SourceRange)
    assert len(layout.parts) == 2


@pytest.mark.parametrize("key", ["mp4", "bframes", "gop", "halfgop", "silent", "moov_end", "late"])
@pytest.mark.parametrize("start, end", [(0.0, None), (1.5, 3.2), (1.0, 2.6), (2.3, None)])
def test_mp4_clip_has_the_frames_of_the_remux(videos, tmp_path, key, start, end):
    rewritten, remuxed = tmp_path / "index.mp4", tmp_path / "remux.mp4"
    window, _ = write_clip(videos[key], start, end, rewritten)
    clip = cut_clip(videos[key], remuxed, start, end, "mp4")
    assert clip.start == pytest.approx(window.start_seconds, abs=1e-3)
    assert frame_hashes(rewritten) == frame_hashes(remuxed)


def test_mp4_clip_checked_with_ffprobe(videos, tmp_path):
    target = tmp_path / "clip.mp4"
    write_clip(videos["bframes_end"], 2.3, 3.5, target)
    report = json.loads(subprocess.run(
        [require_tool("ffprobe"), "-v", "error", "-show_entries", "format=duration:stream=codec_type,start_time",
         "-of", "json", str(target)], capture_output=True, text=True, check=True).stdout)
    assert float(report["format"]["duration"]) == pytest.approx(1.5, abs=0.09)
    starts = {stream["codec_type"]: float(stream["start_time"]) for stream in report["streams"]}
    assert starts == {"video": pytest.approx(0.0, abs=1e-6), "audio": pytest.approx(0.0, abs=AUDIO_FRAME)}


def test_mp4_layout_is_the_new_index_then_one_range_of_the_original(videos):
    path = videos["moov_end"]
    index = index_of(path)
    layout = index.layout(index.snap(2.0, None))
    header, media = layout.parts
    assert len(header.data) < 4096
    assert media.offset >= index.mdat_start and media.offset + media.length <= index.mdat_end
    assert layout.size == len(header.data) + media.length
    assert header.data[-8:] == struct.pack(">I4s", media.length + 8, b"mdat")
    pickle.loads(pickle.dumps(layout))
    assert pickle.loads(pickle.dumps(index)).snap(2.0, None) == index.snap(2.0, None)
    assert 1000 < index.approx_bytes < 64_000


def test_tracks_other_than_video_and_audio_are_dropped(videos, tmp_path):
    data = bytearray(videos["mp4"].read_bytes())
    at = data.index(b"soun")
    data[at:at + 4] = b"text"  # the audio track now claims to be a text track
    path = tmp_path / "text.mp4"
    path.write_bytes(bytes(data))
    index = index_of(path)
    assert [track.handler for track in index.tracks] == [b"vide"]
    target = tmp_path / "clip.mp4"
    write_clip(path, 1.5, None, target)
    described = describe(target)
    assert described.audio_codec is None and described.first_second == 1
    assert ffprobe_errors(target) == ""


def test_edit_lists_that_cannot_be_honoured_are_not_indexable(videos, tmp_path):
    data = bytearray(videos["late"].read_bytes())  # each track: an empty edit, then the media
    at = data.index(b"elst") + 4 + 4 + 4 + 4  # the first entry's media time (-1: empty)
    assert data[at:at + 4] == b"\xff\xff\xff\xff"
    data[at:at + 4] = bytes(4)  # two edits of media: a jump back, which the index cannot say
    path = tmp_path / "edits.mp4"
    path.write_bytes(bytes(data))
    with pytest.raises(NotIndexable, match="edit list"):
        index_of(path)


def test_non_video_tracks_are_dropped_and_audio_kept(videos):
    index = index_of(videos["mp4"])
    assert [track.handler for track in index.tracks] == [b"vide", b"soun"]
    window = index.snap(1.2, 2.5)
    video, audio = index.tracks
    (_, key, stop, _, _), (_, audio_first, audio_stop, empty, media_time) = window.tracks
    assert (key, stop) == (25, 63)  # frames 25..62 (62 × 40 ms = 2.48 s)
    # the first audio sample starts at or before the keyframe, the edit list trims to it exactly
    assert audio.pts(audio_first) <= 1.0 * audio.timescale < audio.pts(audio_first) + audio.delta(audio_first)
    assert media_time == audio.media_time + audio.timescale - audio.dts(audio_first) and empty == 0


# ------------------------------------------------------------------------------------------------ snapping


@pytest.mark.parametrize("key", ["mp4", "bframes", "flv"])
def test_starts_inside_one_gop_give_one_window(videos, key):
    index = index_of(videos[key])
    windows = {index.snap(start, 3.6) for start in (1.0, 1.2, 1.5, 1.96, 1.99)}
    assert len(windows) == 1
    (window,) = windows
    assert window.start_seconds == pytest.approx(1.0, abs=1e-3)
    assert len({index.snap(start, 3.6).key() for start in (1.0, 1.5, 1.99)}) == 1
    assert index.snap(2.0, 3.6) != window and index.snap(0.9995, 3.6).start_seconds == pytest.approx(1.0)


def test_starts_1_to_5_seconds_into_a_long_gop(videos):
    index = index_of(videos["gop"])  # keyframes at 0 and 3 s
    assert len({index.snap(start, 5.5) for start in (0.0, 1.0, 2.0, 2.9)}) == 1
    assert len({index.snap(start, None).key() for start in (3.0, 4.0, 5.0, 5.9)}) == 1
    assert index.snap(4.0, 5.5).start_seconds == pytest.approx(3.0)


def test_clip_to_rules(videos):
    index = index_of(videos["mp4"])
    # ends that give the same last frame are one clip; a frame shown exactly at clip_to is not in it
    assert index.snap(1.5, 3.17) == index.snap(1.5, 3.2) == index.snap(1.0, 3.19)
    assert index.snap(1.5, 3.2).stop == 80 and index.snap(1.5, 3.21).stop == 81
    # past the end, or none: to the end
    assert index.snap(1.5, None) == index.snap(1.5, 4.0) == index.snap(1.5, 99.0)
    assert index.snap(1.5, None).duration == pytest.approx(3.0, abs=1e-3)
    # an end inside the first frame still gives that frame
    assert index.snap(2.0, 2.001).stop == 51
    with pytest.raises(BadRequest, match="clip_to"):
        index.snap(2.0, 1.0)


@pytest.mark.parametrize("key", ["mp4", "late", "flv", "sorenson", "flv_noindex"])
def test_start_past_the_end_is_a_bad_request(videos, key):
    index = index_of(videos[key])
    with pytest.raises(BadRequest, match="past the end of the video"):
        index.snap(4.2, None)
    with pytest.raises(BadRequest, match="clip_from: 99000 ms"):
        index.snap(99.0, 100.0)
    assert index.snap(3.99, None).start_seconds == pytest.approx(3.0)


# ------------------------------------------------------------------------------------------------ FLV


@pytest.mark.parametrize("key", FLVS)
@pytest.mark.parametrize("start, end", [(0.0, None), (1.5, 2.2), (2.0, None), (3.5, None), (0.4, 1.0)])
def test_flv_clip_plays_from_the_keyframe(videos, tmp_path, key, start, end):
    target = tmp_path / "clip.flv"
    window, layout = write_clip(videos[key], start, end, target)
    keyframe = float(int(start))
    assert window.start_seconds == pytest.approx(keyframe, abs=1e-3)
    described = describe(target)
    assert described.format == "flv"
    assert described.first_second == int(keyframe)
    assert described.first_video_pts == pytest.approx(0.0, abs=1e-6)
    assert described.first_packet_is_keyframe
    # the clip ends before the first keyframe at or after clip_to (whole seconds here)
    last = 4.0 if end is None else float(-(-end // 1))
    assert described.video_duration == pytest.approx(last - keyframe, abs=FRAME + 1e-3)
    assert described.last_second == int(last) - 1
    assert described.audio_start is not None and abs(described.audio_start) <= AUDIO_FRAME + 1e-3
    assert described.audio_duration == pytest.approx(described.video_duration, abs=0.1)
    assert ffprobe_errors(target) == ""
    assert decode_errors(target) == ""
    assert isinstance(layout.parts[1], FlvTags)
    # the new onMetaData: duration and a keyframe index valid for the new file
    with open(target, "rb") as clip:
        clip_index = read_flv_index(clip, target.stat().st_size)
    assert clip_index.from_metadata and clip_index.duration == pytest.approx(window.duration, abs=1e-3)
    assert list(clip_index.times) == [1000 * second for second in range(len(clip_index.times))]


@pytest.mark.parametrize("key", ["flv", "sorenson"])
@pytest.mark.parametrize("start, end", [(0.0, None), (1.5, 3.2), (2.3, None)])
def test_flv_clip_has_the_frames_of_the_remux(videos, tmp_path, key, start, end):
    rewritten, remuxed = tmp_path / "index.flv", tmp_path / "remux.flv"
    window, _ = write_clip(videos[key], start, end, rewritten)
    cut_clip(videos[key], remuxed, start, window.start_seconds + window.duration - 0.001, "flv")
    assert frame_hashes(rewritten) == frame_hashes(remuxed)


def test_flv_index_from_metadata_reads_only_the_start_and_a_few_tags(videos):
    source = Counting(videos["flv"])
    index = read_flv_index(source, videos["flv"].stat().st_size)
    assert index.from_metadata and list(index.times) == [0, 1000, 2000, 3000]
    assert source.read_bytes < 4000
    assert len(index.sequence_headers) == 2  # AVC and AAC
    sorenson = index_of(videos["sorenson"])
    assert sorenson.sequence_headers == ()  # classic codecs: none
    scanned = index_of(videos["flv_noindex"])
    assert not scanned.from_metadata and list(scanned.times) == [0, 1000, 2000, 3000]


def test_flv_with_a_lying_keyframe_index_is_scanned(videos, tmp_path):
    data = bytearray(videos["flv"].read_bytes())
    at = data.index(b"filepositions") + len(b"filepositions") + 5 + 1 + 9 * 2  # the third position
    data[at:at + 8] = struct.pack(">d", 12345.0)
    path = tmp_path / "lying.flv"
    path.write_bytes(bytes(data))
    index = index_of(path)
    assert not index.from_metadata and list(index.times) == [0, 1000, 2000, 3000]
    target = tmp_path / "clip.flv"
    write_clip(path, 2.5, None, target)
    assert describe(target).first_second == 2


# ------------------------------------------------------------------------------------------------ slices


SLICES_MP4 = [(0, 0), (0, 7), (5, 100), (0, None), (30, None), ("header", "header"), ("header", 40),
              ("header", None), (-1, -1)]


@pytest.mark.parametrize("key, start", [("bframes", 1.5), ("moov_end", 0.0), ("flv", 1.2), ("sorenson", 0.0),
                                        ("flv_noindex", 2.0)])
def test_slices_agree_and_add_up_to_the_whole(videos, key, start):
    index = index_of(videos[key])
    layout = index.layout(index.snap(start, None))
    with open(videos[key], "rb") as source:
        whole = b"".join(iter_clip_bytes(layout, source))
        assert len(whole) == layout.size
        header = len(layout.parts[0].data)
        points = {0, 1, 5, header - 1, header, header + 1, header + 11, header + 15, layout.size - 1,
                  layout.size // 2, layout.size // 3 + 7}
        if isinstance(layout.parts[1], FlvTags):  # the middle of tag headers, of the timestamp bytes
            tags = layout.parts[1]
            points |= {header + 4, header + 6, header + 7, header + 8}
            position = 0
            for _ in range(40):
                size = int.from_bytes(whole[header + position + 1:header + position + 4], "big")
                points |= {header + position + 3, header + position + 5, header + position + 7}
                position += 15 + size
            assert tags.size == layout.size - header
        points = sorted(point for point in points if 0 <= point < layout.size)
        for first in points:
            for last in points:
                if last < first:
                    continue
                parts = layout.slice(first, last)
                assert sum(part.size for part in parts) == last - first + 1
                piece = b"".join(iter_clip_bytes(layout, source, first, last, chunk=4096))
                assert piece == whole[first:last + 1], (first, last)
                assert b"".join(_materialise(part, source) for part in parts) == piece
        # a slice cut into pieces concatenates to the whole
        cuts = [0, header // 2, header + 3, layout.size // 2, layout.size]
        joined = b"".join(b"".join(iter_clip_bytes(layout, source, a, b - 1)) for a, b in zip(cuts, cuts[1:]))
        assert joined == whole
    with pytest.raises(ValueError):
        layout.slice(0, layout.size)


def _materialise(part, source) -> bytes:
    """What a server does with each sliced part: literal bytes written, source ranges sent as they are, FLV runs
    through iter_clip_bytes (here: by a one-part layout)."""
    if isinstance(part, Literal):
        return part.data
    if isinstance(part, SourceRange):
        source.seek(part.offset)
        return source.read(part.length)
    from mediaproxy.media.clipparts import Layout
    return b"".join(iter_clip_bytes(Layout("flv", part.size, (part,), 0.0, 0.0), source))


# ------------------------------------------------------------------------------------------------ refusals


def test_fragmented_mp4_is_not_indexable(videos, tmp_path):
    target = tmp_path / "frag.mp4"
    with av.open(str(videos["mp4"])) as source, av.open(str(target), "w", format="mp4",
                                                       options={"movflags": "frag_keyframe+empty_moov"}) as out:
        streams = {stream.index: out.add_stream_from_template(stream) for stream in source.streams}
        for packet in source.demux():
            if packet.dts is None:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    assert "moof" in top_level_atoms(target.read_bytes())
    with pytest.raises(NotIndexable, match="fragmented"):
        index_of(target)


def test_two_mdat_boxes_are_not_indexable(videos, tmp_path):
    target = tmp_path / "two.mp4"
    target.write_bytes(videos["mp4"].read_bytes() + struct.pack(">I4s", 24, b"mdat") + bytes(16))
    with pytest.raises(NotIndexable, match="several mdat"):
        index_of(target)


def test_other_containers_are_not_indexable(videos, tmp_path):
    target = tmp_path / "a.ts"
    remux_video(videos["mp4"], target)
    with pytest.raises(NotIndexable):
        index_of(target)
    with pytest.raises(NotIndexable):
        read_mp4_index(io.BytesIO(b""), 0)
    with pytest.raises(NotIndexable):
        read_flv_index(io.BytesIO(b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00"), 13)


def test_a_moov_over_the_cap_is_not_indexable(videos):
    path = videos["moov_end"]
    with open(path, "rb") as source:
        with pytest.raises(NotIndexable, match="moov is larger"):
            read_mp4_index(source, path.stat().st_size, max_moov=1000)


# ------------------------------------------------------------------------------------------------ large files


def _rebuild_moov(moov: bytes, remap) -> bytes:
    """A moov (without its header) with every chunk offset remapped and written as co64."""
    def walk(data: bytes) -> bytes:
        out, at = [], 0
        while at < len(data):
            size, kind = struct.unpack_from(">I4s", data, at)
            body = data[at + 8:at + size]
            if kind in (b"trak", b"mdia", b"minf", b"stbl"):
                body = walk(body)
            elif kind in (b"stco", b"co64"):
                count = struct.unpack_from(">I", body, 4)[0]
                width = 4 if kind == b"stco" else 8
                offsets = struct.unpack_from(f">{count}{'I' if width == 4 else 'Q'}", body, 8)
                kind, body = b"co64", body[:8] + struct.pack(f">{count}Q", *map(remap, offsets))
            out.append(struct.pack(">I4s", len(body) + 8, kind) + body)
            at += size
        return b"".join(out)
    return walk(moov)


def padded_mp4(source: Path, target: Path, padding: int, split: float | None = None, moov_at_end: bool = False):
    """`source` with `padding` unreferenced zero bytes in its mdat (a hole in a sparse file: free to make): at the
    start of the mdat, or (`split`, a fraction of the media) between two of its chunks."""
    data = source.read_bytes()
    boxes, at = {}, 0
    while at < len(data):
        size, kind = struct.unpack_from(">I4s", data, at)
        boxes[kind] = (at, size)
        at += size
    moov_at, moov_size = boxes[b"moov"]
    mdat_at, mdat_size = boxes[b"mdat"]
    media = data[mdat_at + 8:mdat_at + mdat_size]
    cut = 0 if split is None else int(len(media) * split)
    ftyp = data[:boxes[b"ftyp"][1]]

    def layout_with(moov_length: int):
        mdat_start = len(ftyp) + (0 if moov_at_end else moov_length) + 16
        return mdat_start, lambda offset: mdat_start + (offset - mdat_at - 8) + (padding if offset - mdat_at - 8
                                                                                  >= cut else 0)
    probe = _rebuild_moov(data[moov_at + 8:moov_at + moov_size], lambda offset: 0)
    mdat_start, remap = layout_with(len(probe) + 8)
    moov = _rebuild_moov(data[moov_at + 8:moov_at + moov_size], remap)
    moov = struct.pack(">I4s", len(moov) + 8, b"moov") + moov
    with open(target, "wb") as out:
        out.write(ftyp)
        if not moov_at_end:
            out.write(moov)
        out.write(struct.pack(">I4sQ", 1, b"mdat", 16 + len(media) + padding))
        out.write(media[:cut])
        out.seek(padding, os.SEEK_CUR)  # a hole
        out.write(media[cut:])
        if moov_at_end:
            out.write(moov)
    return target


class VirtualClip(io.RawIOBase):
    """The virtual clip file as a read-only file object (PyAV reads it through iter_clip_bytes)."""

    def __init__(self, layout, source) -> None:
        self.layout, self.source, self.position = layout, source, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.position, 2: self.layout.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def read(self, size: int = -1) -> bytes:
        if self.position >= self.layout.size:
            return b""
        last = self.layout.size - 1 if size < 0 else min(self.layout.size, self.position + size) - 1
        data = b"".join(iter_clip_bytes(self.layout, self.source, self.position, last))
        self.position += len(data)
        return data


@pytest.mark.parametrize("moov_at_end", [False, True])
def test_a_file_of_hundreds_of_megabytes_is_indexed_from_its_moov_only(videos, tmp_path, moov_at_end):
    big = padded_mp4(videos["mp4"], tmp_path / "big.mp4", 400 << 20, moov_at_end=moov_at_end)
    size = big.stat().st_size
    assert size > 400 << 20
    source = Counting(big)
    index = read_mp4_index(source, size)
    moov = next(len for kind, len in _top(big) if kind == "moov")
    assert source.read_bytes <= moov + 200 and source.reads <= 12  # box headers, ftyp, moov: nothing else
    window = index.snap(2.5, None)
    layout = index.layout(window)
    assert source.read_bytes <= moov + 200  # snapping and laying out read nothing
    assert layout.parts[1].length < 20_000 and layout.size < 30_000  # the clip's media only, not the padding
    target = tmp_path / "clip.mp4"
    before = source.read_bytes
    with open(target, "wb") as out:
        for piece in iter_clip_bytes(layout, source):
            out.write(piece)
    assert source.read_bytes - before == layout.parts[1].length
    assert describe(target).first_second == 2
    assert frame_hashes(target)[-1] == frame_hashes(videos["mp4"])[-1]
    source.close()


def _top(path: Path):
    with open(path, "rb") as file:
        at, size = 0, path.stat().st_size
        while at < size:
            file.seek(at)
            length, kind = struct.unpack(">I4s", file.read(8))
            if length == 1:
                length = struct.unpack(">Q", file.read(8))[0]
            yield kind.decode(), length
            at += length


def test_a_clip_over_4_gib_gets_co64_and_a_64_bit_mdat(videos, tmp_path):
    big = padded_mp4(videos["bframes"], tmp_path / "huge.mp4", 9 << 29, split=0.5, moov_at_end=True)  # 4.5 GiB
    size = big.stat().st_size
    with open(big, "rb") as source:
        index = read_mp4_index(source, size)
        assert max(index.video.chunks) > 1 << 32
        layout = index.layout(index.snap(0.5, None))
        assert layout.size > 1 << 32
        header = layout.parts[0].data
        assert header[-16:-8] == struct.pack(">I4s", 1, b"mdat")
        assert int.from_bytes(header[-8:], "big") == layout.size - len(header) + 16
        assert b"co64" in header and b"stco" not in header
        with av.open(VirtualClip(layout, source)) as container:
            frames = [frame for frame in container.decode(video=0)]
        assert len(frames) == 100 and second_of(frames[0].to_image()) == 0 and second_of(frames[-1].to_image()) == 3
        assert hashlib.sha1(b"".join(bytes(p) for p in frames[60].planes)).hexdigest()[:12] == \
            frame_hashes(videos["bframes"])[60]


# ------------------------------------------------------------------------------------------------ an hour of tables


def _b(kind: bytes, *body: bytes) -> bytes:
    payload = b"".join(body)
    return struct.pack(">I4s", len(payload) + 8, kind) + payload


def _f(kind: bytes, *body: bytes, version: int = 0) -> bytes:
    return _b(kind, struct.pack(">I", version << 24), *body)


def _be32(values) -> bytes:
    import array
    table = array.array("I", values)
    table.byteswap()
    return table.tobytes()


def hour_long_mp4(path: Path, seconds: int = 4000, fps: int = 25, gop: int = 50) -> dict:
    """An MP4 with the tables of a long file (100k video samples with B-frame composition offsets, 172k AAC
    samples, interleaved one-second chunks) and a sparse mdat: its moov is real, its media zeros."""
    import random
    rng = random.Random(7)
    video_count = seconds * fps
    audio_count = seconds * 44100 // 1024
    video_sizes = [rng.randint(800, 1200) * (8 if number % gop == 0 else 1) for number in range(video_count)]
    audio_sizes = [rng.randint(180, 230) for _ in range(audio_count)]
    ctts_pattern = [2, 5, 0, 0, 5]  # frames of 512 ticks: I P B B P ..., as x264 with 2 B-frames
    ctts = [ctts_pattern[number % gop % 5 if number % gop else 0] * 512 for number in range(video_count)]
    # one-second chunks, video then audio
    video_chunks, audio_chunks, offsets_v, offsets_a = [], [], [], []
    per_audio = 44100 // 1024
    ftyp = _b(b"ftyp", b"isom\x00\x00\x02\x00isomiso2avc1mp41")
    vi = ai = 0
    layout_order = []
    while vi < video_count or ai < audio_count:
        if vi < video_count:
            layout_order.append(("v", vi, min(fps, video_count - vi)))
            vi += fps
        if ai < audio_count:
            layout_order.append(("a", ai, min(per_audio, audio_count - ai)))
            ai += per_audio

    def moov_bytes(mdat_start: int) -> bytes:
        position = mdat_start
        video_offsets, audio_offsets, video_spc, audio_spc = [], [], [], []
        for kind, first, count in layout_order:
            sizes = video_sizes if kind == "v" else audio_sizes
            (video_offsets if kind == "v" else audio_offsets).append(position)
            (video_spc if kind == "v" else audio_spc).append(count)
            position += sum(sizes[first:first + count])

        def stsc(spc):
            entries = [(1, spc[0])]
            for number, count in enumerate(spc[1:], 2):
                if count != entries[-1][1]:
                    entries.append((number, count))
            return _f(b"stsc", struct.pack(">I", len(entries)),
                      _be32(value for first, count in entries for value in (first, count, 1)))

        runs = []
        for value in ctts:
            if runs and runs[-1][1] == value:
                runs[-1][0] += 1
            else:
                runs.append([1, value])
        video_stbl = _b(b"stbl", _f(b"stsd", struct.pack(">I", 1), _b(b"avc1", bytes(78))),
                        _f(b"stts", struct.pack(">III", 1, video_count, 512)),
                        _f(b"stss", struct.pack(">I", -(-video_count // gop)), _be32(range(1, video_count + 1, gop))),
                        _f(b"ctts", struct.pack(">I", len(runs)), _be32(v for run in runs for v in run)),
                        stsc(video_spc),
                        _f(b"stsz", struct.pack(">II", 0, video_count), _be32(video_sizes)),
                        _f(b"stco", struct.pack(">I", len(video_offsets)), _be32(video_offsets)))
        audio_stbl = _b(b"stbl", _f(b"stsd", struct.pack(">I", 1), _b(b"mp4a", bytes(28))),
                        _f(b"stts", struct.pack(">III", 1, audio_count, 1024)),
                        stsc(audio_spc),
                        _f(b"stsz", struct.pack(">II", 0, audio_count), _be32(audio_sizes)),
                        _f(b"stco", struct.pack(">I", len(audio_offsets)), _be32(audio_offsets)))

        def trak(track_id, handler, timescale, duration, stbl, media_time):
            tkhd = _f(b"tkhd", struct.pack(">IIIII", 0, 0, track_id, 0, seconds * 1000), bytes(60))
            elst = _f(b"elst", struct.pack(">IIiI", 1, seconds * 1000, media_time, 0x10000))
            mdhd = _f(b"mdhd", struct.pack(">IIIIHH", 0, 0, timescale, duration, 0x55C4, 0))
            hdlr = _f(b"hdlr", struct.pack(">I4s12s", 0, handler, bytes(12)), b"Handler\x00")
            return _b(b"trak", tkhd, _b(b"edts", elst), _b(b"mdia", mdhd, hdlr, _b(b"minf", stbl)))

        mvhd = _f(b"mvhd", struct.pack(">IIII", 0, 0, 1000, seconds * 1000), bytes(80))
        return _b(b"moov", mvhd, trak(1, b"vide", fps * 512, video_count * 512, video_stbl, 1024),
                  trak(2, b"soun", 44100, audio_count * 1024, audio_stbl, 1024)), position

    probe, _ = moov_bytes(0)
    mdat_start = len(ftyp) + len(probe) + 16
    moov, end = moov_bytes(mdat_start)
    assert len(moov) == len(probe)
    with open(path, "wb") as out:
        out.write(ftyp + moov + struct.pack(">I4sQ", 1, b"mdat", end - mdat_start + 16))
        out.truncate(end)  # the media: a hole
    return {"moov": len(moov), "video": video_count, "audio": audio_count, "size": end}


def test_an_hour_of_tables_is_indexed_and_laid_out_from_the_moov(tmp_path):
    facts = hour_long_mp4(tmp_path / "hour.mp4")
    assert facts["size"] > 100 << 20 and facts["video"] == 100_000 and facts["audio"] > 170_000
    source = Counting(tmp_path / "hour.mp4")
    index = read_mp4_index(source, facts["size"])
    assert source.read_bytes <= facts["moov"] + 200
    assert [track.samples for track in index.tracks] == [facts["video"], facts["audio"]]
    assert index.duration == pytest.approx(4000, abs=0.1)
    assert facts["moov"] * 0.8 < index.approx_bytes < facts["moov"] * 3  # arrays, about the moov's size
    assert len(pickle.dumps(index)) < facts["moov"] * 3
    window = index.snap(1234.5, 1234.5 + 29 * 60)  # a 29-minute clip
    assert window.start_seconds == pytest.approx(1234.0) and window.duration == pytest.approx(29 * 60 + 0.5, abs=0.1)
    layout = index.layout(window)
    header, media = layout.parts
    assert len(header.data) < facts["moov"] * 0.6  # the new moov: about the clip's share of the tables
    assert media.length > 60 << 20
    whole = index.layout(index.snap(0, None))
    assert len(whole.parts[0].data) == pytest.approx(facts["moov"] + len(index.ftyp) + 16 + 48, abs=2000)
    assert source.read_bytes <= facts["moov"] + 200
    # the new moov parses back, with the samples of the window and offsets into the new file
    clip = io.BytesIO(header.data)
    clip.seek(0, os.SEEK_END)
    clip.truncate(layout.size)
    again = read_mp4_index(clip, layout.size)
    assert again.video.samples == window.stop - window.first_key
    assert again.video.chunks[0] == len(header.data) + index.video.offset_of(window.first_key) - media.offset
    assert again.snap(0, None).duration == pytest.approx(window.duration, abs=0.05)
    source.close()


# ---------------------------------------------------------------------------------------------------------------
# the searches from time to sample, against a look at every sample
# ---------------------------------------------------------------------------------------------------------------

def _probe_times(times: list[int]) -> list[int]:
    """Every time a search can turn on: each sample's, one either side, and beyond both ends."""
    return sorted({t + d for t in times for d in (-1, 0, 1)} | {min(times) - 1000, max(times) + 1000})


@pytest.mark.parametrize("key", MP4S)
def test_time_searches_agree_with_every_samples_times(videos, key):
    for track in index_of(videos[key]).tracks:
        pts = [track.pts(sample) for sample in range(track.samples)]
        for time in _probe_times(pts):
            for lo in (0, track.samples // 3):
                expected = next((s for s in range(lo, track.samples) if pts[s] >= time), track.samples)
                assert track.first_at_or_after(time, lo) == expected, (key, track.handler, time, lo)
            if pts == sorted(pts):  # in presentation order (audio; video without B-frames)
                expected = max((s for s in range(track.samples) if pts[s] <= time), default=-1)
                assert track.last_at_or_before(time) == expected, (key, track.handler, time)


def test_decode_time_search_handles_runs_of_zero_duration_and_bounds(videos):
    track = index_of(videos["mp4"]).video
    counts, deltas = [3, 2, 4, 1, 2], [10, 0, 5, 7, 0]
    first, time = [0], [0]
    for count, delta in zip(counts, deltas):
        first.append(first[-1] + count)
        time.append(time[-1] + count * delta)
    track = dataclasses.replace(track, samples=first[-1], stts_counts=array.array("I", counts),
                                stts_deltas=array.array("I", deltas), stts_first=array.array("q", first),
                                stts_time=array.array("q", time))
    dts = [track.dts(sample) for sample in range(track.samples)]
    assert dts == [0, 10, 20, 30, 30, 30, 35, 40, 45, 50, 57, 57]
    for when in range(-2, 62):
        for lo, hi in ((0, None), (4, None), (2, 7)):
            stop = track.samples if hi is None else hi
            expected = next((s for s in range(lo, stop) if dts[s] >= when), stop)
            assert track.first_decoded_at_or_after(when, lo, hi) == expected, (when, lo, hi)
