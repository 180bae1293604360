"""Encode the finished picture: jpg, png, gif, webp, avif with quality, DPI and (unless stripped) metadata; and
animations (gif, webp) frame by frame."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Sequence
from typing import IO

from PIL import Image

from ..options import OutputFormat

CONTENT_TYPES = {
    OutputFormat.JPG: "image/jpeg",
    OutputFormat.PNG: "image/png",
    OutputFormat.GIF: "image/gif",
    OutputFormat.WEBP: "image/webp",
    OutputFormat.AVIF: "image/avif",
}
# The quality setting that keeps about the fidelity JPEG has at a given one: libavif reaches JPEG's PSNR at ~0.77×
# the number (at ~40% fewer bytes; at the same number AVIF is bigger than JPEG), libwebp at the same number.
# Measured on photo thumbnails 320–960 wide (bench/run.py --only formats).
_JPEG_EQUIVALENT = {"avif": 0.77}


def equivalent_quality(output: OutputFormat, jpeg_quality: int) -> int:
    """The quality setting for `output` that gives about the fidelity of JPEG at `jpeg_quality` (for a format
    negotiated from Accept: the quality asked was meant for JPEG)."""
    return max(1, min(100, round(jpeg_quality * _JPEG_EQUIVALENT.get(output.value, 1.0))))


KEEPS_ALPHA = frozenset({OutputFormat.PNG, OutputFormat.WEBP, OutputFormat.AVIF})
ANIMATES = frozenset({OutputFormat.GIF, OutputFormat.WEBP})
_PILLOW_FORMATS = {OutputFormat.JPG: "JPEG", OutputFormat.PNG: "PNG", OutputFormat.GIF: "GIF",
                   OutputFormat.WEBP: "WEBP", OutputFormat.AVIF: "AVIF"}
_METADATA_SUPPORT = {  # which of exif / icc_profile / xmp each writer takes
    OutputFormat.JPG: {"exif", "icc_profile", "xmp"},
    OutputFormat.PNG: {"exif", "icc_profile"},
    OutputFormat.GIF: set(),
    OutputFormat.WEBP: {"exif", "icc_profile", "xmp"},
    OutputFormat.AVIF: {"exif", "icc_profile", "xmp"},
}


def encode(image: Image.Image, output: OutputFormat, quality: int, *, density: int | None = None,
           metadata: dict | None = None) -> bytes:
    """`image` is RGB, or RGBA for formats in KEEPS_ALPHA. `metadata` None = stripped."""
    image.info = {}  # writers fall back to what the source carried (ICC, comment, dpi): only `metadata` goes out
    options = _options(output, quality, density, metadata)
    if output is OutputFormat.GIF:
        image = _palette(image)
    return _saved(lambda file: image.save(file, _PILLOW_FORMATS[output], **options))


def encode_animation(frames: Sequence[Image.Image], durations: Sequence[int], loop: int | None,
                     output: OutputFormat, quality: int, *, density: int | None = None,
                     metadata: dict | None = None) -> bytes:
    """Frames of one size (RGB, or RGBA for webp) shown for `durations` milliseconds each; `loop` is the loop count
    (0 = forever; None = play once, a GIF without a loop extension)."""
    if output not in ANIMATES:
        raise ValueError(f"{output.value} is not an animated format")
    options = _options(output, quality, density, metadata)
    if output is OutputFormat.GIF:
        frames = [_palette(frame) for frame in frames]  # each frame gets its own (local) palette
        if loop is not None:
            options["loop"] = loop
    else:
        options["loop"] = 1 if loop is None else loop
        if any(frame.mode == "RGBA" for frame in frames):
            # libwebp crops frames to what changes and leaves the file's alpha flag unset when the only transparent
            # pixels are ones no frame covers (a sticker's background): readers then show them opaque black.
            # Whole frames (every one a key frame) keep the flag.
            options["kmax"] = 1
    for frame in frames:
        frame.info = {}
    return _saved(lambda file: frames[0].save(file, _PILLOW_FORMATS[output], save_all=True,
                                              append_images=list(frames[1:]), duration=list(durations), **options))


_scratch = threading.local()  # each thread's memory file
_SCRATCH_KEPT_BYTES = 4 << 20  # a memory file that held more is emptied after use


def _saved(save: Callable[[IO[bytes]], None]) -> bytes:
    """What `save` writes, through this thread's memory file (memfd): Pillow's JPEG, PNG and GIF writers compress
    into a Python buffer holding the GIL, and into a real file descriptor without it — so the event loop and the
    other work threads of the process run while a picture is encoded. Plain BytesIO where there is no memfd."""
    file = getattr(_scratch, "file", None)
    if file is None:
        if not hasattr(os, "memfd_create"):
            buffer = io.BytesIO()
            save(buffer)
            return buffer.getvalue()
        file = _scratch.file = open(os.memfd_create("mediaproxy-encode", os.MFD_CLOEXEC), "w+b", buffering=0)
    file.seek(0)
    try:
        save(file)
        return os.pread(file.fileno(), file.tell(), 0)
    finally:
        if file.tell() > _SCRATCH_KEPT_BYTES:
            file.truncate(0)


def _options(output: OutputFormat, quality: int, density: int | None, metadata: dict | None) -> dict:
    options: dict = {}
    if metadata:
        options.update({key: value for key, value in metadata.items() if key in _METADATA_SUPPORT[output]})
    if density:
        options["dpi"] = (density, density)
    if output is OutputFormat.JPG:
        options.update(quality=quality)
    elif output is OutputFormat.WEBP:
        options.update(quality=quality, method=4)
    elif output is OutputFormat.AVIF:
        options.update(quality=quality, speed=8)
    elif output is OutputFormat.PNG:
        options.update(compress_level=6)
    return options


def _palette(image: Image.Image) -> Image.Image:
    return image.quantize(256, method=Image.Quantize.FASTOCTREE)  # 70x faster than median cut
