"""Clips of a progressive MP4 by rewriting its index, as nginx's mp4 module and nginx-vod-module do.

read_mp4_index(source, size) reads only the top-level box headers, `ftyp` and `moov` (never the media), checks
every size and count against its box and the file, and keeps the sample tables as compact arrays. index.snap()
turns a requested [start, end) into a window of samples (from the keyframe at or before start, in display time),
index.layout(window) writes the new `ftyp` + `moov` (tables cut, times rebased to 0, chunk offsets moved) +
`mdat` header, and names the one range of the original's bytes that holds the clip's media.

What is refused (NotIndexable: the caller falls back to the packet-copy remux): fragmented files (`moof`,
`mvex`), several `mdat`, no video track, edit lists other than [empty edit] + one edit at rate 1, encrypted
tracks, tables that do not add up (counts past their box, sample counts that disagree, stsc first chunks not
increasing, zero or huge sample deltas, chunk offsets outside the `mdat`, samples past its end, chunks out of
order), a `moov` over the cap.
"""

from __future__ import annotations

import array
import bisect
import itertools
import operator
import struct
import sys
from dataclasses import dataclass, field
from typing import BinaryIO, ClassVar

from ..errors import BadRequest
from .clipparts import ClipWindow, Layout, Literal, NotIndexable, SourceRange, guarded, read_at

MAX_MOOV = 64 << 20  # bytes: a 1-hour file's moov is ~2-4 MB
MAX_FTYP = 4096
MAX_TOP_LEVEL_BOXES = 100_000
MAX_CHILD_BOXES = 10_000
MAX_TRACKS = 64
MAX_CTTS_RUNS_SCANNED = 200_000
KEY_TOLERANCE = 1e-3  # seconds: a start 1 ms before a keyframe still starts at it (as video.cut_clip does)
_SWAP = sys.byteorder == "little"
_BOX = struct.Struct(">I4s")
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}
_FRAGMENTED = {b"moof", b"mfra", b"sidx", b"styp", b"ssix", b"emsg"}
_ENCRYPTED = {b"saiz", b"saio", b"senc", b"sinf"}
_AV = (b"vide", b"soun")


def _name(kind: bytes) -> str:
    return "".join(chr(c) if 32 < c < 127 else "?" for c in kind)


def _u32(data, at: int) -> int:
    return int.from_bytes(data[at:at + 4], "big")


def _table(data, start: int, count: int, width: int, typecode: str, box: str, end: int) -> array.array:
    """`count` big-endian unsigned integers of `width` bytes at data[start:], checked to lie inside the box."""
    if count < 0 or start + count * width > end:
        raise NotIndexable(f"{box}: {count} entries do not fit in the box")
    values = array.array(typecode)
    if values.itemsize != width:
        raise NotIndexable("unsupported platform integer size")
    values.frombytes(data[start:start + count * width])
    if _SWAP and width > 1:
        values.byteswap()
    return values


def _children(data, start: int, end: int, where: str):
    """(type, box start, payload start, payload end) of the boxes in data[start:end]."""
    position, count = start, 0
    while position < end:
        if end - position < 8:
            raise NotIndexable(f"{where}: a truncated box header")
        size, kind = _BOX.unpack_from(data, position)
        header = 8
        if size == 1:
            if end - position < 16:
                raise NotIndexable(f"{where}: a truncated box header")
            size = int.from_bytes(data[position + 8:position + 16], "big")
            header = 16
        elif size == 0:
            size = end - position
        if size < header or size > end - position:
            raise NotIndexable(f"{where}: the {_name(kind)} box overruns its parent")
        yield kind, position, position + header, position + size
        position += size
        count += 1
        if count > MAX_CHILD_BOXES:
            raise NotIndexable(f"{where}: too many boxes")


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    if len(body) + 8 > 0xFFFFFFFF:
        return struct.pack(">I4sQ", 1, kind, len(body) + 16) + body
    return _BOX.pack(len(body) + 8, kind) + body


def _full(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *payload)


def _be(values: array.array) -> bytes:
    if _SWAP and values.itemsize > 1:
        values = array.array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


def _interleave(typecode: str, *columns: array.array) -> array.array:
    out = array.array(typecode, bytes(array.array(typecode).itemsize * len(columns) * len(columns[0])))
    for index, column in enumerate(columns):
        out[index::len(columns)] = column if column.typecode == typecode else array.array(typecode, column)
    return out


def _shifted_be(offsets: array.array, shift: int) -> bytes:
    """Big-endian `offset + shift` of every element, at once. The array is read as one integer whose lanes are its
    elements; adding `shift` repeated in every lane carries (or borrows) nothing from one lane into the next,
    because every result fits its lane: the offsets increase (the parser checked), so the first and the last
    bound them all. A long clip moves ~100k chunk offsets: this is C speed, a Python loop ~10 ms."""
    width, lanes = offsets.itemsize, len(offsets)
    if not lanes:
        return b""
    if offsets[0] + shift < 0 or offsets[-1] + shift >= 1 << (8 * width):
        raise NotIndexable("chunk offsets out of range after the cut")
    whole = int.from_bytes(offsets.tobytes(), sys.byteorder)
    step = int.from_bytes(abs(shift).to_bytes(width, sys.byteorder) * lanes, sys.byteorder)
    moved = array.array(offsets.typecode)
    moved.frombytes((whole + step if shift >= 0 else whole - step).to_bytes(width * lanes, sys.byteorder))
    return _be(moved)


def _prefix(values) -> array.array:
    return array.array("q", itertools.accumulate(values, initial=0))


# ------------------------------------------------------------------------------------------------ the index


@dataclass(slots=True)
class Track:
    """One track's tables, decoded in bulk; sample numbers are 0-based, chunk numbers too."""

    track_id: int
    handler: bytes
    timescale: int
    tkhd: bytes  # raw boxes written back as they were (durations patched)
    mdhd: bytes
    hdlr: bytes
    stsd: bytes
    trak_extra: tuple[bytes, ...]  # other children of trak (udta, meta), of mdia, of minf (vmhd/smhd, dinf, ...)
    mdia_extra: tuple[bytes, ...]
    minf_before: tuple[bytes, ...]
    minf_after: tuple[bytes, ...]
    empty: int  # edit list: a leading empty edit (movie timescale), the media time shown first, the edit's length
    media_time: int
    edit_duration: int  # movie timescale; 0: to the end of the media
    samples: int
    stts_counts: array.array
    stts_deltas: array.array
    stts_first: array.array  # prefix: the first sample of each run (+ the total at the end)
    stts_time: array.array  # prefix: the decode time of each run's first sample (+ the total)
    ctts_counts: array.array | None
    ctts_offsets: array.array | None
    ctts_first: array.array | None
    ctts_min: int
    ctts_max: int
    ctts_version: int
    stss: array.array | None  # 1-based sync sample numbers, as in the file
    sample_size: int  # stsz's constant size, or 0: sizes[]
    sizes: array.array | None
    stsc_chunk: array.array  # 0-based first chunk of each stsc entry
    stsc_samples: array.array  # samples per chunk
    stsc_desc: array.array
    stsc_first: array.array  # prefix: the first sample of each entry's first chunk
    chunks: array.array  # chunk offsets in the file
    sdtp: bytes | None  # one byte a sample
    empty_media: int = 0  # `empty` in the track's timescale
    movie_timescale: int = 1

    # -------------------------------------------------------------------- times (track timescale)

    def dts(self, sample: int) -> int:
        if sample >= self.samples:
            return self.stts_time[-1]
        run = bisect.bisect_right(self.stts_first, sample) - 1
        return self.stts_time[run] + (sample - self.stts_first[run]) * self.stts_deltas[run]

    def reorder_depth(self) -> int:
        """How many samples before a given one (decode order) may be shown after it: none without composition
        offsets, else as many as the largest offset spread spans of the shortest frame (B-frame reordering)."""
        if self.ctts_first is None or self.ctts_min == self.ctts_max:
            return 1
        shortest = max(1, min(self.stts_deltas))
        return min(128, -(-(self.ctts_max - self.ctts_min) // shortest) + 2)

    def delta(self, sample: int) -> int:
        return self.stts_deltas[bisect.bisect_right(self.stts_first, sample) - 1]

    def ctts(self, sample: int) -> int:
        if self.ctts_first is None:
            return 0
        return self.ctts_offsets[bisect.bisect_right(self.ctts_first, sample) - 1]

    def base(self, sample: int) -> int:
        """Presentation time without the composition offset."""
        return self.empty_media + self.dts(sample) - self.media_time

    def pts(self, sample: int) -> int:
        """Presentation time (edit list applied), in the track's timescale."""
        return self.base(sample) + self.ctts(sample)

    def end_time(self) -> int:
        """Presentation time where the track ends: its last frames' end, or its edit's end when that is sooner."""
        last = max(self.pts(sample) + self.delta(sample) for sample in range(max(0, self.samples - 64), self.samples))
        if self.edit_duration:
            last = min(last, self.empty_media + self.edit_duration_media)
        return last

    @property
    def edit_duration_media(self) -> int:
        return self._media_units(self.edit_duration)

    def _media_units(self, movie_units: int) -> int:
        return movie_units * self.timescale // self.movie_timescale

    def first_decoded_at_or_after(self, time: int, lo: int = 0, hi: int | None = None) -> int:
        """The first sample in [lo, hi) whose decode time is >= time (hi: none), from the stts runs themselves:
        decode times never decrease, and within a run they are an arithmetic progression."""
        hi = self.samples if hi is None else hi
        run = bisect.bisect_left(self.stts_time, time)  # the first run that starts at or after `time`
        found = self.stts_first[run] if run < len(self.stts_first) else self.samples
        before = min(run, len(self.stts_deltas)) - 1  # or inside the run before, which starts earlier
        if before >= 0:
            delta = self.stts_deltas[before]
            if delta:
                within = self.stts_first[before] + -(-(time - self.stts_time[before]) // delta)
                found = min(found, within)
        return min(max(found, lo), hi)

    def _first_based_at_or_after(self, time: int, lo: int = 0, hi: int | None = None) -> int:
        """The first sample in [lo, hi) whose presentation time before its composition offset is >= time."""
        return self.first_decoded_at_or_after(time - self.empty_media + self.media_time, lo, hi)

    def _constant_offset(self) -> int | None:
        """The composition offset when every sample has the same one (0 without ctts), else None."""
        if self.ctts_first is None:
            return 0
        return self.ctts_min if self.ctts_min == self.ctts_max else None

    def first_at_or_after(self, time: int, lo: int = 0) -> int:
        """The first sample at or after `lo` (decode order) whose presentation time is >= time (samples: none)."""
        constant = self._constant_offset()
        if constant is not None:
            return self._first_based_at_or_after(time - constant, lo)
        # composition offsets differ: below `low` no sample can qualify, from `high` on every sample does
        low = self._first_based_at_or_after(time - self.ctts_max, lo)
        high = max(low, self._first_based_at_or_after(time - self.ctts_min, lo))
        run = bisect.bisect_right(self.ctts_first, low) - 1
        scanned = 0
        while run < len(self.ctts_counts):
            first = max(self.ctts_first[run], low)
            stop = min(self.ctts_first[run + 1], high)
            if first >= stop:
                break
            found = self._first_based_at_or_after(time - self.ctts_offsets[run], first, stop)
            if found < stop:
                return found
            run += 1
            scanned += 1
            if scanned > MAX_CTTS_RUNS_SCANNED:
                raise NotIndexable("ctts: too irregular to search")
        return high

    def last_at_or_before(self, time: int) -> int:
        """The last sample whose presentation time is <= time (-1: none), for tracks in presentation order."""
        constant = self._constant_offset()
        if constant is not None:  # the samples shown after `time` start at the first one shown at time + 1
            return self._first_based_at_or_after(time + 1 - constant) - 1
        return bisect.bisect_right(range(self.samples), time, key=self.pts) - 1

    # -------------------------------------------------------------------- bytes

    def chunk_of(self, sample: int) -> tuple[int, int]:
        """(chunk, the sample's position in it)."""
        entry = bisect.bisect_right(self.stsc_first, sample) - 1
        per = self.stsc_samples[entry]
        within = sample - self.stsc_first[entry]
        return self.stsc_chunk[entry] + within // per, within % per

    def size_of(self, first: int, stop: int) -> int:
        """Bytes of samples [first, stop)."""
        if self.sizes is None:
            return (stop - first) * self.sample_size
        return sum(memoryview(self.sizes)[first:stop])

    def offset_of(self, sample: int) -> int:
        chunk, within = self.chunk_of(sample)
        return self.chunks[chunk] + self.size_of(sample - within, sample)

    def approx_bytes(self) -> int:
        total = 256 + len(self.tkhd) + len(self.mdhd) + len(self.hdlr) + len(self.stsd) + len(self.sdtp or b"")
        total += sum(map(len, self.trak_extra + self.mdia_extra + self.minf_before + self.minf_after))
        for values in (self.stts_counts, self.stts_deltas, self.stts_first, self.stts_time, self.ctts_counts,
                       self.ctts_offsets, self.ctts_first, self.stss, self.sizes, self.stsc_chunk, self.stsc_samples,
                       self.stsc_desc, self.stsc_first, self.chunks):
            if values is not None:
                total += 64 + len(values) * values.itemsize
        return total


@dataclass(frozen=True, slots=True)
class Mp4Window(ClipWindow):
    """An MP4 clip's window: `first_key` and `stop` are video samples; every track's own cut, and edit lengths."""

    tracks: tuple[tuple[int, int, int, int, int], ...]  # (track index, first sample, stop, empty, media time)
    edits: tuple[int, ...]  # each track's edit length (movie timescale), in the order of `tracks`
    KIND: ClassVar[str] = "mp4v1"


@dataclass(slots=True)
class Mp4Index:
    """What a clip of one original needs: picklable, compact (arrays); the caller caches it per original."""

    size: int
    ftyp: bytes
    mvhd: bytes
    moov_extra: tuple[bytes, ...]
    timescale: int
    tracks: tuple[Track, ...]  # the video track first
    mdat_start: int  # the mdat payload
    mdat_end: int
    zero: int = 0  # the video's first presentation time (video timescale)
    video_end: int = 0
    approx_bytes: int = field(default=0)
    container: str = "mp4"
    key_times: array.array | None = field(default=None, repr=False, compare=False)  # of stss, when first needed

    @property
    def video(self) -> Track:
        return self.tracks[0]

    @property
    def duration(self) -> float:
        """Seconds of video."""
        return (self.video_end - self.zero) / self.video.timescale

    def snap(self, start: float, end: float | None = None) -> Mp4Window:
        """The window of samples for a clip from `start` to `end` seconds (None: the end) of the video.

        The clip starts at the keyframe shown at or before `start` and keeps the video samples, in decode order,
        up to the first one shown at or after `end` (as video.cut_clip does); other tracks keep the samples shown
        in that time, the first one starting at or before the keyframe (an edit list trims it exactly).
        """
        with guarded("MP4"):
            return self._snap(start, end)

    def _snap(self, start: float, end: float | None = None) -> Mp4Window:
        video = self.video
        scale = video.timescale
        if not start >= 0:  # also NaN
            start = 0.0
        if start * scale >= self.video_end - self.zero:
            raise BadRequest(f"clip_from: {round(start * 1000)} ms is past the end of the video "
                             f"({int(self.duration * 1000)} ms)")
        if end is not None and end <= start:
            raise BadRequest(f"clip_to: {round(end * 1000)} ms is not after clip_from ({round(start * 1000)} ms)")
        target = self.zero + int((start + KEY_TOLERANCE) * scale)
        keys = video.stss
        if keys is None:
            key = max(0, video.last_at_or_before(target))
        else:
            if self.key_times is None:  # once per index: the keyframes' presentation times
                self.key_times = array.array("q", (video.pts(number - 1) for number in keys))
            at = bisect.bisect_right(self.key_times, target) - 1
            key = keys[max(at, 0)] - 1
        origin = video.pts(key)
        if video.ctts(key) < 0:
            raise NotIndexable("a keyframe with a negative composition offset")
        track_end = self.video_end
        if end is None or self.zero + end * scale >= track_end:
            stop_sample, stop_time = video.samples, track_end
        else:
            stop_time = self.zero + -int(-end * scale // 1)  # ceil
            stop_sample = max(key + 1, video.first_at_or_after(stop_time, key + 1))
        if stop_sample < video.samples:
            tail = range(max(key, stop_sample - video.reorder_depth()), stop_sample)
            stop_time = min(max(video.pts(sample) + video.delta(sample) for sample in tail), track_end)
        stop_time = max(stop_time, origin + 1)
        tracks = [(0, key, stop_sample, 0, video.ctts(key))]
        edits = [self._movie(stop_time - origin, scale)]
        for index, track in enumerate(self.tracks[1:], 1):
            window = self._other_track(track, origin, stop_time, scale)
            if window is not None:
                tracks.append((index, *window[:4]))
                edits.append(window[4])
        return Mp4Window(first_key=key, stop=stop_sample, start_seconds=(origin - self.zero) / scale,
                         duration=(stop_time - origin) / scale, tracks=tuple(tracks), edits=tuple(edits))

    def _movie(self, units: int, timescale: int) -> int:
        return max(0, round(units * self.timescale / timescale))

    def _other_track(self, track: Track, origin: int, stop: int, scale: int):
        """(first sample, stop, empty edit (movie), media time, edit length (movie)) of a non-video track for
        the video window [origin, stop) (video timescale), or None when it has nothing there."""
        rate = track.timescale
        begin = origin * rate // scale
        finish = -(-stop * rate // scale)
        first = track.last_at_or_before(begin)
        if first < 0:
            first = 0
        if track.pts(first) >= finish:
            return None
        last = track.first_at_or_after(finish, first)
        if last <= first:
            return None
        media_time = track.media_time + begin - track.empty_media - track.dts(first)
        empty = 0
        if media_time < 0:  # the track starts after the clip does: an empty edit until it does
            shown = max(0, track.media_time - track.dts(first))
            empty, media_time = shown - media_time, shown
        ends = track.pts(last - 1) + track.delta(last - 1)
        if track.edit_duration:
            ends = min(ends, track.empty_media + track.edit_duration_media)
        length = min(ends, finish) - max(begin, track.pts(first))
        if length <= 0:
            return None
        empty_movie = self._movie(empty, rate)
        return first, last, empty_movie, media_time, self._movie(length, rate) + empty_movie

    # -------------------------------------------------------------------- the virtual file

    def layout(self, window: Mp4Window) -> Layout:
        """`ftyp` + new `moov` + `mdat` header (a Literal), then the original's bytes for the clip's media (one
        SourceRange: from the earliest kept sample of any track to the end of the latest)."""
        with guarded("MP4"):
            return self._layout(window)

    def _layout(self, window: Mp4Window) -> Layout:
        spans = []
        for index, first, stop, _empty, _media_time in window.tracks:
            track = self.tracks[index]
            if not 0 <= first < stop <= track.samples:
                raise ValueError("the window does not belong to this index")
            start = track.offset_of(first)
            spans.append((start, track.offset_of(stop - 1) + track.size_of(stop - 1, stop)))
        begin = min(span[0] for span in spans)
        finish = max(span[1] for span in spans)
        if finish > self.mdat_end or begin < self.mdat_start:
            raise NotIndexable("samples lie outside the mdat")
        length = finish - begin
        mdat_header = _BOX.pack(length + 8, b"mdat") if length + 8 <= 0xFFFFFFFF else \
            struct.pack(">I4sQ", 1, b"mdat", length + 16)
        moov, patches = self._moov(window, wide=False)
        payload = len(self.ftyp) + len(moov) + len(mdat_header)
        if payload + length > 0xFFFFFFFF:  # chunk offsets past 4 GiB: co64
            moov, patches = self._moov(window, wide=True)
            payload = len(self.ftyp) + len(moov) + len(mdat_header)
        moov = bytearray(moov)
        shift = payload - begin
        for at, kept, typecode in patches:
            offsets = _shifted_be(array.array(typecode, kept), shift)
            moov[at:at + len(offsets)] = offsets
        header = self.ftyp + bytes(moov) + mdat_header
        return Layout(container="mp4", size=len(header) + length, parts=(Literal(header), SourceRange(begin, length)),
                      start_seconds=window.start_seconds, duration=window.duration)

    def _moov(self, window: Mp4Window, wide: bool) -> tuple[bytes, list]:
        """The new moov, its chunk offset tables zero, and where to write them: (position, offsets, typecode)."""
        mvhd = _patch_duration(self.mvhd, max(window.edits))
        position = 8 + len(mvhd)
        traks, patches = [], []
        for (index, first, stop, empty, media_time), edit in zip(window.tracks, window.edits):
            trak, at, kept = _trak(self.tracks[index], first, stop, empty, media_time, edit, wide)
            patches.append((position + at, kept, "Q" if wide else "I"))
            traks.append(trak)
            position += len(trak)
        return _box(b"moov", mvhd, *traks, *self.moov_extra), patches


def _patch_duration(box: bytes, duration: int, tkhd: bool = False) -> bytes:
    """A copy of an mvhd / mdhd / tkhd box (with its header) with a new duration."""
    header = 16 if _u32(box, 0) == 1 else 8
    version = box[header]
    if tkhd:
        at = header + (28 if version == 1 else 20)
    else:
        at = header + (24 if version == 1 else 16)
    width = 8 if version == 1 else 4
    if width == 4 and duration > 0xFFFFFFFF:
        duration = 0xFFFFFFFF
    out = bytearray(box)
    out[at:at + width] = duration.to_bytes(width, "big")
    return bytes(out)


def _runs(counts: array.array, values: array.array, first_of: array.array, first: int, stop: int):
    """The run-length table (counts, values) cut to samples [first, stop)."""
    start_run = bisect.bisect_right(first_of, first) - 1
    end_run = bisect.bisect_right(first_of, stop - 1) - 1
    out_counts = counts[start_run:end_run + 1]
    out_values = values[start_run:end_run + 1]
    if start_run == end_run:
        out_counts[0] = stop - first
    else:
        out_counts[0] = first_of[start_run + 1] - first
        out_counts[-1] = stop - first_of[end_run]
    return out_counts, out_values


def _trak(track: Track, first: int, stop: int, empty: int, media_time: int, edit: int,
          wide: bool) -> tuple[bytes, int, array.array]:
    """(the trak box, where its chunk offsets go in it, the kept chunks' offsets in the original)."""
    samples = stop - first
    # stts, ctts
    counts, deltas = _runs(track.stts_counts, track.stts_deltas, track.stts_first, first, stop)
    stts = _full(b"stts", 0, 0, struct.pack(">I", len(counts)), _be(_interleave("I", counts, deltas)))
    boxes = [track.stsd, stts]
    if track.stss is not None:
        lo = bisect.bisect_left(track.stss, first + 1)
        hi = bisect.bisect_left(track.stss, stop + 1)
        keys = array.array("I", map((-first).__add__, track.stss[lo:hi]))
        boxes.append(_full(b"stss", 0, 0, struct.pack(">I", len(keys)), _be(keys)))
    if track.ctts_first is not None:
        counts, offsets = _runs(track.ctts_counts, track.ctts_offsets, track.ctts_first, first, stop)
        offsets = array.array("I", offsets.tobytes())  # the same 32 bits, signed or not
        boxes.append(_full(b"ctts", track.ctts_version, 0, struct.pack(">I", len(counts)),
                           _be(_interleave("I", counts, offsets))))
    # stsc: the chunks holding the samples, the first and last cut where the window starts or ends inside them
    first_chunk, first_within = track.chunk_of(first)
    last_chunk, last_within = track.chunk_of(stop - 1)
    start_entry = bisect.bisect_right(track.stsc_first, first) - 1
    end_entry = bisect.bisect_right(track.stsc_first, stop - 1) - 1
    # the entries' first chunks, 1-based as stsc writes them, counted from the window's first chunk (arrays, not
    # Python lists: a long clip of a file muxed one chunk per sample has tens of thousands of entries)
    chunks = array.array("I", map(max, map((1 - first_chunk).__add__, track.stsc_chunk[start_entry:end_entry + 1]),
                                  itertools.repeat(1)))
    per = array.array("I", track.stsc_samples[start_entry:end_entry + 1])
    descs = array.array("I", track.stsc_desc[start_entry:end_entry + 1])
    chunk_count = last_chunk - first_chunk + 1
    if chunk_count == 1:
        chunks, per, descs = array.array("I", [1]), array.array("I", [samples]), descs[:1]
    else:
        if first_within:
            covers_more = len(chunks) == 1 or chunks[1] > 2
            if covers_more:  # the first chunk gets an entry of its own, the rest keep theirs
                chunks.insert(0, 1)
                per.insert(0, per[0] - first_within)
                descs.insert(0, descs[0])
                chunks[1] = 2
            else:
                per[0] -= first_within
        last = chunk_count  # 1-based
        if per[-1] != last_within + 1:
            if chunks[-1] == last:
                per[-1] = last_within + 1
            else:
                chunks.append(last)
                per.append(last_within + 1)
                descs.append(descs[-1])
    flat = _interleave("I", chunks, per, descs)
    boxes.append(_full(b"stsc", 0, 0, struct.pack(">I", len(chunks)), _be(flat)))
    # stsz
    if track.sizes is None:
        boxes.append(_full(b"stsz", 0, 0, struct.pack(">II", track.sample_size, samples)))
    else:
        boxes.append(_full(b"stsz", 0, 0, struct.pack(">II", 0, samples), _be(track.sizes[first:stop])))
    # stco / co64: the kept chunks' offsets, the first moved to the window's first sample (shifted by layout())
    kept = track.chunks[first_chunk:last_chunk + 1]
    kept[0] = track.offset_of(first)
    stco_at = 8 + sum(map(len, boxes)) + 16
    boxes.append(_full(b"co64" if wide else b"stco", 0, 0, struct.pack(">I", chunk_count),
                       bytes((8 if wide else 4) * chunk_count)))
    if track.sdtp is not None:
        boxes.append(_full(b"sdtp", 0, 0, track.sdtp[first:stop]))
    stbl = _box(b"stbl", *boxes)
    minf = _box(b"minf", *track.minf_before, stbl, *track.minf_after)
    stco_at += 8 + sum(map(len, track.minf_before))
    duration = track.dts(stop) - track.dts(first)
    mdhd = _patch_duration(track.mdhd, duration)
    mdia = _box(b"mdia", mdhd, track.hdlr, *track.mdia_extra, minf)
    stco_at += 8 + len(mdhd) + len(track.hdlr) + sum(map(len, track.mdia_extra))
    edits = []
    if empty:
        edits.append((empty, -1))
    edits.append((edit - empty, media_time))
    if max(max(edits)) > 0x7FFFFFFF:
        elst = _full(b"elst", 1, 0, struct.pack(">I", len(edits)),
                     *(struct.pack(">Qqi", length, time, 0x00010000) for length, time in edits))
    else:
        elst = _full(b"elst", 0, 0, struct.pack(">I", len(edits)),
                     *(struct.pack(">Iii", length, time, 0x00010000) for length, time in edits))
    tkhd = _patch_duration(track.tkhd, edit, tkhd=True)
    edts = _box(b"edts", elst)
    stco_at += 8 + len(tkhd) + len(edts) + sum(map(len, track.trak_extra))
    return _box(b"trak", tkhd, edts, *track.trak_extra, mdia), stco_at, kept


# ------------------------------------------------------------------------------------------------ parsing


def read_mp4_index(source: BinaryIO, size: int, max_moov: int = MAX_MOOV) -> Mp4Index:
    """The index of a progressive MP4 read from `source` (`size` bytes): its top-level box headers, ftyp and
    moov only. NotIndexable for what a clip cannot be made of by rewriting the index."""
    with guarded("MP4"):
        return _read_mp4_index(source, size, max_moov)


def _read_mp4_index(source: BinaryIO, size: int, max_moov: int) -> Mp4Index:
    ftyp, moov, mdats = b"", None, []
    position, count = 0, 0
    while position < size:
        if size - position < 8:
            break  # trailing bytes shorter than a box header: ignored, as players do
        head = read_at(source, position, 16)
        if len(head) < 8:
            raise NotIndexable("the file is shorter than its size")
        box_size, kind = _BOX.unpack_from(head, 0)
        header = 8
        if box_size == 1:
            if len(head) < 16:
                raise NotIndexable("a truncated box header")
            box_size, header = int.from_bytes(head[8:16], "big"), 16
        elif box_size == 0:
            box_size = size - position
        if box_size < header:
            raise NotIndexable(f"the {_name(kind)} box has a size smaller than its header")
        if box_size > size - position:
            if kind == b"mdat":
                raise NotIndexable("the mdat runs past the end of the file (truncated)")
            raise NotIndexable(f"the {_name(kind)} box runs past the end of the file")
        if kind in _FRAGMENTED:
            raise NotIndexable("fragmented MP4")
        if kind == b"ftyp":
            if box_size > MAX_FTYP:
                raise NotIndexable("ftyp is too large")
            ftyp = read_at(source, position, box_size)
        elif kind == b"moov":
            if moov is not None:
                raise NotIndexable("several moov boxes")
            if box_size > max_moov:
                raise NotIndexable(f"moov is larger than {max_moov} bytes")
            moov = read_at(source, position + header, box_size - header)
            if len(moov) != box_size - header:
                raise NotIndexable("the file is shorter than its size")
        elif kind == b"mdat" and box_size > header:
            mdats.append((position + header, position + box_size))
        position += box_size
        count += 1
        if count > MAX_TOP_LEVEL_BOXES:
            raise NotIndexable("too many top-level boxes")
    if moov is None:
        raise NotIndexable("no moov box")
    if len(mdats) != 1:
        raise NotIndexable("no mdat box" if not mdats else "several mdat boxes")
    return _parse_moov(memoryview(moov), size, ftyp, *mdats[0])


def _parse_moov(moov: memoryview, size: int, ftyp: bytes, mdat_start: int, mdat_end: int) -> Mp4Index:
    mvhd, extra, traks = None, [], []
    for kind, box, start, end in _children(moov, 0, len(moov), "moov"):
        if kind == b"mvhd":
            mvhd = bytes(moov[box:end])
            mvhd_payload = start - box
        elif kind == b"trak":
            traks.append((start, end))
        elif kind == b"mvex":
            raise NotIndexable("fragmented MP4")
        elif kind in (b"udta", b"meta", b"iods"):
            extra.append(bytes(moov[box:end]))
        if len(traks) > MAX_TRACKS:
            raise NotIndexable("too many tracks")
    if mvhd is None:
        raise NotIndexable("no mvhd")
    version = _full_box(mvhd, mvhd_payload, len(mvhd), "mvhd", 28 if mvhd[mvhd_payload] == 1 else 20)
    timescale = _u32(mvhd, mvhd_payload + (20 if version == 1 else 12))
    if not timescale:
        raise NotIndexable("mvhd: timescale 0")
    tracks = [track for start, end in traks
              if (track := _parse_trak(moov, start, end, timescale, mdat_start, mdat_end)) is not None]
    videos = [track for track in tracks if track.handler == b"vide"]
    if not videos:
        raise NotIndexable("no video track")
    ordered = (videos[0], *[track for track in tracks if track.handler == b"soun"])
    total = sum(track.size_of(0, track.samples) for track in ordered)
    if total > mdat_end - mdat_start:
        raise NotIndexable("the samples add up to more than the mdat holds")
    index = Mp4Index(size=size, ftyp=ftyp, mvhd=mvhd, moov_extra=tuple(extra), timescale=timescale,
                     tracks=ordered, mdat_start=mdat_start, mdat_end=mdat_end)
    video = videos[0]
    early = range(min(video.samples, 64))
    index.zero = video.empty_media + max(0, min(video.dts(s) + video.ctts(s) for s in early) - video.media_time)
    index.video_end = video.end_time()
    if index.video_end <= index.zero:
        raise NotIndexable("the video has no duration")
    index.approx_bytes = 512 + len(ftyp) + len(mvhd) + sum(map(len, extra)) + sum(t.approx_bytes() for t in ordered)
    return index


def _full_box(moov, start: int, end: int, name: str, minimum: int) -> int:
    if end - start < 4 + minimum:
        raise NotIndexable(f"{name} is too short")
    version = moov[start]
    if version > 1:
        raise NotIndexable(f"{name}: version {version}")
    return version


def _parse_trak(moov, start: int, end: int, movie_timescale: int, mdat_start: int, mdat_end: int) -> Track | None:
    boxes: dict[bytes, tuple[int, int]] = {}
    raw_boxes: dict[bytes, int] = {}
    trak_extra, mdia_extra, minf_before, minf_after = [], [], [], []
    elst = None

    def keep(kind: bytes, start: int, end: int) -> None:
        if kind in boxes:
            raise NotIndexable(f"several {_name(kind)} boxes")
        boxes[kind] = (start, end)

    for kind, box, a, b in _children(moov, start, end, "trak"):
        if kind == b"mdia":
            for kind2, box2, c, d in _children(moov, a, b, "mdia"):
                if kind2 == b"minf":
                    seen_stbl = False
                    for kind3, box3, e, f in _children(moov, c, d, "minf"):
                        if kind3 == b"stbl":
                            if seen_stbl:
                                raise NotIndexable("several stbl boxes")
                            seen_stbl = True
                            for kind4, box4, g, h in _children(moov, e, f, "stbl"):
                                if kind4 in _ENCRYPTED:
                                    raise NotIndexable("encrypted track")
                                keep(kind4, g, h)
                                raw_boxes[kind4] = box4
                        else:
                            (minf_after if seen_stbl else minf_before).append(bytes(moov[box3:f]))
                elif kind2 in (b"mdhd", b"hdlr"):
                    keep(kind2, c, d)
                    raw_boxes[kind2] = box2
                else:
                    mdia_extra.append(bytes(moov[box2:d]))
        elif kind == b"tkhd":
            keep(kind, a, b)
            raw_boxes[kind] = box
        elif kind == b"edts":
            for kind2, _box2, c, d in _children(moov, a, b, "edts"):
                if kind2 == b"elst":
                    elst = (c, d)
        elif kind in (b"udta", b"meta"):
            trak_extra.append(bytes(moov[box:b]))
    hdlr = boxes.get(b"hdlr")
    if hdlr is None or hdlr[1] - hdlr[0] < 12:
        return None
    handler = bytes(moov[hdlr[0] + 8:hdlr[0] + 12])
    if handler not in _AV:
        return None  # timed metadata, text, hint tracks: not in the clip
    for needed in (b"tkhd", b"mdhd", b"stsd", b"stts", b"stsc"):
        if needed not in boxes:
            raise NotIndexable(f"a {handler.decode()} track without {needed.decode()}")
    raw = {kind: bytes(moov[raw_boxes[kind]:boxes[kind][1]]) for kind in (b"tkhd", b"mdhd", b"hdlr", b"stsd")}
    a, b = boxes[b"tkhd"]
    version = _full_box(moov, a, b, "tkhd", 32 if moov[a] == 1 else 20)
    track_id = _u32(moov, a + 4 + (16 if version == 1 else 8))
    a, b = boxes[b"mdhd"]
    version = _full_box(moov, a, b, "mdhd", 28 if moov[a] == 1 else 20)
    timescale = _u32(moov, a + 4 + (16 if version == 1 else 8))
    if not timescale:
        raise NotIndexable("mdhd: timescale 0")
    stsd = boxes[b"stsd"]
    if stsd[1] - stsd[0] >= 16 and bytes(moov[stsd[0] + 12:stsd[0] + 16]) in (b"encv", b"enca"):
        raise NotIndexable("encrypted track")

    # stts
    a, b = boxes[b"stts"]
    _full_box(moov, a, b, "stts", 4)
    runs = _u32(moov, a + 4)
    pairs = _table(moov, a + 8, runs * 2, 4, "I", "stts", b)
    counts, deltas = pairs[0::2], pairs[1::2]
    if not runs:
        raise NotIndexable("stts: no samples")
    if max(deltas) >= 1 << 31 or 0 in deltas[:-1] or 0 in counts:
        raise NotIndexable("stts: zero or huge sample durations")
    if deltas[-1] == 0 and counts[-1] > 1:
        raise NotIndexable("stts: zero sample durations")
    stts_first = _prefix(counts)
    samples = stts_first[-1]
    stts_time = _prefix(map(operator.mul, counts, deltas))

    # stsz / stz2
    sizes, sample_size = None, 0
    if b"stsz" in boxes:
        a, b = boxes[b"stsz"]
        _full_box(moov, a, b, "stsz", 8)
        sample_size, count = _u32(moov, a + 4), _u32(moov, a + 8)
        if not sample_size:
            sizes = _table(moov, a + 12, count, 4, "I", "stsz", b)
    elif b"stz2" in boxes:
        a, b = boxes[b"stz2"]
        _full_box(moov, a, b, "stz2", 8)
        width, count = moov[a + 7], _u32(moov, a + 8)
        if width == 16:
            sizes = array.array("I", _table(moov, a + 12, count, 2, "H", "stz2", b))
        elif width == 8:
            sizes = array.array("I", _table(moov, a + 12, count, 1, "B", "stz2", b))
        elif width == 4:
            if a + 12 + (count + 1) // 2 > b:
                raise NotIndexable("stz2: entries do not fit in the box")
            packed = bytes(moov[a + 12:a + 12 + (count + 1) // 2])
            sizes = array.array("I", (v for byte in packed for v in (byte >> 4, byte & 15)))[:count]
        else:
            raise NotIndexable(f"stz2: field size {width}")
    else:
        raise NotIndexable("no stsz")
    if count != samples:
        raise NotIndexable(f"stsz has {count} samples, stts {samples}")

    # ctts
    ctts_counts = ctts_offsets = ctts_first = None
    ctts_min = ctts_max = ctts_version = 0
    if b"ctts" in boxes:
        a, b = boxes[b"ctts"]
        ctts_version = _full_box(moov, a, b, "ctts", 4)
        runs = _u32(moov, a + 4)
        pairs = _table(moov, a + 8, runs * 2, 4, "I", "ctts", b)
        ctts_counts = pairs[0::2]
        ctts_offsets = array.array("i", pairs[1::2].tobytes())  # signed, as FFmpeg reads them
        if runs:
            ctts_first = _prefix(ctts_counts)
            if ctts_first[-1] != samples or 0 in ctts_counts:
                raise NotIndexable(f"ctts covers {ctts_first[-1]} samples of {samples}")
            ctts_min, ctts_max = min(ctts_offsets), max(ctts_offsets)
        else:
            ctts_counts = ctts_offsets = None

    # stss
    stss = None
    if b"stss" in boxes:
        a, b = boxes[b"stss"]
        _full_box(moov, a, b, "stss", 4)
        stss = _table(moov, a + 8, _u32(moov, a + 4), 4, "I", "stss", b)
        if not stss:
            raise NotIndexable("stss: no sync samples")
        if stss[0] < 1 or stss[-1] > samples or not all(map(operator.lt, stss, stss[1:])):
            raise NotIndexable("stss: sync samples out of order or past the samples")

    # chunks
    if b"stco" in boxes:
        a, b = boxes[b"stco"]
        _full_box(moov, a, b, "stco", 4)
        chunks = array.array("Q", _table(moov, a + 8, _u32(moov, a + 4), 4, "I", "stco", b))
    elif b"co64" in boxes:
        a, b = boxes[b"co64"]
        _full_box(moov, a, b, "co64", 4)
        chunks = _table(moov, a + 8, _u32(moov, a + 4), 8, "Q", "co64", b)
    else:
        raise NotIndexable("no stco or co64")
    if not chunks:
        raise NotIndexable("no chunks")
    if min(chunks) < mdat_start or max(chunks) >= mdat_end:
        raise NotIndexable("chunk offsets outside the mdat")
    if not all(map(operator.le, chunks, chunks[1:])):
        raise NotIndexable("chunks out of order")

    # stsc
    a, b = boxes[b"stsc"]
    _full_box(moov, a, b, "stsc", 4)
    entries = _table(moov, a + 8, _u32(moov, a + 4) * 3, 4, "I", "stsc", b)
    stsc_chunk = array.array("I", map((-1).__add__, entries[0::3])) if entries and min(entries[0::3]) else None
    stsc_samples, stsc_desc = entries[1::3], entries[2::3]
    if stsc_chunk is None or stsc_chunk[0] != 0:
        raise NotIndexable("stsc does not start at the first chunk")
    if not all(map(operator.lt, stsc_chunk, stsc_chunk[1:])) or stsc_chunk[-1] >= len(chunks):
        raise NotIndexable("stsc: first chunks not increasing, or past the chunks")
    if 0 in stsc_samples:
        raise NotIndexable("stsc: a chunk of no samples")
    spans = array.array("q", map(operator.sub, itertools.chain(stsc_chunk[1:], (len(chunks),)), stsc_chunk))
    stsc_first = _prefix(map(operator.mul, spans, stsc_samples))
    if stsc_first[-1] != samples:
        raise NotIndexable(f"stsc places {stsc_first[-1]} samples, the track has {samples}")
    stsc_first = stsc_first[:-1]

    sdtp = None
    if b"sdtp" in boxes:
        a, b = boxes[b"sdtp"]
        if b - a == 4 + samples:
            sdtp = bytes(moov[a + 4:b])

    # edit list: [an empty edit] + one edit at rate 1
    empty, media_time, edit_duration = 0, 0, 0
    if elst is not None:
        a, b = elst
        version = _full_box(moov, a, b, "elst", 4)
        width = 20 if version == 1 else 12
        count = _u32(moov, a + 4)
        if count * width > b - a - 8:
            raise NotIndexable("elst: entries do not fit in the box")
        edits = []
        for at in range(a + 8, a + 8 + count * width, width):
            if version == 1:
                duration, time, rate = struct.unpack_from(">Qqi", moov, at)
            else:
                duration, time, rate = struct.unpack_from(">Iii", moov, at)
            edits.append((duration, time, rate))
        if edits and edits[0][1] == -1:
            empty = edits.pop(0)[0]
        if edits and len(edits) == 2 and edits[-1][1] == -1 and edits[-1][0] == 0:
            edits.pop()
        if len(edits) > 1 or (edits and edits[0][2] != 0x00010000) or (edits and edits[0][1] < -1):
            raise NotIndexable("an edit list that cannot be honoured")
        if edits:
            edit_duration, media_time = edits[0][0], edits[0][1]
            if media_time == -1:
                raise NotIndexable("an edit list of empty edits only")
            if media_time >= stts_time[-1] + max(ctts_max, 0) + 1:
                raise NotIndexable("elst: the edit starts past the media")
        if empty >= 1 << 40 or edit_duration >= 1 << 48:
            raise NotIndexable("elst: edits too long")

    track = Track(track_id=track_id, handler=handler, timescale=timescale, tkhd=raw[b"tkhd"], mdhd=raw[b"mdhd"],
                  hdlr=raw[b"hdlr"], stsd=raw[b"stsd"], trak_extra=tuple(trak_extra), mdia_extra=tuple(mdia_extra),
                  minf_before=tuple(minf_before), minf_after=tuple(minf_after), empty=empty, media_time=media_time,
                  edit_duration=edit_duration, samples=samples, stts_counts=counts, stts_deltas=deltas,
                  stts_first=stts_first, stts_time=stts_time, ctts_counts=ctts_counts, ctts_offsets=ctts_offsets,
                  ctts_first=ctts_first, ctts_min=ctts_min, ctts_max=ctts_max, ctts_version=ctts_version, stss=stss,
                  sample_size=sample_size, sizes=sizes, stsc_chunk=stsc_chunk, stsc_samples=stsc_samples,
                  stsc_desc=stsc_desc, stsc_first=stsc_first, chunks=chunks, sdtp=sdtp)
    track.movie_timescale = movie_timescale
    track.empty_media = empty * timescale // movie_timescale
    last_chunk_start = track.stsc_first[-1] + (len(chunks) - 1 - stsc_chunk[-1]) * stsc_samples[-1]
    if chunks[-1] + track.size_of(last_chunk_start, samples) > mdat_end:
        raise NotIndexable("samples past the end of the mdat")
    return track
