"""A thumbnail, step by step: decode (shrink-on-load) → orient → plan (pre-crop, mode) → resize → paint → encode.

`render_image` takes the original's bytes; `render_picture` takes an already decoded picture (a video frame), so
both enter the same pipeline. Pure functions: no HTTP, no caches; run them on the work pool.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from ..urls import ThumbnailRequest
from . import paint
from .decode import decode
from .encode import CONTENT_TYPES, KEEPS_ALPHA, encode
from .geometry import Plan, plan_thumbnail


@dataclass(frozen=True)
class Rendered:
    body: bytes
    content_type: str
    width: int
    height: int


@dataclass(frozen=True)
class RenderSettings:
    quality: int  # the request's, else the partner's, else 75
    max_source_pixels: int = 100_000_000
    max_output_pixels: int = 100_000_000


def plan_for(request: ThumbnailRequest, source_size: tuple[int, int], settings: RenderSettings) -> Plan:
    return plan_thumbnail(source_size, request.width, request.height, request.mode, request.region,
                          request.rel_width, request.rel_height, settings.max_output_pixels)


def render_image(request: ThumbnailRequest, data: bytes, settings: RenderSettings) -> Rendered:
    decoded, plan = decode(data, lambda size: plan_for(request, size, settings), settings.max_source_pixels)
    picture = paint.resize(paint.normalise_mode(decoded.image), plan, decoded.shrink)
    return _finish(request, picture, plan, settings, decoded.info)


def render_picture(request: ThumbnailRequest, picture: Image.Image, settings: RenderSettings) -> Rendered:
    """A picture already decoded and oriented (e.g. a video frame) through the same steps."""
    plan = plan_for(request, picture.size, settings)
    picture = paint.resize(paint.normalise_mode(picture), plan, (1.0, 1.0))
    return _finish(request, picture, plan, settings, {})


def _finish(request: ThumbnailRequest, picture: Image.Image, plan: Plan, settings: RenderSettings,
            metadata: dict) -> Rendered:
    keeps_alpha = request.format in KEEPS_ALPHA
    if not keeps_alpha:
        picture = paint.flatten(picture, request.bgcolor)
    if plan.canvas is not None:
        picture = paint.pad(picture, plan.canvas, request.bgcolor)
    body = encode(picture, request.format, settings.quality, density=request.density,
                  metadata=None if request.strip else metadata)
    return Rendered(body, CONTENT_TYPES[request.format], picture.width, picture.height)
