"""What a file really is, from its content (Pillow, then PyAV), never from its name."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

import av
from PIL import Image

from .decode import JPEG_FORMATS, orientation_of
from .video import DEFAULT_MAX_PIXELS, analysis_options, coded_size


class MediaKind(StrEnum):
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"
    OTHER = "other"  # not media that Pillow or PyAV can read


@dataclass(frozen=True)
class MediaInfo:
    kind: MediaKind
    mime_type: str
    extension: str  # the canonical extension of the real content: "jpg", "mp4", "flv", "m4a"
    container: str = ""  # Pillow format ("JPEG") or FFmpeg demuxer name ("flv")
    width: int = 0
    height: int = 0
    duration: float = 0.0  # seconds; 0 for stills
    frames: int = 1  # frames of an image (animated GIF/WebP > 1)
    orientation: int = 1  # JPEG EXIF orientation (read with the header; other formats orient while decoding)
    alpha: bool = False  # an image with an alpha channel or a transparent colour


OTHER = MediaInfo(MediaKind.OTHER, "application/octet-stream", "")

# Pillow format → (MIME type, extension); formats not listed (e.g. Pillow's MPEG sniffer) are left to PyAV.
# MPO is a JPEG followed by more pictures (stereo cameras, phones): JPEG readers show its first.
_IMAGE_FORMATS = {
    "JPEG": ("image/jpeg", "jpg"), "MPO": ("image/jpeg", "jpg"), "PNG": ("image/png", "png"),
    "GIF": ("image/gif", "gif"), "WEBP": ("image/webp", "webp"), "AVIF": ("image/avif", "avif"),
    "TIFF": ("image/tiff", "tif"),
    "BMP": ("image/bmp", "bmp"), "ICO": ("image/x-icon", "ico"), "PPM": ("image/x-portable-anymap", "ppm"),
    "TGA": ("image/x-tga", "tga"), "JPEG2000": ("image/jp2", "jp2"), "HEIF": ("image/heif", "heic"),
}
_MP4_FAMILY = "mov,mp4,m4a,3gp,3g2,mj2"


def probe(source: Path | BinaryIO, name_hint: str = "", max_pixels: int = DEFAULT_MAX_PIXELS) -> MediaInfo:
    """Identify a file (a path, or a seekable binary file object). `name_hint` (its name at the origin) only picks
    among equivalent extensions (mov/mp4). FFmpeg's stream analysis decodes no video frame over `max_pixels` (see
    video.analysis_options)."""
    if isinstance(source, Path):
        with open(source, "rb") as opened:
            return probe(opened, name_hint, max_pixels)
    image = _probe_image(source)
    if image is not None:
        return image
    source.seek(0)
    return _probe_av(source, name_hint.rpartition(".")[2].lower(), max_pixels) or OTHER


def _probe_image(source: BinaryIO) -> MediaInfo | None:
    try:
        with Image.open(source) as image:
            known = _IMAGE_FORMATS.get(image.format or "")
            if known is None:
                return None
            orientation = orientation_of(image) if image.format in JPEG_FORMATS else 1
            return MediaInfo(MediaKind.IMAGE, known[0], known[1], image.format, image.width, image.height,
                             frames=getattr(image, "n_frames", 1), orientation=orientation, alpha=has_alpha(image))
    except Exception:  # noqa: BLE001 - Pillow raises many types for "not an image I read"
        return None


def has_alpha(image: Image.Image) -> bool:
    """From the header: whether the picture may have transparent pixels."""
    return "A" in image.getbands() or image.mode in ("PA", "La", "RGBa") or "transparency" in image.info


def _probe_av(source: BinaryIO, hinted_extension: str, max_pixels: int) -> MediaInfo | None:
    try:
        container = av.open(source, metadata_errors="ignore", options=analysis_options(max_pixels))
    except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError):
        return None
    with container:
        if container.format.name == "image2" or container.format.name.endswith("_pipe"):
            return None  # a still image FFmpeg reads but Pillow could not: a damaged picture, not a video
        # streams without a codec context are of codecs FFmpeg cannot decode: nothing to show or clip
        videos = [s for s in container.streams.video
                  if s.codec_context is not None and not s.disposition & av.stream.Disposition.attached_pic]
        audios = [s for s in container.streams.audio if s.codec_context is not None]
        if not videos and not audios:
            return None
        kind = MediaKind.VIDEO if videos else MediaKind.AUDIO
        duration = container.duration / av.time_base if container.duration else 0.0
        if not duration:
            stream = (videos or audios)[0]
            if stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
        mime, extension = _container_type(container.format.name, kind, hinted_extension, videos, audios)
        width, height = coded_size(videos[0]) if videos else (0, 0)  # what decoding a frame would allocate
        return MediaInfo(kind, mime, extension, container.format.name, width, height, duration, frames=0)


def _container_type(format_name: str, kind: MediaKind, hinted: str, videos, audios) -> tuple[str, str]:
    video = kind is MediaKind.VIDEO
    if format_name == _MP4_FAMILY:
        if video:
            return ("video/quicktime", "mov") if hinted == "mov" else ("video/mp4", "m4v" if hinted == "m4v" else "mp4")
        return "audio/mp4", "m4a"
    if format_name == "matroska,webm":
        codecs = {s.codec_context.name for s in [*videos, *audios]}
        if codecs <= {"vp8", "vp9", "av1", "opus", "vorbis"}:
            return ("video/webm", "webm") if video else ("audio/webm", "webm")
        return ("video/x-matroska", "mkv") if video else ("audio/x-matroska", "mka")
    simple = {
        "flv": ("video/x-flv", "flv"), "mp3": ("audio/mpeg", "mp3"), "aac": ("audio/aac", "aac"),
        "wav": ("audio/wav", "wav"), "avi": ("video/x-msvideo", "avi"), "mpegts": ("video/mp2t", "ts"),
        "flac": ("audio/flac", "flac"), "asf": ("video/x-ms-asf", "asf"),
    }
    if format_name in simple:
        return simple[format_name]
    if format_name == "ogg":
        return ("video/ogg", "ogv") if video else ("audio/ogg", "ogg")
    return "application/octet-stream", hinted or "bin"
