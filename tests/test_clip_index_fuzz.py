"""Hostile input for the clip index parsers (mp4clip, flvclip): whatever the bytes, reading an index, snapping,
laying out and producing the clip end in a result or in NotIndexable / Unprocessable / BadRequest, in bounded time
(hypothesis deadlines) and bounded memory (no allocation follows a count the file lies about).

The files are real generated ones (moov at the front and at the end, FLV with and without its keyframe index),
damaged in memory: byte flips of the moov / the first tags, truncations, 32- and 64-bit fields overwritten with
edge values, and hand-made boxes whose counts overflow their box or the file.
"""

from __future__ import annotations

import io
import os
import struct
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.generate import remux_video, write_video
from mediaproxy.errors import BadRequest, Unprocessable
from mediaproxy.media.clipindex import NotIndexable, iter_clip_bytes, read_clip_index, read_mp4_index

FUZZ = settings(max_examples=int(os.environ.get("CLIP_FUZZ_EXAMPLES", "60")),  # a few hundred in all deadline=2000, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
EDGES = [0, 1, 2, 7, 8, 9, 15, 16, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFF]
WINDOWS = [(0.0, None), (1.3, 2.5), (2.9, None)]


def _box_spans(data: bytes, start: int = 0, end: int | None = None, depth: int = 0):
    """(type, start, end) of every box of a well-formed file, containers opened."""
    end = len(data) if end is None else end
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, at + 8)[0], 16
        elif size == 0:
            size = end - at
        if size < 8:
            return
        yield kind, at, at + size
        if kind in (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts") and depth < 6:
            yield from _box_spans(data, at + header, at + size, depth + 1)
        at += size


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("fuzzmedia")
    small = {"width": 64, "height": 48, "fps": 10}
    write_video(folder / "b.mp4", seconds=3, bframes=2, **small)
    write_video(folder / "a.flv", seconds=3, **small)
    write_video(folder / "s.flv", seconds=3, video_codec="flv", **small)
    remux_video(folder / "b.mp4", folder / "end.mp4")
    remux_video(folder / "a.flv", folder / "noindex.flv")
    return {name: (folder / file).read_bytes() for name, file in (
        ("front", "b.mp4"), ("end", "end.mp4"), ("flv", "a.flv"), ("sorenson", "s.flv"), ("noindex", "noindex.flv"))}


def exercise(data: bytes) -> None:
    """Index, snap, lay out and produce clips of `data`: only the allowed errors, and clips of bounded size."""
    try:
        index = read_clip_index(io.BytesIO(data), len(data))
    except (NotIndexable, Unprocessable):
        return
    assert index.approx_bytes < 64 * len(data) + 100_000
    for start, end in WINDOWS:
        try:
            window = index.snap(start, end)
            assert window == index.snap(start, end) and isinstance(window.key(), str)
            layout = index.layout(window)
        except (BadRequest, NotIndexable, Unprocessable):
            continue
        header = layout.parts[0].size
        assert header <= 4 * len(data) + 4096
        assert 0 < layout.size <= header + len(data)
        try:
            produced = sum(len(piece) for piece in iter_clip_bytes(layout, io.BytesIO(data), chunk=8192))
        except Unprocessable:
            continue  # the file is shorter than its index says: the server ends the response
        assert produced == layout.size
        middle = layout.size // 2
        try:
            piece = b"".join(iter_clip_bytes(layout, io.BytesIO(data), middle, layout.size - 1, chunk=4096))
        except Unprocessable:
            continue
        assert len(piece) == layout.size - middle


def _moov_span(data: bytes) -> tuple[int, int]:
    for kind, start, end in _box_spans(data):
        if kind == b"moov":
            return start, end
    raise AssertionError("no moov")


@pytest.mark.parametrize("name", ["front", "end", "flv", "sorenson", "noindex"])
def test_the_undamaged_files_clip(samples, name):
    index = read_clip_index(io.BytesIO(samples[name]), len(samples[name]))
    assert index.snap(1.3, 2.5).start_seconds == pytest.approx(1.0)
    exercise(samples[name])


@FUZZ
@given(name=st.sampled_from(["front", "end"]), flips=st.lists(
    st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8))
def test_byte_flips_in_the_moov(samples, name, flips):
    data = bytearray(samples[name])
    start, end = _moov_span(samples[name])
    for where, value in flips:
        data[start + int(where * (end - start))] = value
    exercise(bytes(data))


@FUZZ
@given(name=st.sampled_from(["front", "end", "flv", "sorenson", "noindex"]), where=st.floats(0, 1))
def test_truncated_files(samples, name, where):
    data = samples[name]
    exercise(data[:int(where * len(data))])


@FUZZ
@given(name=st.sampled_from(["front", "end"]), picks=st.lists(st.tuples(
    st.integers(0, 10_000), st.integers(0, 3), st.one_of(st.sampled_from(EDGES), st.integers(0, 0xFFFFFFFF))),
    min_size=1, max_size=3))
def test_table_fields_overwritten_with_edge_values(samples, name, picks):
    """A box's size, a table's version, count or entries, set to 0, 1, 2^31, 2^32-1, ...: the counts that
    overflow their box, offsets past the end, zero deltas, first chunks out of order."""
    data = bytearray(samples[name])
    boxes = [(kind, start, end) for kind, start, end in _box_spans(samples[name])
             if kind in (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"mvhd", b"tkhd", b"mdhd", b"elst", b"stts",
                         b"ctts", b"stss", b"stsc", b"stsz", b"stco", b"mdat", b"hdlr", b"edts")]
    for box, field, value in picks:
        kind, start, end = boxes[box % len(boxes)]
        positions = [start, start + 12, start + 16, start + 8 + 8 + 4 * (box % 16)]  # size, count, 1st, nth entry
        at = positions[field]
        if at + 4 <= end:
            data[at:at + 4] = struct.pack(">I", value)
    tracemalloc.start()
    try:
        exercise(bytes(data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * len(data) + (4 << 20)  # nothing allocated for what a count claims


@FUZZ
@given(name=st.sampled_from(["flv", "sorenson", "noindex"]), flips=st.lists(
    st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
    head=st.booleans())
def test_byte_flips_in_flv(samples, name, flips, head):
    """Anywhere, or in the first 1.5 KB: the header, onMetaData and its keyframe index, the sequence headers."""
    data = bytearray(samples[name])
    span = min(1500, len(data)) if head else len(data)
    for where, value in flips:
        data[int(where * span)] = value
    exercise(bytes(data))


@FUZZ
@given(size=st.one_of(st.sampled_from([0, 1, 8, 15, 16, 17, 1 << 32, (1 << 63) - 1, (1 << 64) - 1]),
                      st.integers(0, (1 << 64) - 1)), which=st.integers(0, 3))
def test_64_bit_box_sizes(samples, size, which):
    """A top-level box given a 64-bit size (size field 1), any value; or a 32-bit size of 0 (to the end)."""
    data = samples["end"]
    top = [(kind, start, end) for kind, start, end in _box_spans(data) if start == 0 or kind in (
        b"ftyp", b"free", b"mdat", b"moov")]
    kind, start, end = top[which % len(top)]
    if size < 1 << 32 and which == 3:
        patched = data[:start] + struct.pack(">I", 0) + data[start + 4:]  # size 0: to the end of the file
    else:
        patched = data[:start] + struct.pack(">I4sQ", 1, kind, size) + data[start + 8:]
    exercise(patched)


def _box(kind: bytes, *body: bytes) -> bytes:
    payload = b"".join(body)
    return struct.pack(">I4s", len(payload) + 8, kind) + payload


@pytest.mark.parametrize("table, body", [
    (b"stsz", struct.pack(">IIII", 0, 0, 0xFFFFFFFF, 5)),  # 4 G sizes claimed in a 16-byte box
    (b"stts", struct.pack(">IIII", 0, 0x40000000, 1, 1)),
    (b"stco", struct.pack(">III", 0, 0xFFFFFFFF, 40)),
    (b"stsc", struct.pack(">II", 0, 0x55555555)),
    (b"ctts", struct.pack(">II", 0, 0x20000000)),
    (b"stss", struct.pack(">II", 0, 0xFFFFFFFF)),
])
def test_counts_that_overflow_their_box_allocate_nothing(samples, table, body):
    """A real file with one table replaced by a tiny box claiming a huge count: refused, in bounded memory."""
    data = samples["front"]
    spans = [(start, end) for kind, start, end in _box_spans(data) if kind == table]
    start, end = spans[0]
    replacement = _box(table, body)
    delta = len(replacement) - (end - start)
    patched = bytearray(data[:start] + replacement + data[end:])
    for kind, box_start, box_end in _box_spans(data):  # the parents' sizes follow
        if kind in (b"moov", b"trak", b"mdia", b"minf", b"stbl") and box_start < start < box_end:
            patched[box_start:box_start + 4] = struct.pack(">I", box_end - box_start + delta)
    tracemalloc.start()
    try:
        with pytest.raises(NotIndexable):
            read_mp4_index(io.BytesIO(bytes(patched)), len(patched))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20


def test_a_moov_claiming_gigabytes_is_not_read(samples):
    data = bytearray(samples["end"])
    start, _ = _moov_span(bytes(data))
    data[start:start + 4] = struct.pack(">I", 0xFFFFFFF0)
    with pytest.raises(NotIndexable):
        read_mp4_index(io.BytesIO(bytes(data)), len(data))
    data[start:start + 4] = struct.pack(">I", len(data) - start)  # fits the file, over the cap
    with pytest.raises(NotIndexable, match="larger than"):
        read_mp4_index(io.BytesIO(bytes(data)), len(data), max_moov=1024)


def test_chunk_offsets_past_the_end_and_samples_past_the_mdat(samples):
    data = samples["front"]
    for kind, start, end in _box_spans(data):
        if kind == b"stco":
            broken = data[:start + 16] + struct.pack(">I", len(data) + 10) + data[start + 20:]
            with pytest.raises(NotIndexable, match="outside the mdat"):
                read_mp4_index(io.BytesIO(broken), len(broken))
        if kind == b"stsz":
            broken = data[:start + 20] + struct.pack(">I", 1 << 30) + data[start + 24:]
            with pytest.raises(NotIndexable, match="more than the mdat|past the end"):
                read_mp4_index(io.BytesIO(broken), len(broken))
        if kind == b"stsc":
            count = struct.unpack_from(">I", data, start + 12)[0]
            if count >= 2:  # the second entry's first chunk back to 1: not increasing
                broken = data[:start + 28] + struct.pack(">I", 1) + data[start + 32:]
                with pytest.raises(NotIndexable, match="stsc"):
                    read_mp4_index(io.BytesIO(broken), len(broken))
        if kind == b"stts":
            broken = data[:start + 20] + struct.pack(">I", 0) + data[start + 24:]
            with pytest.raises(NotIndexable, match="stts"):
                read_mp4_index(io.BytesIO(broken), len(broken))
