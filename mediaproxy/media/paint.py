"""Pixel modes and colours: normalise what was decoded, resize along a plan, flatten alpha, pad onto a canvas."""

from __future__ import annotations

from PIL import Image

from .geometry import Plan

RESAMPLE = Image.Resampling.LANCZOS
REDUCING_GAP = 2.0  # reduce() by whole factors first while the scale is at least this: faster, same look


def normalise_mode(image: Image.Image) -> Image.Image:
    """RGB, or RGBA when the image has transparency; high bit depths and CMYK brought to 8-bit RGB."""
    if image.mode == "RGBA" or image.mode == "RGB" and "transparency" not in image.info:
        return image
    if "transparency" in image.info or image.mode in ("PA", "LA", "La", "RGBa"):
        return image.convert("RGBA")  # palette, grey or RGB with a transparent colour included
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16-bit (or float) greyscale: scale to 8 bits instead of clipping everything above 255 to white
        top = 65535 if image.mode.startswith("I;16") else max(image.getextrema()[1], 1)
        return image.convert("I").point(lambda value: value * (255 / top)).convert("L").convert("RGB")
    return image.convert("RGB")


def resize(image: Image.Image, plan: Plan, shrink: tuple[float, float]) -> Image.Image:
    """Crop the plan's box (scaled to the decoded image) and scale it to the plan's size, in one resampling."""
    box = plan.scaled_box(*shrink)
    if plan.size == image.size and box == (0, 0, image.width, image.height):
        return image
    return image.resize(plan.size, RESAMPLE, box=box, reducing_gap=REDUCING_GAP)


def rgb(colour: int) -> tuple[int, int, int]:
    return (colour >> 16) & 0xFF, (colour >> 8) & 0xFF, colour & 0xFF


def flatten(image: Image.Image, colour: int) -> Image.Image:
    """Paint transparent pixels with `colour` (for outputs without alpha)."""
    if image.mode != "RGBA":
        return image
    background = Image.new("RGB", image.size, rgb(colour))
    background.paste(image, mask=image.getchannel("A"))
    return background


def pad(image: Image.Image, canvas: tuple[int, int], colour: int) -> Image.Image:
    """Centre the image on an opaque canvas of `colour` (type 2); transparency inside the image is kept."""
    if image.size == canvas:
        return image
    background = Image.new(image.mode, canvas, rgb(colour) + ((255,) if image.mode == "RGBA" else ()))
    offset = ((canvas[0] - image.width) // 2, (canvas[1] - image.height) // 2)
    background.paste(image, offset)
    return background
