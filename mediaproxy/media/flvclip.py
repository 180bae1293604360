"""Clips of an FLV without copying its media: a new header and `onMetaData`, the sequence headers, then the
original's tags from the keyframe on, their timestamps rebased while they stream (tag sizes do not change, so the
clip's length is known before its first byte).

read_flv_index(source, size) reads the FLV header and the first tags (onMetaData, the AVC/AAC sequence headers,
the first keyframe) and takes the keyframes from onMetaData's `keyframes` object (`times`, `filepositions`, as
FFmpeg's add_keyframe_index, yamdi and flvtool2 write it), spot-checked against the file; without one, it scans
every tag header once. Clips start at a keyframe and end before the first keyframe at or after the end asked for
(the index knows keyframes only, so an FLV clip may run up to one GOP past clip_to). Classic codecs (Sorenson
Spark / VP6 video, MP3 / Nellymoser audio: no sequence headers) work the same way.
"""

from __future__ import annotations

import array
import bisect
import math
import struct
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import BadRequest
from .clipparts import (FLV_TAG_TYPES, ClipWindow, FlvTags, Layout, Literal, NotIndexable, guarded, pack_syncs,
                        read_at, tag_timestamp)

MAX_SCRIPT = 4 << 20  # an onMetaData of a long file with a keyframe index: ~20 bytes a keyframe
MAX_SEQUENCE_HEADER = 1 << 20
MAX_LEADING_TAGS = 256  # tags read from the start looking for the first keyframe
MAX_AMF_DEPTH = 8
MAX_META_FIELDS = 256
KEY_TOLERANCE_MS = 1
_AVC, _HEVC_LEGACY = 7, 12
_AAC = 10
_DROPPED_META = {"duration", "filesize", "keyframes", "datasize", "videosize", "audiosize", "lasttimestamp",
                 "lastkeyframetimestamp", "lastkeyframelocation", "times", "filepositions", "cuePoints"}
_TAG = struct.Struct(">B3s4s3s")


class FlvWindow(ClipWindow):
    """An FLV clip's window: `first_key` and `stop` count the index's keyframes (stop = their number: to the end)."""

    __slots__ = ()
    KIND = "flvv1"


@dataclass(slots=True)
class FlvIndex:
    """Keyframes of one FLV (tag timestamps in ms, tag positions), its sequence headers and metadata fields."""

    size: int
    has_audio: bool
    has_video: bool
    meta: tuple[tuple[str, object], ...]  # scalar onMetaData fields copied into clips (width, codec ids, ...)
    sequence_headers: tuple[bytes, ...]  # whole tags (11-byte header + data), written at timestamp 0
    times: array.array  # keyframe tag timestamps, ms
    positions: array.array  # keyframe tag positions in the file
    end: int  # where the tags end (the file's size for a whole file)
    duration_ms: int
    from_metadata: bool
    approx_bytes: int = 0
    container: str = "flv"

    @property
    def duration(self) -> float:
        return self.duration_ms / 1000

    def snap(self, start: float, end: float | None = None) -> FlvWindow:
        """The window from the keyframe at or before `start` (1 ms of tolerance) to the first keyframe at or after
        `end` (None: the end). BadRequest for a start past the end, or an end not after the start."""
        with guarded("FLV"):
            return self._snap(start, end)

    def _snap(self, start: float, end: float | None) -> FlvWindow:
        if not start >= 0:
            start = 0.0
        start_ms = round(start * 1000)
        if start_ms >= self.duration_ms:
            raise BadRequest(f"clip_from: {start_ms} ms is past the end of the video ({self.duration_ms} ms)")
        if end is not None and end <= start:
            raise BadRequest(f"clip_to: {round(end * 1000)} ms is not after clip_from ({start_ms} ms)")
        zero = self.times[0]
        key = max(0, bisect.bisect_right(self.times, zero + start_ms + KEY_TOLERANCE_MS) - 1)
        count = len(self.times)
        if end is None or end * 1000 >= self.duration_ms:
            stop = count
        else:
            stop = bisect.bisect_left(self.times, zero + math.ceil(end * 1000 - 1e-6), lo=key + 1)
        finish = self.times[stop] - zero if stop < count else self.duration_ms
        begin = self.times[key] - zero
        return FlvWindow(first_key=key, stop=stop, start_seconds=begin / 1000,
                         duration=max(finish - begin, 1) / 1000)

    def layout(self, window: FlvWindow) -> Layout:
        """FLV header + onMetaData + sequence headers (a Literal), then the original's tags (FlvTags)."""
        with guarded("FLV"):
            return self._layout(window)

    def _layout(self, window: FlvWindow) -> Layout:
        key, stop = window.first_key, window.stop
        if not 0 <= key < stop <= len(self.times):
            raise ValueError("the window does not belong to this index")
        origin, shift = self.positions[key], self.times[key]
        finish = self.positions[stop] if stop < len(self.times) else self.end
        keyframes = [(self.positions[index] - origin, self.times[index] - shift) for index in range(key, stop)]
        head = _header(self, keyframes, window.duration, finish - origin)
        syncs = pack_syncs([(position, self.times[key + number])
                            for number, (position, _) in enumerate(keyframes)])
        tags = FlvTags(offset=origin, length=finish - origin, shift_ms=shift, syncs=syncs)
        return Layout(container="flv", size=len(head) + tags.size, parts=(Literal(head), tags),
                      start_seconds=window.start_seconds, duration=window.duration)


def _header(index: FlvIndex, keyframes: list[tuple[int, int]], duration: float, body: int) -> bytes:
    flags = (4 if index.has_audio else 0) | (1 if index.has_video else 0)
    head = b"FLV\x01" + bytes((flags,)) + struct.pack(">II", 9, 0)
    sequence = b"".join(tag[:4] + b"\x00\x00\x00\x00" + tag[8:] + struct.pack(">I", len(tag))
                        for tag in index.sequence_headers)

    def script(header_size: int) -> bytes:
        fields = list(index.meta)
        fields.append(("duration", float(duration)))
        fields.append(("filesize", float(header_size + body)))
        times = [time / 1000 for _, time in keyframes]
        positions = [float(header_size + position) for position, _ in keyframes]
        data = b"\x02" + _amf_string(b"onMetaData") + b"\x08" + struct.pack(">I", len(fields) + 1)
        data += b"".join(_amf_key(name) + _amf_value(value) for name, value in fields)
        data += _amf_key("keyframes") + b"\x03" + _amf_key("filepositions") + _amf_numbers(positions)
        data += _amf_key("times") + _amf_numbers(times) + b"\x00\x00\x09" + b"\x00\x00\x09"
        return _tag(18, 0, data)

    first = script(0)  # numbers have a fixed size: the second pass has the same length, with true positions
    size = len(head) + len(first) + len(sequence)
    return head + script(size) + sequence


def _tag(kind: int, timestamp: int, data: bytes) -> bytes:
    if len(data) >= 1 << 24:
        raise NotIndexable("onMetaData too large for a tag")
    header = struct.pack(">B", kind) + len(data).to_bytes(3, "big") + timestamp.to_bytes(3, "big") + b"\x00" + \
        b"\x00\x00\x00"
    return header + data + struct.pack(">I", 11 + len(data))


def _amf_string(value: bytes) -> bytes:
    return struct.pack(">H", len(value)) + value


def _amf_key(name: str) -> bytes:
    return _amf_string(name.encode("utf-8")[:0xFFFF])


def _amf_value(value) -> bytes:
    if isinstance(value, bool):
        return b"\x01" + (b"\x01" if value else b"\x00")
    if isinstance(value, float):
        return b"\x00" + struct.pack(">d", value)
    encoded = str(value).encode("utf-8")
    if len(encoded) <= 0xFFFF:
        return b"\x02" + _amf_string(encoded)
    return b"\x0c" + struct.pack(">I", len(encoded)) + encoded


def _amf_numbers(values: list[float]) -> bytes:
    packed = array.array("d", values)
    if struct.pack("=d", 1.0) != struct.pack(">d", 1.0):
        packed.byteswap()
    body = packed.tobytes()
    return b"\x0a" + struct.pack(">I", len(values)) + b"".join(
        b"\x00" + body[at:at + 8] for at in range(0, len(body), 8))


# ------------------------------------------------------------------------------------------------ AMF0 reading


class _Amf:
    """A bounded AMF0 reader: every length is checked against the data, lists grow only with what is there."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, count: int) -> bytes:
        if count < 0 or self.at + count > len(self.data):
            raise NotIndexable("onMetaData is truncated")
        piece = self.data[self.at:self.at + count]
        self.at += count
        return piece

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def key(self) -> str:
        return self.take(self.u16()).decode("utf-8", "replace")

    def value(self, depth: int = 0):
        if depth > MAX_AMF_DEPTH:
            raise NotIndexable("onMetaData nests too deep")
        marker = self.take(1)[0]
        if marker == 0:
            return struct.unpack(">d", self.take(8))[0]
        if marker == 1:
            return bool(self.take(1)[0])
        if marker == 2:
            return self.take(self.u16()).decode("utf-8", "replace")
        if marker == 12:
            return self.take(self.u32()).decode("utf-8", "replace")
        if marker in (5, 6):
            return None
        if marker in (3, 8):
            if marker == 8:
                self.take(4)  # the count is a hint only; the object ends at its end marker
            return self.properties(depth)
        if marker == 10:
            count = self.u32()
            if count > len(self.data) - self.at:  # every value takes at least a byte
                raise NotIndexable("onMetaData: an array longer than its data")
            return [self.value(depth + 1) for _ in range(count)]
        if marker == 11:
            self.take(10)
            return None
        raise NotIndexable(f"onMetaData: AMF0 type {marker}")

    def properties(self, depth: int) -> dict:
        out: dict = {}
        while True:
            if self.at + 3 <= len(self.data) and self.data[self.at:self.at + 3] == b"\x00\x00\x09":
                self.at += 3
                return out
            if self.at >= len(self.data):
                return out  # an object cut short at the end of the tag: what was read
            name = self.key()
            out[name] = self.value(depth + 1)


def _parse_meta(data: bytes) -> dict | None:
    """The onMetaData object, or None where the script tag is something else or damaged (then the keyframes
    come from a scan, and no fields are copied)."""
    reader = _Amf(data)
    try:
        name = reader.value()
        if name != "onMetaData":
            return None
        value = reader.value()
    except (NotIndexable, RecursionError):
        return None
    return value if isinstance(value, dict) else None


# ------------------------------------------------------------------------------------------------ reading


def read_flv_index(source: BinaryIO, size: int) -> FlvIndex:
    """The keyframe index of an FLV. NotIndexable for what cannot be clipped this way."""
    with guarded("FLV"):
        return _read_flv_index(source, size)


def _read_flv_index(source: BinaryIO, size: int) -> FlvIndex:
    header = read_at(source, 0, 9)
    if len(header) < 9 or header[:3] != b"FLV":
        raise NotIndexable("not an FLV")
    data_offset = int.from_bytes(header[5:9], "big")
    if data_offset < 9 or data_offset + 4 > size:
        raise NotIndexable("FLV header size out of range")
    first = data_offset + 4
    meta: dict | None = None
    sequence: dict[int, bytes] = {}
    first_key = None
    has_audio = has_video = False
    position = first
    for _ in range(MAX_LEADING_TAGS):
        tag = _read_tag(source, position, size)
        if tag is None:
            break
        kind, data_size, timestamp, head = tag
        if kind == 18 and meta is None and data_size <= MAX_SCRIPT:
            meta = _parse_meta(read_at(source, position + 11, data_size)) or {}
        elif kind == 9:
            has_video = True
            codec, frame = head[0] & 0x0F, head[0] >> 4
            if head[0] & 0x80 and codec not in (2, 3, 4, 5, 6, 7):
                raise NotIndexable("enhanced FLV video")
            if codec in (_AVC, _HEVC_LEGACY) and len(head) > 1 and head[1] == 0:
                if 9 not in sequence and data_size <= MAX_SEQUENCE_HEADER:
                    sequence[9] = read_at(source, position, 11 + data_size)
            elif frame == 1 and (codec not in (_AVC, _HEVC_LEGACY) or (len(head) > 1 and head[1] == 1)):
                first_key = (position, timestamp)
                break
        elif kind == 8:
            has_audio = True
            if head and head[0] >> 4 == _AAC and len(head) > 1 and head[1] == 0 and 8 not in sequence:
                if data_size <= MAX_SEQUENCE_HEADER:
                    sequence[8] = read_at(source, position, 11 + data_size)
        position += 15 + data_size
    if first_key is None:
        raise NotIndexable("no video keyframe near the start of the FLV")
    end, last_timestamp = _last_tag(source, size)
    keyframes = _metadata_keyframes(meta or {}, first_key, size)
    if keyframes is not None and not _spot_check(source, size, *keyframes):
        keyframes = None
    from_metadata = keyframes is not None
    if keyframes is None:
        times, positions, end, last_timestamp, has_audio = _scan(source, size, first_key[0], has_audio)
    else:
        times, positions = keyframes
    duration_ms = 0
    if meta and isinstance(meta.get("duration"), float) and 0 < meta["duration"] < 1e7:
        duration_ms = round(meta["duration"] * 1000)
    elif last_timestamp is not None:
        duration_ms = last_timestamp - times[0]
    duration_ms = max(duration_ms, times[-1] - times[0] + 1)
    fields = tuple((name, value) for name, value in list((meta or {}).items())[:MAX_META_FIELDS]
                   if name not in _DROPPED_META and isinstance(value, (float, bool, str)) and len(name) < 256
                   and (not isinstance(value, str) or len(value) < 4096))
    has_audio = has_audio or bool(header[4] & 4) or (meta or {}).get("hasAudio") is True
    index = FlvIndex(size=size, has_audio=has_audio, has_video=True, meta=fields,
                     sequence_headers=tuple(sequence[kind] for kind in (9, 8) if kind in sequence), times=times,
                     positions=positions, end=end, duration_ms=duration_ms, from_metadata=from_metadata)
    index.approx_bytes = 512 + 16 * len(times) + sum(map(len, index.sequence_headers)) + sum(
        len(name) + 24 + (len(value) if isinstance(value, str) else 0) for name, value in fields)
    return index


def _read_tag(source: BinaryIO, position: int, size: int):
    """(type, data size, timestamp, the first 5 data bytes) of the tag at `position`, or None where none is."""
    if position + 15 > size:
        return None
    head = read_at(source, position, 16)
    if len(head) < 11 or head[0] & 0x1F not in FLV_TAG_TYPES or head[0] & 0xC0:
        return None
    data_size = int.from_bytes(head[1:4], "big")
    if position + 15 + data_size > size:
        return None
    return head[0] & 0x1F, data_size, tag_timestamp(head), head[11:11 + min(data_size, 5)]


def _last_tag(source: BinaryIO, size: int) -> tuple[int, int | None]:
    """(where the tags end, the last tag's timestamp) from the PreviousTagSize at the end of the file."""
    back = read_at(source, size - 4, 4)
    if len(back) == 4:
        previous = int.from_bytes(back, "big")
        start = size - 4 - previous
        if 11 <= previous <= size and start >= 13:
            head = read_at(source, start, 11)
            if len(head) == 11 and head[0] & 0x1F in FLV_TAG_TYPES and \
                    int.from_bytes(head[1:4], "big") == previous - 11:
                return size, tag_timestamp(head)
    return size, None


def _metadata_keyframes(meta: dict, first_key: tuple[int, int], size: int):
    keyframes = meta.get("keyframes")
    if not isinstance(keyframes, dict):
        return None
    times, positions = keyframes.get("times"), keyframes.get("filepositions")
    if not isinstance(times, list) or not isinstance(positions, list) or not times or len(times) != len(positions):
        return None
    if not all(isinstance(value, float) and math.isfinite(value) for value in times + positions):
        return None
    try:
        milliseconds = array.array("q", (round(value * 1000) for value in times))
        offsets = array.array("q", (round(value) for value in positions))
    except (OverflowError, ValueError):
        return None
    if offsets[0] != first_key[0] or milliseconds[0] != first_key[1]:
        return None
    ordered = all(a < b for a, b in zip(offsets, offsets[1:])) and all(
        a <= b for a, b in zip(milliseconds, milliseconds[1:]))
    if not ordered or offsets[-1] + 15 > size or milliseconds[0] < 0:
        return None
    return milliseconds, offsets


def _spot_check(source: BinaryIO, size: int, times: array.array, positions: array.array) -> bool:
    """The middle and last keyframes of the metadata index really are video keyframe tags with those times."""
    for at in {len(times) // 2, len(times) - 1}:
        tag = _read_tag(source, positions[at], size)
        if tag is None or tag[0] != 9 or tag[2] != times[at] or not tag[3] or tag[3][0] >> 4 != 1:
            return False
    return True


def _scan(source: BinaryIO, size: int, position: int, has_audio: bool):
    """Every tag header from `position` on, once: (keyframe times, positions, end, last timestamp, has audio)."""
    times, positions = array.array("q"), array.array("q")
    last = None
    while True:
        tag = _read_tag(source, position, size)
        if tag is None:
            break
        kind, data_size, timestamp, head = tag
        if kind == 9 and head:
            codec, frame = head[0] & 0x0F, head[0] >> 4
            if frame == 1 and (codec not in (_AVC, _HEVC_LEGACY) or (len(head) > 1 and head[1] == 1)):
                if not times or timestamp >= times[-1]:
                    times.append(timestamp)
                    positions.append(position)
        elif kind == 8:
            has_audio = True
        last = timestamp
        position += 15 + data_size
    if not times:
        raise NotIndexable("no video keyframes in the FLV")
    return times, positions, position, last, has_audio
