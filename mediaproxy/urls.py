"""The Kaltura URL grammar (SPEC §1–4): a request path and query string → one typed, frozen request.

    /[s/]p/{P}[/sp/{SP}]/{service}/{key}/{value}/...[/trailing-file-name]?key=value...
    /[s/]flvclipper/{key}/{value}/...                       (partner from [defaults] partner_id)

Every parameter is parsed, checked and normalised here, so the services receive values they can trust and a
canonical `cache_key()`; a malformed value is a `BadRequest` naming it. Nothing here touches files or images.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from urllib.parse import parse_qsl, quote, unquote

from .errors import BadRequest, NotFound
from .refs import ID_PATTERN, EntryRef, FileSelector

MAX_DIMENSION = 10_000
MAX_VERSION = 10_000_000
_MAX_FRAME = 1_000_000  # rel_width/rel_height: the frame the source region was measured in
_INTEGER = re.compile(r"[+-]?[0-9]+\Z")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)\Z")
_HEX_COLOUR = re.compile(r"[0-9A-Fa-f]{1,6}\Z")
_EXTENSION = re.compile(r"[A-Za-z0-9]{1,10}\Z")
_THUMBNAIL_VALUE_SUFFIX = re.compile(r"\.(jpg|gif|png)\Z")
_FALSY = frozenset({"", "0", "false", "no", "off"})


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


@dataclass(frozen=True, slots=True)
class Region:
    """A region of the source in source pixels; 0 width/height = to the edge."""

    x: int = 0
    y: int = 0
    width: int = 0
    height: int = 0


@dataclass(frozen=True, slots=True)
class ThumbnailRequest:
    entry: EntryRef
    width: int  # 0 = follows the other dimension (both 0: the source size)
    height: int
    mode: ResizeMode = ResizeMode.FIT
    bgcolor: int = 0xFFFFFF
    quality: int | None = None  # None = the partner's default
    region: Region = Region()
    rel_width: int | None = None  # region is given in a frame of this size
    rel_height: int | None = None
    vid_sec: float | None = None  # None = the entry's thumb_offset, else 3 s
    vid_slices: int | None = None
    vid_slice: int | None = None  # None with vid_slices = a strip of all slices
    start_sec: float | None = None
    end_sec: float | None = None
    density: int | None = None
    strip: bool = False
    format: OutputFormat = OutputFormat.JPG
    version: int | None = None
    flavor_id: str | None = None
    file_name: str | None = field(default=None, compare=False)
    ks: str | None = field(default=None, compare=False)

    service = "thumbnail"

    @property
    def is_strip(self) -> bool:
        return self.vid_slices is not None and self.vid_slice is None

    def cache_key(self) -> str:
        """Equal for every URL that asks for the same picture (order, aliases, defaults and the KS do not count).

        Quality is left out: it resolves against the partner's default, so the service appends the effective one.
        """
        return _thumbnail_key(self)


@dataclass(frozen=True, slots=True)
class ClipRequest:
    entry: EntryRef
    flavor_id: str | None = None  # None = the best playable flavor, else the original
    clip_from_ms: int = 0
    clip_to_ms: int | None = None  # None = to the end
    container: str | None = None  # "mp4"/"flv" from a trailing /a.mp4; None = follow the source
    ks: str | None = field(default=None, compare=False)
    referrer: str | None = field(default=None, compare=False)

    service = "flvclipper"

    def cache_key(self) -> str:
        return (f"flvclipper|{self.entry.partner_id}|{self.entry.entry_id}|{self.flavor_id}|"
                f"{self.clip_from_ms}|{self.clip_to_ms}|{self.container}")


@dataclass(frozen=True, slots=True)
class RawRequest:
    entry: EntryRef
    selector: FileSelector = FileSelector()
    file_name: str | None = None
    direct_serve: bool = False
    ks: str | None = field(default=None, compare=False)

    service = "raw"


ServiceRequest = ThumbnailRequest | ClipRequest | RawRequest


@functools.lru_cache(maxsize=16384)
def _thumbnail_key(request: ThumbnailRequest) -> str:
    return "thumbnail|" + "|".join(f"{field.name}={getattr(request, field.name)!r}"
                                   for field in dataclasses.fields(request) if field.compare and field.name != "quality")


@functools.lru_cache(maxsize=16384)  # hot URLs repeat: their (immutable) parse is remembered
def parse(raw_path: str, default_partner_id: int) -> ServiceRequest:
    """Parse a request target as sent (`/p/100/sp/10000/raw/entry_id/0_abc?ks=...`, still percent-encoded)."""
    path, _, query = raw_path.partition("?")
    segments = [segment for segment in path.split("/") if segment]
    if segments[:1] == ["s"]:  # CDN "secured" prefix
        segments = segments[1:]
    partner_id, service, rest = _split_prefix(segments, default_partner_id)
    if service == "thumbnail":
        return _thumbnail(partner_id, _Params(rest, query, "flavor_id", strip_suffixes=True))
    if service == "flvclipper":
        return _clip(partner_id, _Params(rest, query, "flavor"))
    return _raw(partner_id, _Params(rest, query, "flavor_id"))


def redact_ks(target: str) -> str:
    """The request target for logs: every value that may be a KS (after a `ks` key, however spelt) replaced."""
    path, mark, query = target.partition("?")
    segments = [segment for segment in path.split("/") if segment]
    redacted = [("[redacted]" if index and unquote(segments[index - 1]) == "ks" else segment)
                for index, segment in enumerate(segments)]
    pairs = [(key, "[redacted]" if unquote(key.replace("+", " ")) == "ks" else value)
             for key, _, value in (item.partition("=") for item in query.split("&"))] if query else []
    return "/" + "/".join(redacted) + mark + "&".join(f"{key}={value}" for key, value in pairs)


def _split_prefix(segments: list[str], default_partner_id: int) -> tuple[int, str, list[str]]:
    if segments[:1] == ["flvclipper"]:
        return default_partner_id, "flvclipper", segments[1:]
    if len(segments) < 3 or segments[0] != "p":
        raise NotFound("no such service: use /p/{partner_id}/sp/{subp_id}/thumbnail|flvclipper|raw/...")
    partner_id = _partner_integer("partner_id", segments[1])
    rest = segments[2:]
    if rest[0] == "sp":
        if len(rest) < 3:
            raise NotFound("no such service after /sp/{subp_id}/")
        _partner_integer("sp", rest[1])
        rest = rest[2:]
    if rest[0] not in ("thumbnail", "flvclipper", "raw"):
        raise NotFound(f"no such service: {unquote(rest[0])[:40]!r} (use thumbnail, flvclipper or raw)")
    return partner_id, rest[0], rest[1:]


def _partner_integer(name: str, text: str) -> int:
    if not re.fullmatch(r"-?[0-9]{1,18}", text):  # past 18 digits it is no partner of a 64-bit world
        raise BadRequest(f"{name}: {unquote(text)[:40]!r} is not an integer of at most 18 digits")
    return int(text)


class _Params:
    """Key/value pairs from the path (winning) and the query string, decoded and with aliases folded."""

    def __init__(self, path_segments: list[str], query: str, flavor_key: str, *, strip_suffixes: bool = False):
        aliases = {"entryId": "entry_id", "flavorId": flavor_key}
        values: dict[str, str] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            values[aliases.get(key, key)] = value
        pairs = len(path_segments) // 2
        self.trailing = unquote(path_segments[-1]) if len(path_segments) % 2 else None
        path_values: dict[str, str] = {}
        for index in range(pairs):
            key = unquote(path_segments[2 * index])
            path_values[aliases.get(key, key)] = unquote(path_segments[2 * index + 1])
        values.update(path_values)
        if strip_suffixes:
            values = {key: _THUMBNAIL_VALUE_SUFFIX.sub("", value) for key, value in values.items()}
        self.values = values
        self.flavor_key = flavor_key

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def entry(self, partner_id: int) -> EntryRef:
        entry_id = self.values.get("entry_id")
        if entry_id is None:
            raise BadRequest("entry_id: missing")
        return EntryRef(partner_id, _identifier("entry_id", entry_id))

    def flavor(self) -> str | None:
        value = self.values.get(self.flavor_key)
        return None if value is None else _identifier(self.flavor_key, value)

    def version(self) -> int | None:
        """None when absent or negative (Kaltura's -1 = absent), else clamped to 0..MAX_VERSION."""
        version = self.integer("version", -1, -1, MAX_VERSION)
        return version if version >= 0 else None

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        """An integer clamped into low..high (as Kaltura does); not a number at all is a BadRequest."""
        text = self.values.get(key)
        if text is None or text == "":
            return default
        if not _INTEGER.match(text):
            raise BadRequest(f"{key}: {text[:40]!r} is not an integer")
        return min(max(_integer(text), low), high)

    def number(self, key: str) -> float | None:
        text = self.values.get(key)
        if text is None or text == "":
            return None
        if not _NUMBER.match(text):
            raise BadRequest(f"{key}: {text[:40]!r} is not a number")
        value = float(text)
        if not math.isfinite(value):
            raise BadRequest(f"{key}: {text[:40]!r} is out of range")
        return value

    def flag(self, key: str) -> bool:
        text = self.values.get(key)
        return text is not None and text.lower() not in _FALSY


def _integer(text: str) -> int:
    """int() of a checked [+-]digits string; past 18 digits only the sign matters (it is clamped anyway, and Python
    refuses to convert more than 4300 digits)."""
    digits = text.lstrip("+-")
    if len(digits) > 18:
        return -(10 ** 19) if text.startswith("-") else 10 ** 19
    return int(text)


def _identifier(name: str, value: str) -> str:
    if not ID_PATTERN.match(value):
        raise BadRequest(f"{name}: {value[:80]!r} is not a valid id (letters, digits, _; at most 64)")
    return value


def _dimension(params: _Params, key: str) -> tuple[int | None, bool]:
    """width/height: (None if absent or negative, else 0..10000; whether a `!` after the first character forces type 5)."""
    text = params.get(key)
    if text is None or text == "":
        return None, False
    forced = text.find("!") > 0
    digits = text.replace("!", "") if forced else text
    if not _INTEGER.match(digits):
        raise BadRequest(f"{key}: {text[:40]!r} is not an integer")
    value = _integer(digits)
    return (None if value < 0 else min(value, MAX_DIMENSION)), forced


def _mode(text: str | None) -> ResizeMode:
    if text is None or not _INTEGER.match(text) or _integer(text) < 1:
        return ResizeMode.FIT  # as Kaltura: 0, negative and non-numeric types are type 1
    return ResizeMode(min(_integer(text), 5))


def _thumbnail(partner_id: int, params: _Params) -> ThumbnailRequest:
    entry = params.entry(partner_id)
    width, width_forced = _dimension(params, "width")
    height, height_forced = _dimension(params, "height")
    mode = ResizeMode.STRETCH if width_forced or height_forced else _mode(params.get("type"))
    if width is None and height is None:
        def_width = params.integer("def_width", -1, -1, MAX_DIMENSION)
        def_height = params.integer("def_height", -1, -1, MAX_DIMENSION)
        if def_width > 0 or def_height > 0:
            width, height = max(def_width, 0), max(def_height, 0)
        else:
            width, height = 120, 90

    bgcolor_text = params.get("bgcolor")
    if bgcolor_text is None or bgcolor_text == "":
        bgcolor = 0xFFFFFF
    elif _HEX_COLOUR.match(bgcolor_text):
        bgcolor = int(bgcolor_text, 16)
    else:
        raise BadRequest(f"bgcolor: {bgcolor_text[:40]!r} is not 1-6 hex digits")

    quality = params.integer("quality", 0, 0, 100)
    format_text = (params.get("format") or "jpg").lower()
    try:
        output_format = OutputFormat("jpg" if format_text == "jpeg" else format_text)
    except ValueError:
        raise BadRequest(f"format: {format_text[:40]!r} is not one of jpg, png, gif, webp, avif") from None

    vid_sec = params.number("vid_sec")
    vid_slices = params.integer("vid_slices", -1, -1, MAX_DIMENSION)
    if vid_slices == 0:
        raise BadRequest("vid_slices: must be at least 1")
    vid_slice = params.integer("vid_slice", -1, -1, MAX_DIMENSION)
    start_sec, end_sec = params.number("start_sec"), params.number("end_sec")
    start_sec = start_sec if start_sec is not None and start_sec >= 0 else None
    end_sec = end_sec if end_sec is not None and end_sec >= 0 else None
    if start_sec is not None and end_sec is not None and start_sec > end_sec:
        raise BadRequest(f"start_sec: {start_sec:g} is after end_sec {end_sec:g}")
    slices = vid_slices if vid_slices > 0 else None
    if slices is not None and vid_slice < 0:  # a strip: all slices side by side
        for size, name in ((width, "width"), (height, "height")):
            if (size or 0) * slices >= 65500:
                raise BadRequest(f"vid_slices: a strip of {slices} × {name} {size} is too large (limit 65500)")

    rel_width = params.integer("rel_width", -1, -1, _MAX_FRAME)
    rel_height = params.integer("rel_height", -1, -1, _MAX_FRAME)
    density = params.integer("density", 0, 0, MAX_DIMENSION)
    return ThumbnailRequest(
        entry=entry,
        width=width or 0,
        height=height or 0,
        mode=mode,
        bgcolor=bgcolor,
        quality=quality or None,
        region=Region(*(params.integer(key, 0, 0, MAX_DIMENSION) for key in ("src_x", "src_y", "src_w", "src_h"))),
        rel_width=rel_width if rel_width > 0 else None,
        rel_height=rel_height if rel_height > 0 else None,
        vid_sec=vid_sec if vid_sec is not None and vid_sec >= 0 else None,
        vid_slices=slices,
        vid_slice=None if slices is None or vid_slice < 0 else min(vid_slice, slices - 1),
        start_sec=start_sec,
        end_sec=end_sec,
        density=density or None,
        strip=params.flag("strip"),
        format=output_format,
        version=params.version(),
        flavor_id=params.flavor(),
        file_name=params.get("file_name"),
        ks=params.get("ks"),
    )


def _milliseconds(params: _Params, key: str) -> int | None:
    value = params.number(key)
    if value is None:
        return None
    if value < 0:
        raise BadRequest(f"{key}: {value:g} is negative")
    return int(value)


def _clip(partner_id: int, params: _Params) -> ClipRequest:
    entry = params.entry(partner_id)
    flavor = params.get("flavor")
    clip_from = _milliseconds(params, "clip_from")
    if clip_from is None:
        clip_from = _milliseconds(params, "seek_from")
    clip_to = _milliseconds(params, "clip_to") or None
    clip_from = clip_from or 0
    if clip_to is not None and clip_from >= clip_to:
        raise BadRequest(f"clip_from: {clip_from} ms is not before clip_to {clip_to} ms")
    container = None
    if params.trailing:
        suffix = params.trailing.rpartition(".")[2].lower()
        container = suffix if suffix in ("mp4", "flv") else None
    return ClipRequest(
        entry=entry,
        flavor_id=None if flavor in (None, "1") else params.flavor(),
        clip_from_ms=clip_from,
        clip_to_ms=clip_to,
        container=container,
        ks=params.get("ks"),
        referrer=params.get("referrer"),
    )


def _raw(partner_id: int, params: _Params) -> RawRequest:
    entry = params.entry(partner_id)
    extension = None
    if (params.get("type") or "").lower() == "download" and params.get("format"):
        extension = params.get("format").lower()
        if not _EXTENSION.match(extension):
            raise BadRequest(f"format: {extension[:40]!r} is not a file extension")
    return RawRequest(
        entry=entry,
        selector=FileSelector(flavor_id=params.flavor(), version=params.version(), extension=extension),
        file_name=params.get("file_name") or None,
        direct_serve=params.flag("direct_serve"),
        ks=params.get("ks"),
    )


def build(service: str, partner_id: int, entry_id: str, params: dict[str, str] | None = None, *,
          subpartner_id: int | None = None) -> str:
    """A path in the Kaltura grammar: `/p/{P}/sp/{SP}/{service}/entry_id/{id}/{key}/{value}...` (checked by parsing it
    back, so a URL that would be refused is refused here)."""
    if service not in ("thumbnail", "flvclipper", "raw"):
        raise BadRequest(f"service: {service!r} is not thumbnail, flvclipper or raw")
    subpartner = subpartner_id if subpartner_id is not None else partner_id * 100
    segments = ["p", str(partner_id), "sp", str(subpartner), service, "entry_id", entry_id]
    for key, value in (params or {}).items():
        segments += [quote(str(key), safe=""), quote(str(value), safe="!")]
    path = "/" + "/".join(segments)
    parse(path, partner_id)
    return path
