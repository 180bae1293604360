"""Video with PyAV: probe once, grab exact frames (seek to the keyframe before, decode forward), cut clips.

Frames come out as Pillow images converted with the video's own colour range and matrix, optionally already
scaled by swscale (cheaper than scaling a full-size RGB picture), so they enter the thumbnail pipeline exactly
where a decoded image does. Clips copy packets (no re-encoding) from the keyframe at or before the start.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
from av.video.reformatter import ColorRange, Colorspace, Interpolation
from PIL import Image

from ..errors import BadRequest, TooLarge, Unprocessable

# What probing and opening decode at most per frame unless told a limit (services pass the configured one,
# `[limits] max_source_pixels`, whose default this is).
DEFAULT_MAX_PIXELS = 100_000_000


def analysis_options(max_pixels: int) -> dict[str, str]:
    """av.open options under which FFmpeg's stream analysis decodes no frame over `max_pixels`.

    Opening a container decodes a few pictures to complete what the headers say (an H.264 stream claiming
    16000x16000 costs 0.7 GB and 2 s there). Past the limit the analysis decoder refuses: the size then comes from
    the headers alone (H.264/HEVC parsers keep it; some codecs, VP9 or MPEG-4 in AVI, are left at 0 x 0). Refusing
    every picture would lose those sizes for all videos, and skipping decoding makes the analysis read megabytes
    more. Decoding for real uses the stream's own decoder, which these options do not touch.
    """
    return {"max_pixels": str(max_pixels)}


@dataclass(frozen=True)
class VideoInfo:
    duration: float  # seconds
    width: int  # as displayed: sample aspect ratio and rotation applied
    height: int
    frame_rate: float
    keyframes: tuple[float, ...]  # keyframe times where the container indexes them (MP4), else ()
    has_audio: bool
    container: str  # FFmpeg demuxer name
    video_codec: str
    audio_codec: str | None


def probe_video(source: Path | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS) -> VideoInfo:
    """What frame grabs and clips need to know, read once per original (the caller caches it).

    The first frame is decoded: only a decoded frame tells the rotation a phone recorded. A frame whose stream
    header says it has more than `max_pixels` pixels is not decoded (thumbnails refuse such a video before they
    ask; a clip copies packets and needs no pixels): its size is then the header's, without rotation.
    """
    with _open(source, max_pixels) as container:
        stream = _video_stream(container)
        time_base = stream.time_base or Fraction(1, 1000)
        duration = container.duration / av.time_base if container.duration else 0.0
        if not duration and stream.duration:
            duration = float(stream.duration * time_base)
        start = float(stream.start_time * time_base) if stream.start_time else 0.0
        keyframes = _keyframe_times(stream, time_base)
        coded_width, coded_height = coded_size(stream)
        if coded_width * coded_height > max_pixels:
            width, height = _header_display_size(stream)
        else:
            _limit_decoder(stream, max_pixels)
            first = _ForwardDecoder(container, stream, time_base, start, keyframes).first_frame()
            if first is None:
                raise Unprocessable("the video has no decodable frames")
            width, height = _display_size(first, stream, 1.0)
        rate = stream.average_rate or stream.guessed_rate or 25
        audio_stream = _audio_stream(container)
        audio = audio_stream.codec_context.name if audio_stream is not None else None
        return VideoInfo(duration=max(duration, 0.0), width=width, height=height, frame_rate=float(rate),
                         keyframes=keyframes, has_audio=audio is not None, container=container.format.name,
                         video_codec=stream.codec_context.name, audio_codec=audio)


def grab_frames(source: Path | BinaryIO, times: list[float], scale: float = 1.0,
                keyframes: tuple[float, ...] | None = None, max_pixels: int | None = None) -> list[Image.Image]:
    """The frames shown at `times` (seconds from the start), in the order asked, as upright RGB images.

    One pass over the file: targets are visited in time order, seeking forward only when the next target lies
    beyond the keyframe that follows the current position. `scale` (≤ 1) shrinks the frames in swscale.
    `keyframes`: what probe_video found (None: read the container's index again). A time past the end gives the
    last frame. `max_pixels`: a video whose stream header claims larger frames is refused (TooLarge) before
    anything is decoded, and a frame larger than that later in the stream is not decoded.
    """
    order = sorted(range(len(times)), key=lambda index: times[index])
    found: dict[int, Image.Image] = {}
    with _open(source, DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels) as container:
        stream = _video_stream(container)
        if max_pixels is not None:
            refuse_oversized(stream, max_pixels)
            _limit_decoder(stream, max_pixels)
        stream.thread_type = "SLICE"  # frame threading would hold each frame back by a thread count of frames
        time_base = stream.time_base or Fraction(1, 1000)
        start = float(stream.start_time * time_base) if stream.start_time else 0.0
        if keyframes is None:
            keyframes = _keyframe_times(stream, time_base)
        decoder = _ForwardDecoder(container, stream, time_base, start, keyframes)
        for index in order:
            found[index] = _to_image(decoder.frame_at(times[index]), stream, scale)
    return [found[index] for index in range(len(times))]


class _ForwardDecoder:
    """Decodes forward through one open container, seeking only when that is cheaper than decoding on."""

    def __init__(self, container, stream, time_base: Fraction, start: float, keyframes: tuple[float, ...]) -> None:
        self.container = container
        self.stream = stream
        self.time_base = time_base
        self.start = start
        self.frames = None  # the decode iterator, once started
        self.current = None  # the last frame decoded (shown until the next one's time)
        self.pending = None  # a frame decoded past the previous target, not yet consumed
        self.keyframes = sorted(keyframes)

    def first_frame(self):
        self._seek(0.0)
        return self.pending or next(self.frames, None)

    def frame_at(self, target: float):
        if self.frames is None or self._should_seek(target):
            self._seek(target)
        while True:
            frame = self.pending or next(self.frames, None)
            self.pending = None
            if frame is None:  # end of stream: the last frame is what is shown
                if self.current is None:
                    raise Unprocessable("the video has no decodable frames")
                return self.current
            if frame.pts is None:
                continue
            time = float(frame.pts * self.time_base) - self.start
            if time > target + 1e-6 and self.current is not None:
                self.pending = frame
                return self.current
            self.current = frame
            if time > target:  # the first frame after a seek may start a little late: it is what is shown
                return frame

    def _should_seek(self, target: float) -> bool:
        if self.current is None:
            return True
        position = float(self.current.pts * self.time_base) - self.start
        if target < position:
            return True
        following = bisect.bisect_right(self.keyframes, position)
        return following < len(self.keyframes) and target >= self.keyframes[following]

    def _seek(self, target: float) -> None:
        """Position the decoder at a keyframe at or before `target`; where the demuxer lands late (or nowhere,
        as FLV without an index may), step further back until a frame at or before the target comes out."""
        for position in _walk_back(target):
            try:
                # freshly opened, the start needs no seek (and seeking a short MPEG-TS to its start lands at its end)
                if position > 0.0 or self.frames is not None:
                    self.container.seek(int((position + self.start) / self.time_base), stream=self.stream,
                                        backward=True, any_frame=False)
            except av.FFmpegError:
                if self.frames is not None:  # already read from: only a seek can go back, and none works
                    raise Unprocessable("the video cannot be seeked") from None
                position = 0.0  # freshly opened: decoding starts at the beginning anyway
            self.frames = self._decode()
            self.current = None
            first = next(self.frames, None)
            first_time = None if first is None or first.pts is None else float(first.pts * self.time_base) - self.start
            if position == 0.0 or (first_time is not None and first_time <= target + 1e-6):
                self.pending = first
                return

    def _decode(self):
        try:
            for packet in demux(self.container, self.stream):
                try:
                    yield from packet.decode()
                except av.InvalidDataError:
                    continue  # a damaged packet: skip it, as players do
        except av.FFmpegError as error:
            raise Unprocessable(f"the video cannot be decoded ({_reason(error)})") from None


def coded_size(stream) -> tuple[int, int]:
    """The frame size a stream's header declares (what a decoder allocates), 0 where it declares none."""
    context = stream.codec_context
    return max(context.width, context.coded_width), max(context.height, context.coded_height)


def refuse_oversized(stream, max_pixels: int) -> None:
    width, height = coded_size(stream)
    if width * height > max_pixels:
        raise TooLarge(f"the video's frames are {width}x{height} pixels (limit {max_pixels})")


def _limit_decoder(stream, max_pixels: int) -> None:
    """The decoder refuses any frame well over `max_pixels`, whatever a later header in the stream claims.

    Decoders check the frame they allocate, padded (VP9 aligns each side to 64 pixels; MPEG-4 asks 54 K pixels for
    a 96x64 frame): a frame at the limit must pass."""
    padded = max_pixels * 5 // 4 + 256 * 256
    stream.codec_context.options = {**stream.codec_context.options, "max_pixels": str(padded)}


def _header_display_size(stream) -> tuple[int, int]:
    width, height = stream.codec_context.width, stream.codec_context.height
    aspect = stream.sample_aspect_ratio
    if aspect and aspect > 0 and aspect != 1:
        width = width * aspect
    return max(1, round(width)), max(1, height)


def demux(container, *streams):
    """container.demux(*streams), surviving a file that grows streams while it is read (FLV may).

    PyAV sizes its table of the streams to read at the start; after the last packet it flushes every stream of
    the container, and on a stream added since it fails with IndexError. Every packet has come by then: what
    is left is the flush packets (an empty packet per stream drains its decoder), given here instead.
    """
    try:
        yield from container.demux(*streams)
    except IndexError:
        for stream in streams:
            flush = av.Packet()
            flush.stream = stream
            yield flush


def _keyframe_times(stream, time_base: Fraction) -> tuple[float, ...]:
    """Keyframe display times from the container's index, where it has one (MP4). The index holds decode times:
    with B-frames those run ahead of display by a constant delay, which aligning the first entry to the stream's
    start removes."""
    entries = [entry.timestamp for entry in stream.index_entries if entry.is_keyframe]
    if not entries:
        return ()
    first = min(entry.timestamp for entry in stream.index_entries)
    return tuple(float((timestamp - first) * time_base) for timestamp in entries)


def _to_image(frame, stream, scale: float) -> Image.Image:
    """RGB with the frame's own range and matrix (unspecified: BT.709 for HD, BT.601 below, as players do)."""
    colorspace = frame.colorspace
    if int(colorspace or 2) == 2:  # unspecified
        colorspace = Colorspace.ITU709 if frame.height >= 720 else Colorspace.ITU601
    color_range = frame.color_range if int(frame.color_range or 0) in (1, 2) else ColorRange.MPEG
    rotation = int(frame.rotation or 0) % 360
    width, height = _display_size(frame, stream, scale)
    if rotation in (90, 270):
        width, height = height, width  # scaled before the rotation
    rgb = frame.reformat(width=width, height=height, format="rgb24", src_colorspace=colorspace,
                         dst_colorspace=colorspace, src_color_range=color_range, dst_color_range=ColorRange.JPEG,
                         interpolation=Interpolation.AREA if scale < 1 else Interpolation.BICUBIC)
    image = rgb.to_image()
    if rotation:  # the display matrix of phone videos; PyAV reports degrees counter-clockwise
        image = image.rotate(rotation, expand=True)
    return image


def _display_size(frame, stream, scale: float) -> tuple[int, int]:
    """Width × height as displayed (sample aspect ratio and rotation applied), times `scale`."""
    width, height = frame.width, frame.height
    aspect = stream.sample_aspect_ratio
    if aspect and aspect > 0 and aspect != 1:
        width = width * aspect
    if int(frame.rotation or 0) % 180 == 90:
        width, height = height, width
    return max(1, round(width * scale)), max(1, round(height * scale))


def frame_times(info: VideoInfo, *, vid_sec: float | None, thumb_offset: float | None, slices: int | None,
                slice_index: int | None, start_sec: float | None, end_sec: float | None) -> list[float]:
    """The times to grab: one (vid_sec, or slice i of n), or n for a strip (SPEC §2)."""
    duration = info.duration
    if slices is not None:
        window_start = min(start_sec or 0.0, duration)
        window_end = min(end_sec if end_sec is not None else duration, duration)
        if window_end < window_start:
            raise BadRequest(f"start_sec: {window_start:g} is after the end of the window ({window_end:g})")
        step = (window_end - window_start) / slices
        indexes = [slice_index] if slice_index is not None else list(range(slices))
        return [window_start + step * index for index in indexes]
    if vid_sec is None:
        vid_sec = thumb_offset if thumb_offset is not None and math.isfinite(thumb_offset) else 3.0
    return [min(max(vid_sec, 0.0), duration)]


def _open(source: Path | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS):
    try:
        return av.open(str(source) if isinstance(source, Path) else source, metadata_errors="ignore",
                       options=analysis_options(max_pixels))
    except (av.FFmpegError, OSError, ValueError) as error:
        raise Unprocessable(f"the video cannot be opened ({_reason(error)})") from None


def _video_stream(container):
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            if stream.codec_context is None:  # FFmpeg knows no decoder for it
                raise Unprocessable("the file's video codec is not one FFmpeg decodes")
            return stream
    raise Unprocessable("the file has no video stream")


def _audio_stream(container):
    """The first audio stream FFmpeg has a decoder for, or None."""
    return next((stream for stream in container.streams.audio if stream.codec_context is not None), None)


def _reason(error: Exception) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:120]


@dataclass(frozen=True)
class Clip:
    start: float  # where the clip really starts in the source (the keyframe at or before the asked start), s
    duration: float  # seconds


CLIP_FORMATS = {"mp4": "mp4", "flv": "flv"}
_MP4_CODECS = {"h264", "hevc", "av1", "vp9", "mpeg4", "aac", "mp3", "opus", "ac3", "eac3", "alac", "flac"}
_FLV_CODECS = {"h264", "flv1", "vp6f", "vp6", "vp6a", "aac", "mp3", "nellymoser", "pcm_s16le", "speex",
               "adpcm_swf"}


def cut_clip(source: Path | BinaryIO, target: Path | BinaryIO, start: float, end: float | None,
             output: str) -> Clip:
    """Copy the packets from the keyframe at or before `start` to `end` (None: the end) into `target` (a file, or
    a binary stream for a clip kept in memory).

    Timestamps are rebased so the clip starts at 0, audio kept with the video it played beside; MP4 is written
    with its index at the front (playable while it downloads) into a file, fragmented into a stream (FFmpeg's
    faststart needs to reread a file). Runs Python per packet: keep it off the event loop. A damaged source whose
    packets FFmpeg cannot read or write is Unprocessable, never a half-written success.
    """
    with _open(source) as container:
        video = _video_stream(container)
        audio = _audio_stream(container)
        allowed = _MP4_CODECS if output == "mp4" else _FLV_CODECS
        for stream in filter(None, (video, audio)):
            codec = stream.codec_context.codec.canonical_name  # "flv1", "mp3": not decoder names like "mp3float"
            if codec not in allowed:
                raise BadRequest(f"flvclipper: {codec} cannot go in an {output} clip")
        in_file = isinstance(target, Path)
        options = {} if output != "mp4" else {"movflags": "+faststart" if in_file else "frag_keyframe+empty_moov"}
        try:
            with av.open(str(target) if in_file else target, "w", format=CLIP_FORMATS[output],
                         options=options) as out:
                streams = {video.index: out.add_stream_from_template(video)}
                if audio is not None:
                    streams[audio.index] = out.add_stream_from_template(audio)
                mux = _Muxer(out, streams, video)
                clip = _copy_packets(container, video, audio, mux, start, end)
        except av.FFmpegError as error:
            raise Unprocessable(f"the video cannot be clipped ({_reason(error)})") from None
        if not mux.video_packets:  # nothing written: FFmpeg has not even created the file
            raise Unprocessable(f"the video has no readable frames from {start:g} s on")
        return clip


class _Muxer:
    """Copies packets into the clip. A packet the muxer refuses (timestamps out of order in a damaged file) is
    left out, as players skip what they cannot place."""

    def __init__(self, out, streams: dict, video) -> None:
        self.out, self.streams, self.video = out, streams, video
        self.video_packets = 0

    def __call__(self, packet) -> None:
        is_video = packet.stream is self.video
        packet.stream = self.streams[packet.stream.index]
        try:
            self.out.mux(packet)
        except av.ArgumentError:
            return
        self.video_packets += is_video


def _copy_packets(container, video, audio, mux, start: float, end: float | None) -> Clip:
    video_zero = float((video.start_time or 0) * video.time_base)  # the source time shown as 0
    packets, origin = _from_keyframe(container, video, audio, start + video_zero)
    stop = None if end is None else end + video_zero
    video_done, audio_done = False, audio is None
    last = origin
    for packet in packets:
        if packet.pts is None:
            continue  # flush packets
        base = packet.stream.time_base
        shown = float(packet.pts * base)
        if packet.stream is video:
            if shown < origin - 1e-6:
                continue  # leading B-frames of an open GOP: they need the GOP before
            video_done = video_done or (stop is not None and shown >= stop)
        else:
            if shown < origin - 1e-6:
                continue  # audio from before the clip
            audio_done = audio_done or (stop is not None and shown >= stop)
        if video_done and audio_done:
            break
        if video_done if packet.stream is video else audio_done:
            continue
        shift = round(origin / base)
        packet.pts -= shift
        if packet.dts is not None:
            packet.dts -= shift
        last = max(last, shown + float((packet.duration or 0) * base))
        mux(packet)
    return Clip(start=origin - video_zero, duration=last - origin)


def _from_keyframe(container, video, audio, start: float):
    """(packets from the last video keyframe shown at or before `start`, that keyframe's time in seconds).

    The demuxer's seek is only a first guess: it is followed forward to the last keyframe not after `start`
    (packets since that keyframe are held back), and walked back where it landed late (MPEG-TS, FLV without an
    index, a start inside the last GOP).
    """
    streams = [stream for stream in (video, audio) if stream is not None]
    for position in _walk_back(start):
        try:
            container.seek(int(position / video.time_base), stream=video, backward=True, any_frame=False)
        except av.FFmpegError:
            position = 0.0
            container.seek(0, backward=True)
        packets = demux(container, *streams)
        held: list = []  # packets since the best keyframe so far
        best = None
        for packet in packets:
            shown = float(packet.pts * packet.stream.time_base) if packet.pts is not None else None
            if packet.stream is video and packet.is_keyframe and shown is not None:
                if shown <= start + 1e-3 or (best is None and position == 0.0):
                    best, held = shown, [packet]
                    continue
                if best is None:
                    break  # the first keyframe is already after start: step back
                return itertools.chain(held, [packet], packets), best
            if best is not None:
                held.append(packet)
                if packet.stream is video and shown is not None and shown > start:
                    return itertools.chain(held, packets), best  # start lies inside this GOP
        else:
            if best is not None:
                return iter(held), best
            if position == 0.0:
                break  # read from the start, and none
    raise Unprocessable("the video has no keyframe to start a clip at")


def _walk_back(target: float) -> Iterator[float]:
    """Where to seek for `target` (seconds) when a demuxer may land after what was asked: the target, then 1, 2,
    4, ... s before it, and last the start (0)."""
    back = 0.0
    while True:
        position = max(target - back, 0.0)
        yield position
        if position == 0.0:
            return
        back = max(back * 2, 1.0)
