"""The thumbnail plan, pure arithmetic (SPEC §2 "Dimensions" and "Modes"): which box of the source is used, the
size it is scaled to and, for type 2, the canvas it is centred on."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaproxy.media.geometry import Plan, plan_thumbnail
from mediaproxy.options import MAX_DIMENSION, Region, ResizeMode

FIT, PAD, CROP_CENTER, CROP_TOP, STRETCH = (ResizeMode.FIT, ResizeMode.PAD, ResizeMode.CROP_CENTER,
                                            ResizeMode.CROP_TOP, ResizeMode.STRETCH)


def whole(source: tuple[int, int]) -> tuple[float, float, float, float]:
    return (0, 0, source[0], source[1])


def assert_box(actual, expected) -> None:
    assert actual == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Type 1: fit inside the box, keep the aspect ratio
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source, width, height, size", [
    pytest.param((1000, 500), 200, 200, (200, 100), id="landscape-in-square"),
    pytest.param((500, 1000), 200, 200, (100, 200), id="portrait-in-square"),
    pytest.param((800, 800), 200, 100, (100, 100), id="square-in-wide"),
    pytest.param((800, 800), 100, 200, (100, 100), id="square-in-tall"),
    pytest.param((1000, 500), 100, 400, (100, 50), id="landscape-in-tall"),
    pytest.param((1000, 500), 300, 100, (200, 100), id="landscape-in-wider"),
    pytest.param((1000, 667), 100, 100, (100, 67), id="rounding"),
    pytest.param((1000, 500), 400, 0, (400, 200), id="width-only"),
    pytest.param((1000, 500), 0, 100, (200, 100), id="height-only"),
    pytest.param((500, 1000), 50, 0, (50, 100), id="portrait-width-only"),
    pytest.param((100, 50), 400, 400, (400, 200), id="upscale-both"),
    pytest.param((100, 50), 1000, 0, (1000, 500), id="upscale-width-only"),
    pytest.param((100, 50), 0, 300, (600, 300), id="upscale-height-only"),
    pytest.param((640, 480), 120, 90, (120, 90), id="default-box-same-aspect"),
    pytest.param((3, 1000), 0, 10, (1, 10), id="at-least-one-pixel"),
])
def test_type1_fits_inside_the_box(source, width, height, size):
    plan = plan_thumbnail(source, width, height, FIT)
    assert plan.size == size
    assert plan.canvas is None
    assert plan.output_size == size
    assert_box(plan.box, whole(source))


@pytest.mark.parametrize("source", [(1000, 500), (500, 1000), (800, 800), (37, 1013)])
@pytest.mark.parametrize("width, height", [(200, 200), (150, 90), (90, 150), (1000, 1000)])
def test_type1_never_exceeds_the_box_and_touches_one_side(source, width, height):
    plan = plan_thumbnail(source, width, height, FIT)
    assert plan.size[0] <= width and plan.size[1] <= height
    assert plan.size[0] == width or plan.size[1] == height
    factor = min(width / source[0], height / source[1])  # the aspect ratio is kept, to the nearest pixel
    assert abs(plan.size[0] - source[0] * factor) <= 0.5 + 1e-9
    assert abs(plan.size[1] - source[1] * factor) <= 0.5 + 1e-9


@pytest.mark.parametrize("mode", list(ResizeMode))
@pytest.mark.parametrize("source", [(1000, 500), (500, 1000), (1, 1), (4321, 1234)])
def test_no_dimensions_is_the_source_size(mode, source):
    plan = plan_thumbnail(source, 0, 0, mode)
    assert plan.size == source
    assert plan.canvas is None
    assert_box(plan.box, whole(source))
    assert plan.scale == 1.0


# ---------------------------------------------------------------------------------------------------------------
# Type 2: fit, then centre on an exact canvas
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source, width, height, size", [
    pytest.param((1000, 500), 200, 200, (200, 100), id="landscape-pads-top-bottom"),
    pytest.param((500, 1000), 200, 200, (100, 200), id="portrait-pads-left-right"),
    pytest.param((400, 300), 400, 300, (400, 300), id="same-aspect-no-padding"),
    pytest.param((800, 800), 300, 100, (100, 100), id="square-in-wide"),
    pytest.param((100, 50), 1000, 1000, (1000, 500), id="upscaled"),
])
def test_type2_size_and_canvas(source, width, height, size):
    plan = plan_thumbnail(source, width, height, PAD)
    assert plan.size == size
    assert plan.canvas == (width, height)
    assert plan.output_size == (width, height)
    assert_box(plan.box, whole(source))


@pytest.mark.parametrize("source", [(1000, 500), (500, 1000)])
@pytest.mark.parametrize("width, height", [(200, 0), (0, 200)])
def test_type2_with_one_dimension_is_type1(source, width, height):
    plan = plan_thumbnail(source, width, height, PAD)
    assert plan == plan_thumbnail(source, width, height, FIT)
    assert plan.canvas is None


# ---------------------------------------------------------------------------------------------------------------
# Types 3 and 4: crop to the target aspect ratio (centre / top), scale to exactly W×H
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, source, width, height, box", [
    # centre crop
    pytest.param(CROP_CENTER, (1000, 500), 100, 100, (250, 0, 750, 500), id="3-wide-to-square"),
    pytest.param(CROP_CENTER, (500, 1000), 100, 100, (0, 250, 500, 750), id="3-tall-to-square"),
    pytest.param(CROP_CENTER, (1000, 500), 200, 50, (0, 125, 1000, 375), id="3-wide-to-wider"),
    pytest.param(CROP_CENTER, (1000, 500), 100, 200, (375, 0, 625, 500), id="3-wide-to-tall"),
    pytest.param(CROP_CENTER, (400, 1000), 300, 100, (0, 1300 / 3, 400, 1700 / 3), id="3-tall-to-wide"),
    pytest.param(CROP_CENTER, (800, 600), 400, 300, (0, 0, 800, 600), id="3-same-aspect"),
    pytest.param(CROP_CENTER, (100, 50), 1000, 1000, (25, 0, 75, 50), id="3-upscaled"),
    # top crop: horizontally still centred, vertically anchored at the top
    pytest.param(CROP_TOP, (1000, 500), 100, 100, (250, 0, 750, 500), id="4-wide-to-square"),
    pytest.param(CROP_TOP, (500, 1000), 100, 100, (0, 0, 500, 500), id="4-tall-to-square"),
    pytest.param(CROP_TOP, (1000, 500), 200, 50, (0, 0, 1000, 250), id="4-wide-to-wider"),
    pytest.param(CROP_TOP, (400, 1000), 300, 100, (0, 0, 400, 400 / 3), id="4-tall-to-wide"),
    pytest.param(CROP_TOP, (800, 600), 400, 300, (0, 0, 800, 600), id="4-same-aspect"),
])
def test_crop_to_fill_box(mode, source, width, height, box):
    plan = plan_thumbnail(source, width, height, mode)
    assert plan.size == (width, height)
    assert plan.canvas is None
    assert_box(plan.box, box)


@pytest.mark.parametrize("mode", [CROP_CENTER, CROP_TOP])
@pytest.mark.parametrize("source, width, height", [((1000, 500), 100, 100), ((500, 1000), 300, 77),
                                                   ((1234, 567), 64, 480)])
def test_crop_box_has_target_aspect_and_lies_inside_the_source(mode, source, width, height):
    left, top, right, bottom = plan_thumbnail(source, width, height, mode).box
    assert (right - left) / (bottom - top) == pytest.approx(width / height)
    assert 0 <= left < right <= source[0] + 1e-9
    assert 0 <= top < bottom <= source[1] + 1e-9
    # the largest such box: it spans the whole source in at least one direction
    assert math.isclose(right - left, source[0]) or math.isclose(bottom - top, source[1])


@pytest.mark.parametrize("mode, region, box", [
    # src_w replaces the source width and anchors left (vertically: centred for 3, top for 4)
    pytest.param(CROP_CENTER, Region(width=400), (0, 300, 400, 700), id="3-src_w"),
    pytest.param(CROP_TOP, Region(width=400), (0, 0, 400, 400), id="4-src_w"),
    # src_h replaces the source height and anchors at the top (horizontally centred)
    pytest.param(CROP_CENTER, Region(height=400), (300, 0, 700, 400), id="3-src_h"),
    pytest.param(CROP_TOP, Region(height=400), (300, 0, 700, 400), id="4-src_h"),
    # both: anchored top-left
    pytest.param(CROP_CENTER, Region(width=600, height=300), (0, 0, 300, 300), id="3-src_w-src_h"),
    pytest.param(CROP_TOP, Region(width=600, height=300), (0, 0, 300, 300), id="4-src_w-src_h"),
    # larger than the source: clamped to it, still anchored
    pytest.param(CROP_CENTER, Region(width=5000), (0, 0, 1000, 1000), id="3-src_w-too-large"),
    pytest.param(CROP_CENTER, Region(width=5000, height=200), (0, 0, 200, 200), id="3-src_w-too-large-src_h"),
])
def test_crop_to_fill_with_src_w_src_h(mode, region, box):
    plan = plan_thumbnail((1000, 1000), 100, 100, mode, region)
    assert plan.size == (100, 100)
    assert_box(plan.box, box)


@pytest.mark.parametrize("mode", [CROP_CENTER, CROP_TOP])
@pytest.mark.parametrize("width, height", [(120, 0), (0, 80)])
def test_crop_with_one_dimension_is_a_square(mode, width, height):
    side = width or height
    plan = plan_thumbnail((1000, 500), width, height, mode)
    assert plan.size == (side, side)
    assert_box(plan.box, (250, 0, 750, 500))
    tall = plan_thumbnail((500, 1000), width, height, mode)
    assert tall.size == (side, side)
    assert_box(tall.box, (0, 250, 500, 750) if mode is CROP_CENTER else (0, 0, 500, 500))


# ---------------------------------------------------------------------------------------------------------------
# Type 5: stretch
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source, width, height", [((1000, 500), 100, 300), ((500, 1000), 300, 100),
                                                   ((100, 100), 1000, 7)])
def test_type5_stretches_to_exactly_the_box(source, width, height):
    plan = plan_thumbnail(source, width, height, STRETCH)
    assert plan.size == (width, height)
    assert plan.canvas is None
    assert_box(plan.box, whole(source))


@pytest.mark.parametrize("source", [(1000, 500), (500, 1000)])
@pytest.mark.parametrize("width, height", [(200, 0), (0, 200)])
def test_type5_with_one_dimension_is_type1(source, width, height):
    assert plan_thumbnail(source, width, height, STRETCH) == plan_thumbnail(source, width, height, FIT)


# ---------------------------------------------------------------------------------------------------------------
# Pre-crop (src_x, src_y, src_w, src_h) for types 1, 2, 5
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, size, canvas", [
    (FIT, (200, 150), None),
    (PAD, (200, 150), (200, 200)),
    (STRETCH, (200, 200), None),
])
def test_pre_crop_region_then_mode(mode, size, canvas):
    plan = plan_thumbnail((1000, 1000), 200, 200, mode, Region(100, 50, 400, 300))
    assert_box(plan.box, (100, 50, 500, 350))
    assert plan.size == size
    assert plan.canvas == canvas


@pytest.mark.parametrize("region, box", [
    pytest.param(Region(0, 0, 0, 0), (0, 0, 1000, 500), id="none"),
    pytest.param(Region(200, 100, 0, 0), (200, 100, 1000, 500), id="zero-size-to-the-edge"),
    pytest.param(Region(200, 100, 300, 0), (200, 100, 500, 500), id="zero-height-to-the-bottom"),
    pytest.param(Region(200, 100, 0, 50), (200, 100, 1000, 150), id="zero-width-to-the-right"),
    pytest.param(Region(900, 0, 500, 0), (900, 0, 1000, 500), id="width-clamped"),
    pytest.param(Region(0, 400, 0, 500), (0, 400, 1000, 500), id="height-clamped"),
    pytest.param(Region(0, 0, 10000, 10000), (0, 0, 1000, 500), id="larger-than-source"),
    pytest.param(Region(5000, 5000, 10, 10), (999, 499, 1000, 500), id="origin-outside-clamped-to-last-pixel"),
    pytest.param(Region(5000, 5000, 0, 0), (999, 499, 1000, 500), id="origin-outside-to-the-edge"),
])
@pytest.mark.parametrize("mode", [FIT, PAD, STRETCH])
def test_pre_crop_clamped_inside_the_source(region, box, mode):
    plan = plan_thumbnail((1000, 500), 0, 0, mode, region)
    assert_box(plan.box, box)
    left, top, right, bottom = plan.box
    assert plan.size == (round(right - left), round(bottom - top))  # 0×0: the region at its own size


@pytest.mark.parametrize("region, rel_width, rel_height, box", [
    pytest.param(Region(50, 25, 100, 50), 200, 100, (500, 250, 1500, 750), id="both-scaled-x10"),
    pytest.param(Region(50, 25, 100, 50), 200, None, (500, 25, 1500, 75), id="only-x-scaled"),
    pytest.param(Region(50, 25, 100, 50), None, 100, (50, 250, 150, 750), id="only-y-scaled"),
    pytest.param(Region(100, 100, 200, 200), 4000, 2000, (50, 50, 150, 150), id="scaled-down"),
    pytest.param(Region(50, 25, 0, 0), 200, 100, (500, 250, 2000, 1000), id="zero-size-still-to-the-edge"),
])
def test_rel_width_rel_height_scale_the_region(region, rel_width, rel_height, box):
    plan = plan_thumbnail((2000, 1000), 0, 0, FIT, region, rel_width, rel_height)
    assert_box(plan.box, box)


@pytest.mark.parametrize("mode, box", [(CROP_CENTER, (0, 500, 1000, 1500)), (CROP_TOP, (0, 0, 1000, 1000))])
def test_rel_width_scales_src_w_of_crop_modes(mode, box):
    plan = plan_thumbnail((2000, 2000), 100, 100, mode, Region(width=100), rel_width=200)
    assert_box(plan.box, box)


# ---------------------------------------------------------------------------------------------------------------
# Caps: 10000 per side and max_pixels, shrinking size and canvas proportionally
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, source, width, height, max_pixels, size, canvas", [
    pytest.param(FIT, (100, 1000), 5000, 0, 100_000_000, (1000, 10000), None, id="side-cap-width-only"),
    pytest.param(FIT, (1000, 100), 0, 5000, 100_000_000, (10000, 1000), None, id="side-cap-height-only"),
    pytest.param(FIT, (20000, 100), 0, 0, 100_000_000, (10000, 50), None, id="side-cap-original-size"),
    pytest.param(FIT, (1000, 1000), 1000, 1000, 250_000, (500, 500), None, id="pixel-cap"),
    pytest.param(STRETCH, (10, 10), 10000, 10000, 1_000_000, (1000, 1000), None, id="pixel-cap-stretch"),
    pytest.param(CROP_CENTER, (1000, 1000), 1000, 1000, 10_000, (100, 100), None, id="pixel-cap-crop"),
    pytest.param(PAD, (1000, 500), 1000, 1000, 250_000, (500, 250), (500, 500), id="pixel-cap-canvas"),
    pytest.param(PAD, (1000, 10), 10000, 10000, 1_000_000, (1000, 10), (1000, 1000), id="canvas-counts"),
    pytest.param(FIT, (10000, 10000), 10000, 10000, 100_000_000, (10000, 10000), None, id="at-limits-unchanged"),
    pytest.param(FIT, (100, 100), 0, 0, 100, (10, 10), None, id="tiny-limit"),
])
def test_caps(mode, source, width, height, max_pixels, size, canvas):
    plan = plan_thumbnail(source, width, height, mode, max_pixels=max_pixels)
    assert plan.size == size
    assert plan.canvas == canvas
    uncapped = plan_thumbnail(source, width, height, mode)
    assert plan.box == uncapped.box  # the cap shrinks the output, never what is taken from the source


@pytest.mark.parametrize("source, width, height, max_pixels", [((4000, 3000), 0, 0, 2_000_000),
                                                               ((1, 1), 0, 5, 21)])
def test_pixel_cap_is_a_hard_limit(source, width, height, max_pixels):
    out_width, out_height = plan_thumbnail(source, width, height, FIT, max_pixels=max_pixels).output_size
    assert out_width * out_height <= max_pixels


def test_cap_keeps_the_aspect_ratio():
    plan = plan_thumbnail((300, 7000), 1000, 0, FIT, max_pixels=1_000_000)
    width, height = plan.size
    assert max(width, height) <= MAX_DIMENSION and width * height <= 1_000_000 * 1.01
    assert width / height == pytest.approx(300 / 7000, rel=0.01)


# ---------------------------------------------------------------------------------------------------------------
# scale and scaled_box (what shrink-on-load needs)
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("plan, scale", [
    (Plan((0, 0, 4000, 3000), (320, 240)), 0.08),
    (Plan((0, 0, 4000, 3000), (320, 100)), 0.08),  # stretch: the larger factor
    (Plan((0, 0, 4000, 3000), (100, 300)), 0.1),
    (Plan((100, 0, 300, 100), (100, 100)), 1.0),
    (Plan((0, 0, 50, 50), (200, 200)), 4.0),
    (Plan((0, 0, 1000, 500), (200, 100), canvas=(200, 200)), 0.2),
])
def test_scale_is_the_largest_factor(plan, scale):
    assert plan.scale == pytest.approx(scale)


def test_scale_of_a_planned_thumbnail():
    assert plan_thumbnail((4000, 3000), 320, 240, FIT).scale == pytest.approx(0.08)
    assert plan_thumbnail((4000, 3000), 100, 100, CROP_CENTER).scale == pytest.approx(100 / 3000)
    assert plan_thumbnail((4000, 3000), 400, 0, FIT, Region(0, 0, 200, 200)).scale == pytest.approx(2.0)


@pytest.mark.parametrize("factors, box", [
    ((1.0, 1.0), (100, 40, 300, 240)),
    ((0.5, 0.5), (50, 20, 150, 120)),
    ((0.125, 0.125), (12.5, 5, 37.5, 30)),
    ((0.25, 0.5), (25, 20, 75, 120)),
])
def test_scaled_box(factors, box):
    plan = Plan((100, 40, 300, 240), (50, 50))
    assert_box(plan.scaled_box(*factors), box)


def test_output_size_is_the_canvas_when_there_is_one():
    assert Plan((0, 0, 10, 10), (5, 3), canvas=(5, 5)).output_size == (5, 5)
    assert Plan((0, 0, 10, 10), (5, 3)).output_size == (5, 3)


# ---------------------------------------------------------------------------------------------------------------
# Invariants over many inputs
# ---------------------------------------------------------------------------------------------------------------

sizes = st.tuples(st.integers(1, 20000), st.integers(1, 20000))
dimension = st.integers(0, MAX_DIMENSION)
regions = st.builds(Region, st.integers(0, 10000), st.integers(0, 10000), st.integers(0, 10000),
                    st.integers(0, 10000))


@settings(max_examples=300, deadline=None)
@given(source=sizes, width=dimension, height=dimension, mode=st.sampled_from(list(ResizeMode)), region=regions,
       rel_width=st.one_of(st.none(), st.integers(1, 100000)), rel_height=st.one_of(st.none(), st.integers(1, 100000)),
       max_pixels=st.integers(10_000, 100_000_000))  # a sane limit: below, the 1-pixel floor dominates
def test_plan_invariants(source, width, height, mode, region, rel_width, rel_height, max_pixels):
    plan = plan_thumbnail(source, width, height, mode, region, rel_width, rel_height, max_pixels)
    left, top, right, bottom = plan.box
    # the box is a non-empty part of the source
    assert -1e-6 <= left < right <= source[0] + 1e-6
    assert -1e-6 <= top < bottom <= source[1] + 1e-6
    out_width, out_height = plan.output_size
    # at least a pixel, at most 10000 per side, max_pixels at most give or take the rounding to whole pixels
    # (the exact limit: test_pixel_cap_is_a_hard_limit)
    assert plan.size[0] >= 1 and plan.size[1] >= 1
    assert out_width <= MAX_DIMENSION and out_height <= MAX_DIMENSION
    assert out_width * out_height <= max_pixels + (out_width + out_height) / 2 + 1
    if plan.canvas is not None:
        assert mode is PAD and width and height
        assert plan.size[0] <= plan.canvas[0] and plan.size[1] <= plan.canvas[1]
    uncapped = plan_thumbnail(source, width, height, mode, region, rel_width, rel_height)
    if uncapped.output_size == plan.output_size:
        if mode in (CROP_CENTER, CROP_TOP, STRETCH) and width and height:
            assert plan.size == (width, height)
        if mode in (CROP_CENTER, CROP_TOP) and (width or height):
            assert plan.size == (width or height, height or width)
        if mode is PAD and width and height:
            assert plan.canvas == (width, height)
        if mode in (FIT, PAD) and width and height:
            assert plan.size[0] <= width and plan.size[1] <= height
