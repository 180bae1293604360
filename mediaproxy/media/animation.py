"""Animated GIF/WebP sources, kept animated (`[thumbnail] keep_animation`, SPEC §2): their frames, upright and
whole (Pillow composites each frame onto the ones before it), how long each is shown, and the loop count.

The work is bounded before any frame is decoded: frames × the larger of a source frame and an output frame must
stay within a pixel budget, else the caller renders the first frame only, as for a still.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image

from .decode import MAX_KEPT_ICC_BYTES, TRANSPOSES, load_frame, orientation_of, oriented_size, to_srgb


ANIMATED_SOURCES = frozenset({"GIF", "WEBP"})  # Pillow formats; not MPO's or HEIF's several pictures


@dataclass(frozen=True)
class Frame:
    image: Image.Image  # upright, the whole canvas, the caller's own (the next frame does not change it)
    duration: int  # milliseconds


def frame_count(image: Image.Image) -> int:
    """Frames of an animation (1 for a still, and for formats whose several pictures are no animation)."""
    return getattr(image, "n_frames", 1) if image.format in ANIMATED_SOURCES else 1


def within_budget(frames: int, source_size: tuple[int, int], output_size: tuple[int, int], budget: int) -> bool:
    """Whether animating costs at most `budget` pixels of decoding and resizing: frames × the larger frame."""
    per_frame = max(source_size[0] * source_size[1], output_size[0] * output_size[1])
    return frames > 1 and frames * per_frame <= budget


def upright_size(image: Image.Image) -> tuple[int, int]:
    return oriented_size(image.size, orientation_of(image))


def frames(image: Image.Image) -> Iterator[Frame]:
    """Every frame of an opened animated image, upright (an animated WebP may carry an EXIF orientation). An ICC
    profile too large to keep in an output is applied to each frame, as for a still."""
    transpose = TRANSPOSES.get(orientation_of(image))  # read now: reading the metadata drops the orientation
    profile = image.info.get("icc_profile")
    return _frames(image, transpose, profile if profile and len(profile) > MAX_KEPT_ICC_BYTES else None)


def _frames(image: Image.Image, transpose: Image.Transpose | None, applied: bytes | None) -> Iterator[Frame]:
    for index in range(frame_count(image)):
        load_frame(image, index)
        duration = int(image.info.get("duration") or 0)
        picture = image.copy() if transpose is None else image.transpose(transpose)
        yield Frame(picture if applied is None else to_srgb(picture, applied), duration)


def loop_count(image: Image.Image) -> int | None:
    """0 = forever; None = the source plays once (a GIF without a loop extension)."""
    loop = image.info.get("loop")
    return loop if isinstance(loop, int) and loop >= 0 else None
