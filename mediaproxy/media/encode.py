"""Encode the finished picture: jpg, png, gif, webp, avif with quality, DPI and (unless stripped) metadata."""

from __future__ import annotations

import io

from PIL import Image

from ..urls import OutputFormat

CONTENT_TYPES = {
    OutputFormat.JPG: "image/jpeg",
    OutputFormat.PNG: "image/png",
    OutputFormat.GIF: "image/gif",
    OutputFormat.WEBP: "image/webp",
    OutputFormat.AVIF: "image/avif",
}
KEEPS_ALPHA = frozenset({OutputFormat.PNG, OutputFormat.WEBP, OutputFormat.AVIF})
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
    elif output is OutputFormat.GIF:
        image = image.quantize(256, method=Image.Quantize.FASTOCTREE)  # 70x faster than median cut
    buffer = io.BytesIO()
    image.save(buffer, _PILLOW_FORMATS[output], **options)
    return buffer.getvalue()
