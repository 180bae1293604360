"""The virtual clip file shared by the MP4 and FLV index rewriters: its parts, slicing, and producing its bytes.

A clip made by rewriting an index is a few literal bytes (the new header: `ftyp` + `moov` + `mdat` header, or an
FLV header, `onMetaData` and sequence headers) followed by byte ranges of the original, untouched (MP4) or with
their FLV tag timestamps rebased while they stream. Its length is known before the first byte; any byte range of
it can be produced (a Range request), and the untouched ranges can go out with sendfile.

Pure media code: no HTTP, no caches. Sources are blocking, seekable binary file objects.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import struct
from dataclasses import dataclass
from typing import BinaryIO, ClassVar, Iterator, Union

from ..errors import Unprocessable


class NotIndexable(Unprocessable):
    """The file cannot be clipped by rewriting its index (fragmented MP4, several `mdat`, an edit list we cannot
    honour, a table that does not add up, ...): the caller falls back to the packet-copy remux (video.cut_clip).

    A subclass of Unprocessable, so a caller that forgets the fallback answers 422, never 500."""


@contextlib.contextmanager
def guarded(container: str):
    """A last net under the parsers' own checks: arithmetic a crafted file pushes out of range (an array item
    overflowing, an index past a table) is a file we cannot index, never a crash."""
    try:
        yield
    except (OverflowError, IndexError, struct.error, ZeroDivisionError, RecursionError, UnicodeError) as error:
        raise NotIndexable(f"malformed {container} index ({type(error).__name__})") from None


@dataclass(frozen=True, slots=True)
class ClipWindow:
    """A clip's window snapped to the index: frozen, hashable, equal for requests that give the same clip."""

    first_key: int  # the keyframe the clip starts at (MP4: a video sample, decode order; FLV: a keyframe number)
    stop: int  # the first of those not in the clip
    start_seconds: float  # the keyframe's display time, from the start of the video
    duration: float  # seconds
    KIND: ClassVar[str] = "clip"  # the layout's format, and its version

    def key(self) -> str:
        """What the window's cached layout is filed under (with the original's identity)."""
        return f"{self.KIND}:{self.first_key}-{self.stop}"


@dataclass(frozen=True, slots=True)
class Literal:
    """Bytes of the virtual file that are not in the original (the new header)."""

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def cut(self, start: int, stop: int) -> "Literal":
        return Literal(self.data[start:stop])


@dataclass(frozen=True, slots=True)
class SourceRange:
    """`length` bytes of the original from `offset`, sent as they are (sendfile from a local file)."""

    offset: int
    length: int

    @property
    def size(self) -> int:
        return self.length

    def cut(self, start: int, stop: int) -> "SourceRange":
        return SourceRange(self.offset + start, stop - start)


@dataclass(frozen=True, slots=True)
class FlvTags:
    """A run of whole FLV tags of the original (`offset`, `length`: the run, each tag with its PreviousTagSize),
    whose timestamps are rebased (minus `shift_ms`, never below 0) while they stream; the part is the run's bytes
    [lo, hi). `syncs`: known tag starts inside the run (packed int64 pairs: position in the run, timestamp),
    the keyframes, so a slice can start walking tag headers near where it starts instead of at the run's start.
    """

    offset: int
    length: int
    shift_ms: int
    syncs: bytes = b""
    lo: int = 0
    hi: int = -1  # -1: the run's end

    @property
    def size(self) -> int:
        return (self.length if self.hi < 0 else self.hi) - self.lo

    def cut(self, start: int, stop: int) -> "FlvTags":
        return FlvTags(self.offset, self.length, self.shift_ms, self.syncs, self.lo + start, self.lo + stop)


Part = Union[Literal, SourceRange, FlvTags]


@dataclass(frozen=True, slots=True)
class Layout:
    """The virtual clip file: `parts` in order, `size` bytes in all (the Content-Length)."""

    container: str  # "mp4" or "flv"
    size: int
    parts: tuple[Part, ...]
    start_seconds: float  # where the clip starts in the original (the keyframe's display time)
    duration: float  # seconds

    @property
    def content_type(self) -> str:
        return "video/mp4" if self.container == "mp4" else "video/x-flv"

    def slice(self, first: int, last: int) -> tuple[Part, ...]:
        """The parts covering bytes [first, last] (inclusive, as in a Range header) of the virtual file, cut to fit."""
        if not 0 <= first <= last < self.size:
            raise ValueError(f"bytes {first}-{last} are not inside a clip of {self.size} bytes")
        out: list[Part] = []
        position = 0
        for part in self.parts:
            size = part.size
            start, stop = max(first - position, 0), min(last + 1 - position, size)
            if start < stop:
                out.append(part if (start, stop) == (0, size) else part.cut(start, stop))
            position += size
            if position > last:
                break
        return tuple(out)


def iter_clip_bytes(layout: Layout, source: BinaryIO, first: int = 0, last: int | None = None,
                    chunk: int = 1 << 20) -> Iterator[bytes]:
    """Bytes [first, last] (inclusive; last None: to the end) of the virtual file, read from a blocking file
    object, in pieces of at most about `chunk` bytes. FLV tag timestamps are rebased on the way, whatever the
    range (a range may start in the middle of a tag)."""
    if layout.size == 0:
        return
    last = layout.size - 1 if last is None else last
    chunk = max(int(chunk), 4096)
    for part in layout.slice(first, last):
        yield from part_bytes(part, source, chunk)


def part_bytes(part: Part, source: BinaryIO, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The bytes of one part (already cut to the range wanted), read from a blocking file object."""
    chunk = max(int(chunk), 4096)
    if isinstance(part, Literal):
        for start in range(0, len(part.data), chunk):
            yield part.data[start:start + chunk]
    elif isinstance(part, SourceRange):
        yield from _read_range(source, part.offset, part.length, chunk)
    else:
        yield from _flv_tags(part, source, chunk)


def layout_to_blob(layout: Layout) -> tuple[bytes, dict]:
    """A layout as (body, meta) for the disk cache: the literal bytes and FLV sync tables one after the other,
    and a plain description of the parts (no pickle: a cache file is data, never code)."""
    body, parts = bytearray(), []
    for part in layout.parts:
        if isinstance(part, Literal):
            parts.append(["L", len(part.data)])
            body += part.data
        elif isinstance(part, SourceRange):
            parts.append(["S", part.offset, part.length])
        else:
            parts.append(["F", part.offset, part.length, part.shift_ms, part.lo, part.hi, len(part.syncs)])
            body += part.syncs
    meta = {"container": layout.container, "size": layout.size, "start": layout.start_seconds,
            "duration": layout.duration, "parts": parts}
    return bytes(body), meta


def layout_from_blob(body: bytes, meta: dict) -> Layout:
    """The layout `layout_to_blob` described; ValueError when the description does not hold together."""
    try:
        parts: list[Part] = []
        at = 0
        for kind, *fields in meta["parts"]:
            if kind == "L":
                parts.append(Literal(body[at:at + fields[0]]))
                at += fields[0]
            elif kind == "S":
                parts.append(SourceRange(*fields))
            elif kind == "F":
                offset, length, shift, lo, hi, syncs = fields
                parts.append(FlvTags(offset, length, shift, body[at:at + syncs], lo, hi))
                at += syncs
            else:
                raise ValueError(f"unknown part {kind!r}")
        layout = Layout(meta["container"], meta["size"], tuple(parts), meta["start"], meta["duration"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"not a clip layout ({error!r})") from None
    if at != len(body) or sum(part.size for part in parts) != layout.size:
        raise ValueError("the layout's parts do not add up")
    return layout


def _read_range(source: BinaryIO, offset: int, length: int, chunk: int) -> Iterator[bytes]:
    source.seek(offset)
    while length > 0:
        data = source.read(min(chunk, length))
        if not data:
            raise Unprocessable("the original is shorter than its index says")
        length -= len(data)
        yield data


def read_at(source: BinaryIO, offset: int, length: int) -> bytes:
    """Up to `length` bytes at `offset` (fewer only at the end of the file)."""
    source.seek(offset)
    pieces, wanted = [], length
    while wanted > 0:
        data = source.read(wanted)
        if not data:
            break
        pieces.append(data)
        wanted -= len(data)
    return b"".join(pieces) if len(pieces) != 1 else pieces[0]


# ------------------------------------------------------------------------------------------------ FLV rebasing

FLV_TAG_TYPES = (8, 9, 18)


def rebased_timestamp(timestamp: int, shift: int) -> bytes:
    """The 4 timestamp bytes of a tag header (24 bits, then the upper 8 bits)."""
    value = max(timestamp - shift, 0) & 0xFFFFFFFF
    return bytes(((value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF, value >> 24))


def tag_timestamp(header: bytes | bytearray | memoryview, at: int = 0) -> int:
    return (header[at + 4] << 16) | (header[at + 5] << 8) | header[at + 6] | (header[at + 7] << 24)


def _flv_tags(part: FlvTags, source: BinaryIO, chunk: int) -> Iterator[bytes]:
    """The run's bytes [lo, hi), tag headers rewritten. Tags are walked from a known tag start at or before lo
    (a keyframe whose header checks out, else the run's start); where a header does not look like one (a
    damaged file), the rest of the run passes through unchanged, so every byte is the same whichever range asked
    for it, and the length never changes."""
    lo, hi = part.lo, (part.length if part.hi < 0 else part.hi)
    tag = _walk_to(part, source, lo)  # the start of the tag holding lo (None: past the last good header)
    position = lo
    while position < hi:
        size = min(chunk, hi - position)
        data = read_at(source, part.offset + position, size)
        if len(data) < size:
            raise Unprocessable("the original is shorter than its index says")
        buffer = None
        while tag is not None and tag < position + size:
            header = _tag_header(source, part, tag, data, position)
            if header is None:
                tag = None
                break
            tag_size = 15 + ((header[1] << 16) | (header[2] << 8) | header[3])
            new = rebased_timestamp(tag_timestamp(header), part.shift_ms)
            for index in range(4):  # only the timestamp bytes (4..7 of the header) that fall in this piece
                at = tag + 4 + index - position
                if 0 <= at < size:
                    if buffer is None:
                        buffer = bytearray(data)
                    buffer[at] = new[index]
            if tag + 8 > position + size:
                break  # its timestamp goes on in the next piece: that piece rewrites the rest
            tag += tag_size
        yield bytes(buffer) if buffer is not None else data
        position += size


def _tag_header(source: BinaryIO, part: FlvTags, tag: int, data: bytes, position: int) -> bytes | None:
    """The 11-byte header of the tag at run position `tag` (from the piece in hand when it holds it), or None
    where it is not a plausible tag inside the run."""
    if tag + 15 > part.length:
        return None
    start = tag - position
    if 0 <= start and start + 11 <= len(data):
        header = data[start:start + 11]
    else:
        header = read_at(source, part.offset + tag, 11)
        if len(header) < 11:
            return None
    if header[0] & 0x1F not in FLV_TAG_TYPES or header[0] & 0xC0:
        return None
    if tag + 15 + ((header[1] << 16) | (header[2] << 8) | header[3]) > part.length:
        return None
    return header


def _walk_to(part: FlvTags, source: BinaryIO, lo: int) -> int | None:
    """The run position of the tag holding byte `lo` of the run, reading only tag headers."""
    tag = 0
    if lo > 0 and part.syncs:
        pairs = array.array("q")
        pairs.frombytes(part.syncs)
        positions = pairs[0::2]
        at = bisect.bisect_right(positions, lo) - 1
        while at > 0:  # a keyframe whose header checks out (right type and timestamp): walk from there
            header = read_at(source, part.offset + positions[at], 11)
            if len(header) == 11 and header[0] == 9 and tag_timestamp(header) == pairs[2 * at + 1]:
                tag = positions[at]
                break
            at = 0  # the index lied: walk from the run's start
    while True:
        header = _tag_header(source, part, tag, b"", -1 << 62)
        if header is None:
            return None
        size = 15 + ((header[1] << 16) | (header[2] << 8) | header[3])
        if tag + size > lo:
            return tag
        tag += size


def pack_syncs(pairs: list[tuple[int, int]]) -> bytes:
    flat = array.array("q")
    for position, timestamp in pairs:
        flat.append(position)
        flat.append(timestamp)
    return flat.tobytes()


U32 = struct.Struct(">I")
