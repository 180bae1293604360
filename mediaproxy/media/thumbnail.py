"""A thumbnail, step by step: decode (shrink-on-load) → orient → plan (pre-crop, mode) → resize → paint → encode.

`render_image` takes the original's bytes; `render_pictures` takes already decoded pictures (video frames, one or
a strip), so both enter the same pipeline; an animated source kept animated sends every frame through it. Pure
functions: no HTTP, no caches; they take the picture asked for (`ThumbnailOptions`), never a request. Run them on
the work pool.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import BinaryIO

from PIL import Image

from ..errors import BadRequest
from ..options import DEFAULT_QUALITY, STRIP_LIMIT, ThumbnailOptions
from . import animation, paint
from .decode import (JPEG_FORMATS, MAX_KEPT_ICC_BYTES, Decoded, decode, decode_at, metadata_of, open_image, reduced,
                     scale_on_load)
from .encode import ANIMATES, CONTENT_TYPES, KEEPS_ALPHA, encode, encode_animation
from .geometry import Plan, plan_thumbnail
from .probe import MediaInfo
from .video import DEFAULT_MAX_PIXELS, grab_frames


@dataclass(frozen=True)
class Rendered:
    body: bytes
    content_type: str
    width: int
    height: int
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds by step, for Server-Timing
    frames: int = 1


@dataclass(frozen=True)
class RenderSettings:
    quality: int = DEFAULT_QUALITY  # the URL's, else the partner's, else DEFAULT_QUALITY
    max_source_pixels: int = DEFAULT_MAX_PIXELS
    max_output_pixels: int = 100_000_000
    animation_pixels: int = 0  # > 0: animated sources stay animated in gif/webp within this budget (see animation)


def plan_for(options: ThumbnailOptions, source_size: tuple[int, int], settings: RenderSettings) -> Plan:
    return plan_thumbnail(source_size, options.width, options.height, options.mode, options.region,
                          options.rel_width, options.rel_height, settings.max_output_pixels)


@functools.lru_cache(maxsize=4096)  # asked on the event loop for every image request; sizes repeat
def decode_scale(options: ThumbnailOptions, source: MediaInfo, settings: RenderSettings) -> int:
    """Scale on load, from the probed header alone: the JPEG scale (of decode.JPEG_SCALES) `render_image` decodes
    `source` at for these options; 1 for other formats. A decoded picture kept for other sizes is known by it."""
    if source.container not in JPEG_FORMATS:
        return 1
    return scale_on_load((source.width, source.height), source.orientation,
                         lambda size: plan_for(options, size, settings))[0]


def render_image(options: ThumbnailOptions, data: bytes, settings: RenderSettings) -> Rendered:
    """The thumbnail of an image (or of an animation, kept animated where settings.animation_pixels allows), decoded
    at the scale it needs (`decode_scale`)."""
    if settings.animation_pixels and options.format in ANIMATES:
        animated = _render_animation(options, data, settings)
        if animated is not None:
            return animated
    clock = _Clock()
    decoded, plan = decode(data, lambda size: plan_for(options, size, settings), settings.max_source_pixels)
    clock.lap("decode")
    return _render_decoded(options, decoded, plan, settings, clock)


def decode_and_render(options: ThumbnailOptions, data: bytes, scale: int,
                      settings: RenderSettings) -> tuple[Decoded, Rendered]:
    """The original decoded at 1/scale (see decode_scale), and the thumbnail: the caller may keep the decoded
    picture, so that other sizes of a hot original skip decoding (`render_decoded`) with byte-identical results."""
    clock = _Clock()
    decoded = decode_at(data, scale, settings.max_source_pixels)
    clock.lap("decode")
    return decoded, render_decoded(options, decoded, settings, clock)


def derive_and_render(options: ThumbnailOptions, finer: Decoded, factor: int,
                      settings: RenderSettings) -> tuple[Decoded, Rendered]:
    """A kept picture with `factor` times the detail this size needs, reduced to the scale it needs (see
    decode.reduced), and the thumbnail from that: not byte for byte a fresh decode's, within the bound SPEC §2
    states. The caller may keep the reduced picture too."""
    return _derive_and_render(options, finer, factor, settings, _Clock())


def decode_finer_and_render(options: ThumbnailOptions, data: bytes, scale: int, needed: int,
                            settings: RenderSettings) -> tuple[Decoded, Decoded, Rendered]:
    """The original decoded at 1/scale, finer than this size needs (1/needed), to be kept for other sizes; the
    picture reduced to 1/needed; and the thumbnail from that, as derive_and_render gives it."""
    clock = _Clock()
    decoded = decode_at(data, scale, settings.max_source_pixels)
    clock.lap("decode")
    derived, rendered = _derive_and_render(options, decoded, needed // scale, settings, clock)
    return decoded, derived, rendered


def _derive_and_render(options: ThumbnailOptions, finer: Decoded, factor: int, settings: RenderSettings,
                       clock: _Clock) -> tuple[Decoded, Rendered]:
    derived = reduced(finer, factor)
    clock.lap("derive")
    return derived, render_decoded(options, derived, settings, clock)


def render_decoded(options: ThumbnailOptions, decoded: Decoded, settings: RenderSettings,
                   clock: _Clock | None = None) -> Rendered:
    """A thumbnail from a picture decoded before (it is only read, so threads may share it)."""
    return _render_decoded(options, decoded, plan_for(options, decoded.source_size, settings), settings,
                           clock or _Clock())


def _render_decoded(options: ThumbnailOptions, decoded: Decoded, plan: Plan, settings: RenderSettings,
                    clock: _Clock) -> Rendered:
    picture = _paint(options, paint.resize(paint.normalise_mode(decoded.image), plan, decoded.shrink), plan)
    if picture is decoded.image:
        picture = picture.copy()  # encoding sets attributes on the image: never on one shared between threads
    clock.lap("resize")
    return _encode(options, picture, settings, decoded.info, clock)


def _render_animation(options: ThumbnailOptions, data: bytes, settings: RenderSettings) -> Rendered | None:
    """Every frame resized along one plan, painted and encoded with its timing and the loop count; None (render a
    still) when the source has one frame or animating it would cost more than the budget."""
    clock = _Clock()
    image = open_image(data, settings.max_source_pixels)
    source_size = animation.upright_size(image)
    plan = plan_for(options, source_size, settings)
    if not animation.within_budget(animation.frame_count(image), source_size, plan.output_size,
                                   settings.animation_pixels):
        return None
    loop = animation.loop_count(image)
    frames = animation.frames(image)  # before the metadata, which drops the orientation it reads
    metadata = metadata_of(image)
    if len(metadata.get("icc_profile", b"")) > MAX_KEPT_ICC_BYTES:
        del metadata["icc_profile"]  # applied to the frames instead
    pictures, durations = [], []
    for frame in frames:
        picture = paint.resize(paint.normalise_mode(frame.image), plan, (1.0, 1.0))
        pictures.append(_paint(options, picture, plan))
        durations.append(frame.duration)
    clock.lap("resize")
    body = encode_animation(pictures, durations, loop, options.format, settings.quality, density=options.density,
                            metadata=None if options.strip else metadata)
    clock.lap("encode")
    width, height = pictures[0].size
    return Rendered(body, CONTENT_TYPES[options.format], width, height, clock.laps, frames=len(pictures))


def render_video(options: ThumbnailOptions, source: BinaryIO, times: list[float], display_size: tuple[int, int],
                 settings: RenderSettings, keyframes: tuple[float, ...] | None = None) -> Rendered:
    """Frames at `times` (one, or a strip), grabbed already shrunk to the detail the plan needs."""
    clock = _Clock()
    plan = plan_for(options, display_size, settings)
    width, height = plan.output_size
    if len(times) > 1 and width * len(times) >= STRIP_LIMIT:
        raise BadRequest(f"vid_slices: a strip of {len(times)} frames {width} wide is too large (limit {STRIP_LIMIT})")
    frames = grab_frames(source, times, min(1.0, plan.scale), keyframes, settings.max_source_pixels)
    clock.lap("decode")
    return render_pictures(options, frames, display_size, settings, clock)


def render_pictures(options: ThumbnailOptions, pictures: list[Image.Image], source_size: tuple[int, int],
                    settings: RenderSettings, clock: _Clock | None = None) -> Rendered:
    """Pictures already decoded and upright (video frames, possibly shrunk from `source_size`) through the same
    steps; several pictures (a strip) are laid side by side, the first on the left."""
    plan = plan_for(options, source_size, settings)
    tiles = [_paint(options, paint.resize(paint.normalise_mode(picture), plan,
                                          (picture.width / source_size[0], picture.height / source_size[1])), plan)
             for picture in pictures]
    clock = clock or _Clock()
    if len(tiles) == 1:
        clock.lap("resize")
        return _encode(options, tiles[0], settings, {}, clock)
    strip = Image.new(tiles[0].mode, (sum(tile.width for tile in tiles), max(tile.height for tile in tiles)))
    left = 0
    for tile in tiles:
        strip.paste(tile, (left, 0))
        left += tile.width
    clock.lap("resize")
    return _encode(options, strip, settings, {}, clock)


def _paint(options: ThumbnailOptions, picture: Image.Image, plan: Plan) -> Image.Image:
    if options.format not in KEEPS_ALPHA:
        picture = paint.flatten(picture, options.bgcolor)
    if plan.canvas is not None:
        picture = paint.pad(picture, plan.canvas, options.bgcolor)
    return picture


def _encode(options: ThumbnailOptions, picture: Image.Image, settings: RenderSettings, metadata: dict,
            clock: _Clock) -> Rendered:
    body = encode(picture, options.format, settings.quality, density=options.density,
                  metadata=None if options.strip else metadata)
    clock.lap("encode")
    return Rendered(body, CONTENT_TYPES[options.format], picture.width, picture.height, clock.laps)


class _Clock:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = (now - self._last) * 1000
        self._last = now
