"""Decode an image for a plan: check its size from the header, shrink on load, apply EXIF orientation.

JPEGs are decoded at 1/2, 1/4 or 1/8 scale (`Image.draft`) when the plan needs fewer pixels: decoding is most of
a thumbnail's cost and scales with the pixels decoded. The decoded image comes back with its orientation applied
and with how much smaller than the source it is, so the plan's box can be scaled to it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageCms, ImageOps

from ..errors import TooLarge, Unprocessable
from .geometry import Plan

ORIENTATION_TAG = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}
TRANSPOSES = {  # what turns a picture stored with an EXIF orientation upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_INVERSE = {Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270,  # the others undo themselves
            Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90}
_SRGB = ImageCms.createProfile("sRGB")
JPEG_SCALES = (1, 2, 4, 8)  # a JPEG decodes at 1/1, 1/2, 1/4 or 1/8 of its size (Image.draft)
# Decoded pixels per output pixel, per axis, that shrink-on-load keeps at least: 1.0 decodes at the coarsest JPEG
# scale that still has every pixel the output needs (as libvips); 2.0 would decode twice that detail.
DECODE_OVERSAMPLING = 1.0
# SPEC §2: metadata an output carries is bounded. A larger ICC profile is applied to the pixels instead of copied;
# EXIF or XMP larger than one JPEG marker segment holds (which Pillow's JPEG writer refuses) is dropped.
MAX_KEPT_ICC_BYTES = 64 * 1024
MAX_KEPT_SEGMENT_BYTES = 65_504


@dataclass
class Decoded:
    image: Image.Image  # oriented, first frame, fully loaded
    source_size: tuple[int, int]  # the oriented size of the source, before any shrink-on-load
    info: dict  # metadata to carry over: "exif" (without orientation), "icc_profile", "xmp"
    orientation: int = 1  # the EXIF orientation the image was turned upright from

    @property
    def shrink(self) -> tuple[float, float]:
        """decoded pixels per source pixel, per axis (1.0 without shrink-on-load)."""
        return self.image.width / self.source_size[0], self.image.height / self.source_size[1]


JPEG_FORMATS = ("JPEG", "MPO")


def decode(data: bytes, make_plan: Callable[[tuple[int, int]], Plan], max_pixels: int) -> tuple[Decoded, Plan]:
    """Open `data`, plan from its oriented size (`make_plan`), decode only as many pixels as that plan needs."""
    image = open_image(data, max_pixels)
    if image.format in JPEG_FORMATS:  # the EXIF block is read with the header: plan, then decode less
        scale, plan = scale_on_load(image.size, orientation_of(image), make_plan)
        return _decode(image, scale), plan
    decoded = _decode(image, 1)  # other formats may keep EXIF after the pixels (PNG), or orient while loading (TIFF)
    return decoded, make_plan(decoded.source_size)


def scale_on_load(stored_size: tuple[int, int], orientation: int,
                  make_plan: Callable[[tuple[int, int]], Plan]) -> tuple[int, Plan]:
    """For a JPEG of `stored_size` (as in the file) and EXIF `orientation`: the scale (of JPEG_SCALES) `decode`
    decodes it at, and the plan (`make_plan` is given the oriented size)."""
    plan = make_plan(oriented_size(stored_size, orientation))
    return _reduction(stored_size, plan), plan


def decode_at(data: bytes, scale: int, max_pixels: int) -> Decoded:
    """`data` decoded at 1/scale (JPEG's 1, 2, 4 or 8; other formats at full size), oriented: the same pixels
    `decode` produces where `scale_on_load` gives `scale`, so a copy kept from one serves the other."""
    return _decode(open_image(data, max_pixels), scale)


def reduced(decoded: Decoded, factor: int) -> Decoded:
    """A kept picture brought down by a whole factor (box averages of factor × factor pixels): close to what decoding
    at that much smaller a JPEG scale gives (PSNR ~48-52 dB on photos), for a fraction of a decode's time.

    The blocks are laid on the file's own grid, as the decoder lays them: where the orientation moved the stored
    right or bottom edge (and its partial blocks) elsewhere, the picture is turned back for the reduction."""
    turn = TRANSPOSES.get(decoded.orientation)
    if turn is None:
        return Decoded(decoded.image.reduce(factor), decoded.source_size, decoded.info)
    stored = decoded.image.transpose(_INVERSE.get(turn, turn))
    return Decoded(stored.reduce(factor).transpose(turn), decoded.source_size, decoded.info, decoded.orientation)


def _reduction(stored_size: tuple[int, int], plan: Plan) -> int:
    """The JPEG scale denominator (8, 4, 2 or 1) that still gives `plan` every pixel it needs, as Image.draft
    chooses it. `stored_size` is the size in the file (before orientation); the plan's scale is the same either way."""
    factor = plan.scale * DECODE_OVERSAMPLING
    wanted = (max(1, round(stored_size[0] * factor)), max(1, round(stored_size[1] * factor)))
    ratio = min(stored_size[0] // wanted[0], stored_size[1] // wanted[1])
    return next((scale for scale in reversed(JPEG_SCALES) if ratio >= scale), 1)


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # Pillow's global guard, where something re-enabled it
        raise TooLarge(f"the original has more pixels than allowed (limit {max_pixels})") from None
    except Exception as error:  # noqa: BLE001 - Pillow raises many types for "not an image"
        raise Unprocessable(f"the original is not an image Pillow can read ({_reason(error)})") from None
    if image.width * image.height > max_pixels:
        raise TooLarge(f"the original is {image.width}x{image.height} pixels (limit {max_pixels})")
    return image


def _decode(image: Image.Image, scale: int) -> Decoded:
    if image.format in JPEG_FORMATS:
        orientation = orientation_of(image)
        source_size = oriented_size(image.size, orientation)
        if scale > 1:
            image.draft("RGB" if image.mode == "RGB" else None,
                        (max(1, image.width // scale), max(1, image.height // scale)))
        _load(image)
    else:
        _load(image)
        orientation = orientation_of(image)
        source_size = oriented_size(image.size, orientation)
    if orientation != 1:
        image = ImageOps.exif_transpose(image)  # also drops the orientation from the XMP it carries
    info = metadata_of(image)
    if image.mode == "CMYK":
        image = _cmyk_to_rgb(image, info.pop("icc_profile", None))
    elif len(info.get("icc_profile", b"")) > MAX_KEPT_ICC_BYTES:
        image = to_srgb(image, info.pop("icc_profile"))
    return Decoded(image, source_size, info, orientation)


def _load(image: Image.Image) -> None:
    load_frame(image, 0)  # animated GIF/WebP: the first frame


def load_frame(image: Image.Image, index: int) -> None:
    try:
        image.seek(index)
        image.load()
    except Exception as error:  # noqa: BLE001 - truncated or corrupt data surfaces here
        raise Unprocessable(f"the original cannot be decoded ({_reason(error)})") from None


def oriented_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    return (size[1], size[0]) if orientation in _SWAPS_AXES else size


def _cmyk_to_rgb(image: Image.Image, profile: bytes | None) -> Image.Image:
    """Through the embedded CMYK profile when there is one (print files look right), else Pillow's formula."""
    if profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            return ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
    return image.convert("RGB")


def to_srgb(image: Image.Image, profile: bytes) -> Image.Image:
    """The pixels converted from their (RGB) profile to sRGB, which an output without a profile is read as."""
    mode = "RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        image = ImageCms.profileToProfile(image, source, _SRGB, outputMode=mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        pass  # a profile lcms cannot read: the pixels as stored, as a browser shows them
    image.info.pop("icc_profile", None)  # nor kept alive with a decoded picture held in memory
    return image


def orientation_of(image: Image.Image) -> int:
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not stop the picture
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def metadata_of(image: Image.Image) -> dict:
    info = {}
    try:
        exif = image.getexif()
        if exif:
            exif.pop(ORIENTATION_TAG, None)  # the pixels are oriented now; the output carries no orientation
            data = exif.tobytes()
            if len(data) <= MAX_KEPT_SEGMENT_BYTES:
                info["exif"] = data
    except Exception:  # noqa: BLE001 - unreadable EXIF is dropped, not fatal
        pass
    xmp = image.info.get("xmp")
    if xmp and len(xmp) <= MAX_KEPT_SEGMENT_BYTES:
        info["xmp"] = xmp
    profile = image.info.get("icc_profile")
    if profile and (profile[16:20] == b"RGB " or image.mode == "CMYK"):  # output is RGB: no grey profiles on it
        info["icc_profile"] = profile
    return info


def _reason(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:120]
