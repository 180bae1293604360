"""What a thumbnail asks for, as values: the vocabulary the URL grammar (urls.py) reads into and the media pipeline
(media/) renders from. Nothing here knows URLs, HTTP, files or pixels (as imgproxy's options/ beside its parser).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

MAX_DIMENSION = 10_000  # pixels along a side of a thumbnail, asked for or upscaled to
STRIP_LIMIT = 65_500  # pixels along a strip of video frames (JPEG's limit is 65535)
DEFAULT_QUALITY = 75  # where neither the URL nor the partner's configuration gives one


class ResizeMode(IntEnum):
    FIT = 1  # fit inside the box, keep aspect
    PAD = 2  # fit, then centre on an exact box of bgcolor
    CROP_CENTER = 3  # crop to the box's aspect around the centre, then scale to the box
    CROP_TOP = 4  # as CROP_CENTER, anchored at the top
    STRETCH = 5  # scale to the box, ignoring aspect


class OutputFormat(StrEnum):
    JPG = "jpg"
    PNG = "png"
    GIF = "gif"
    WEBP = "webp"
    AVIF = "avif"
    AUTO = "auto"  # negotiated from the client's Accept by the service; never reaches the encoder


@dataclass(frozen=True, slots=True)
class Region:
    """A region of the source in source pixels; 0 width/height = to the edge."""

    x: int = 0
    y: int = 0
    width: int = 0
    height: int = 0


@dataclass(frozen=True, slots=True)
class ThumbnailOptions:
    """The picture asked for, all that media needs to render it: its size and mode, the part of the source it shows,
    the colour it is painted on, and how it is written. Which entry, file or video frames it comes from is not here,
    nor the quality, which media is given resolved (`RenderSettings`)."""

    width: int  # 0 = follows the other dimension (both 0: the source size)
    height: int
    mode: ResizeMode = ResizeMode.FIT
    bgcolor: int = 0xFFFFFF
    region: Region = Region()
    rel_width: int | None = None  # region is given in a frame of this size
    rel_height: int | None = None
    density: int | None = None  # DPI written into the output
    strip: bool = False  # metadata left out
    format: OutputFormat = OutputFormat.JPG
