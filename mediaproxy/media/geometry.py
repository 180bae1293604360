"""Where a thumbnail comes from in the source and how big it ends up: pure arithmetic, no pixels (SPEC §2).

`plan_thumbnail` turns the source size and the options' dimensions, mode and source region into a `Plan`: the
box of the source to use (fractional source pixels), the size it is scaled to, and for type 2 the canvas it is
centred on. Decoding, resizing and painting then follow the plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..options import MAX_DIMENSION, Region, ResizeMode


@dataclass(frozen=True)
class Plan:
    box: tuple[float, float, float, float]  # left, top, right, bottom in source pixels
    size: tuple[int, int]  # the box is scaled to this
    canvas: tuple[int, int] | None = None  # type 2: centred on an exact canvas of bgcolor

    @property
    def output_size(self) -> tuple[int, int]:
        return self.canvas or self.size

    @property
    def scale(self) -> float:
        """The largest factor between source and output pixels (how much detail the decoder must deliver)."""
        left, top, right, bottom = self.box
        return max(self.size[0] / (right - left), self.size[1] / (bottom - top))

    def scaled_box(self, factor_x: float, factor_y: float) -> tuple[float, float, float, float]:
        """The box in an image decoded at a reduced scale (shrink-on-load)."""
        left, top, right, bottom = self.box
        return left * factor_x, top * factor_y, right * factor_x, bottom * factor_y


def plan_thumbnail(source_size: tuple[int, int], width: int, height: int, mode: ResizeMode,
                   region: Region = Region(), rel_width: int | None = None, rel_height: int | None = None,
                   max_pixels: int = 100_000_000) -> Plan:
    """width/height 0 = not given (the other follows the aspect ratio; both 0 = the source size)."""
    source_width, source_height = source_size
    x, y, region_width, region_height = region.x, region.y, region.width, region.height
    if rel_width:
        factor = source_width / rel_width
        x, region_width = x * factor, region_width * factor
    if rel_height:
        factor = source_height / rel_height
        y, region_height = y * factor, region_height * factor

    if mode in (ResizeMode.CROP_CENTER, ResizeMode.CROP_TOP) and (width or height):
        plan = _crop_to_fill(source_size, width or height, height or width, mode, region_width, region_height)
    else:
        plan = _fit(source_size, width, height, mode, _pre_crop(source_size, x, y, region_width, region_height))
    return _capped(plan, max_pixels)


def _pre_crop(source_size: tuple[int, int], x: float, y: float, width: float,
              height: float) -> tuple[float, float, float, float]:
    """The source region of types 1, 2 and 5, clamped inside the source (0 width/height = to the edge)."""
    source_width, source_height = source_size
    left = min(x, source_width - 1)
    top = min(y, source_height - 1)
    right = source_width if width <= 0 else min(left + width, source_width)
    bottom = source_height if height <= 0 else min(top + height, source_height)
    return left, top, right, bottom


def _fit(source_size: tuple[int, int], width: int, height: int, mode: ResizeMode,
         box: tuple[float, float, float, float]) -> Plan:
    left, top, right, bottom = box
    box_width, box_height = right - left, bottom - top
    if not width and not height:
        return Plan(box, (_whole(box_width), _whole(box_height)))
    if mode is ResizeMode.STRETCH and width and height:
        return Plan(box, (width, height))
    if width and height:
        factor = min(width / box_width, height / box_height)
    elif width:
        factor = width / box_width
    else:
        factor = height / box_height
    size = (_whole(box_width * factor), _whole(box_height * factor))
    if mode is ResizeMode.PAD and width and height:
        return Plan(box, (min(size[0], width), min(size[1], height)), canvas=(width, height))
    return Plan(box, size)


def _crop_to_fill(source_size: tuple[int, int], width: int, height: int, mode: ResizeMode, region_width: float,
                  region_height: float) -> Plan:
    """Types 3 and 4: the largest box of the target's aspect ratio, centred (or anchored), scaled to width×height.

    A given src_w replaces the source width and anchors the box left; a given src_h replaces the source height and
    anchors it at the top; type 4 always anchors at the top.
    """
    source_width, source_height = source_size
    available_width = min(region_width, source_width) if region_width > 0 else source_width
    available_height = min(region_height, source_height) if region_height > 0 else source_height
    target_aspect = width / height
    if available_width / available_height > target_aspect:
        crop_width, crop_height = available_height * target_aspect, available_height
    else:
        crop_width, crop_height = available_width, available_width / target_aspect
    left = 0.0 if region_width > 0 else (source_width - crop_width) / 2
    anchored_top = region_height > 0 or mode is ResizeMode.CROP_TOP
    top = 0.0 if anchored_top else (source_height - crop_height) / 2
    return Plan((left, top, left + crop_width, top + crop_height), (width, height))


def _capped(plan: Plan, max_pixels: int) -> Plan:
    """Upscaling is allowed up to MAX_DIMENSION per side and max_pixels in all; past that the output shrinks."""
    out_width, out_height = plan.output_size
    factor = min(1.0, MAX_DIMENSION / max(out_width, out_height), math.sqrt(max_pixels / (out_width * out_height)))
    if factor >= 1.0:
        return plan
    size = (_floor(plan.size[0] * factor), _floor(plan.size[1] * factor))  # down: never past the cap
    canvas = (_floor(plan.canvas[0] * factor), _floor(plan.canvas[1] * factor)) if plan.canvas else None
    return Plan(plan.box, size, canvas)


def _whole(value: float) -> int:
    return max(1, round(value))


def _floor(value: float) -> int:
    return max(1, math.floor(value))
