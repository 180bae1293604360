"""The Kaltura URL grammar (SPEC §1–4): a request path and query string → one typed, frozen request.

    /[s/]p/{P}[/sp/{SP}]/{service}/{key}/{value}/...[/trailing-file-name]?key=value...
    /[s/]flvclipper/{key}/{value}/...                       (partner from [defaults] partner_id)

Every parameter is parsed, checked and normalised here, so the services receive values they can trust and a
canonical `cache_key()`; a malformed value is a `BadRequest` naming it. Nothing here touches files or images. The
values a thumbnail is made of (`ThumbnailOptions`, `Region`, `ResizeMode`, ...) are options.py's, which media shares.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import NamedTuple
from urllib.parse import parse_qsl, quote, unquote

from .errors import BadRequest, NotFound
from .options import MAX_DIMENSION, STRIP_LIMIT, OutputFormat, Region, ResizeMode, ThumbnailOptions
from .refs import ID_PATTERN, EntryRef, FileSelector

MAX_VERSION = 10_000_000
_MAX_FRAME = 1_000_000  # rel_width/rel_height: the frame the source region was measured in
_INTEGER = re.compile(r"[+-]?[0-9]+\Z")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)\Z")
_HEX_COLOUR = re.compile(r"[0-9A-Fa-f]{1,6}\Z")
_EXTENSION = re.compile(r"[A-Za-z0-9]{1,10}\Z")
_THUMBNAIL_VALUE_SUFFIX = re.compile(r"\.(jpg|gif|png)\Z")
_FALSY = frozenset({"", "0", "false", "no", "off"})
_PARTNER_INTEGER = re.compile(r"-?[0-9]{1,18}\Z")


@dataclass(frozen=True, slots=True)
class ThumbnailRequest:
    """A thumbnail of an entry: the picture asked for (`options`, what media renders), the frames of a video it is
    made of, and which of the entry's files. The picture's parameters read through it as the URL names them
    (`request.width` is `request.options.width`)."""

    entry: EntryRef
    options: ThumbnailOptions
    quality: int | None = None  # None = the partner's default
    vid_sec: float | None = None  # None = the entry's thumb_offset, else 3 s
    vid_slices: int | None = None
    vid_slice: int | None = None  # None with vid_slices = a strip of all slices
    start_sec: float | None = None
    end_sec: float | None = None
    version: int | None = None
    flavor_id: str | None = None
    file_name: str | None = field(default=None, compare=False)
    # False: no `format` in the URL, so jpg is the service's default, which `[http] auto_format` turns into a
    # negotiation. Not compared: under the default config an absent format and `format/jpg` are the same picture.
    format_given: bool = field(default=False, compare=False)

    service = "thumbnail"

    @property
    def is_strip(self) -> bool:
        return self.vid_slices is not None and self.vid_slice is None

    def in_format(self, output: OutputFormat) -> ThumbnailRequest:
        """The same request answered in `output` (format/auto, once negotiated)."""
        if output is self.options.format:  # jpg negotiated where no format was given: nothing to copy
            return self
        return dataclasses.replace(self, options=dataclasses.replace(self.options, format=output))

    def cache_key(self) -> str:
        """Equal for every URL that asks for the same picture (order, aliases, defaults and the KS do not count).

        Quality is left out: it resolves against the partner's default, so the service appends the effective one.
        """
        return _thumbnail_key(self)

    @property
    def width(self) -> int:
        return self.options.width

    @property
    def height(self) -> int:
        return self.options.height

    @property
    def mode(self) -> ResizeMode:
        return self.options.mode

    @property
    def bgcolor(self) -> int:
        return self.options.bgcolor

    @property
    def region(self) -> Region:
        return self.options.region

    @property
    def rel_width(self) -> int | None:
        return self.options.rel_width

    @property
    def rel_height(self) -> int | None:
        return self.options.rel_height

    @property
    def density(self) -> int | None:
        return self.options.density

    @property
    def strip(self) -> bool:
        return self.options.strip

    @property
    def format(self) -> OutputFormat:
        return self.options.format


@dataclass(frozen=True, slots=True)
class ClipRequest:
    entry: EntryRef
    flavor_id: str | None = None  # None = the best playable flavor, else the original
    clip_from_ms: int = 0
    clip_to_ms: int | None = None  # None = to the end
    container: str | None = None  # "mp4"/"flv" from a trailing /a.mp4; None = follow the source
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

    service = "raw"


ServiceRequest = ThumbnailRequest | ClipRequest | RawRequest


class NoteKind(StrEnum):
    """How a URL was read where it is not read literally."""

    ALIAS = "alias"  # a key read as another (entryId → entry_id, seek_from → clip_from)
    CLAMPED = "clamped"  # a value out of its range, brought into it
    DEFAULT = "default"  # a value absent, zero or negative: what is used instead
    IGNORED = "ignored"  # a key, prefix or trailing segment that changes nothing
    OVERRIDDEN = "overridden"  # a key given more than once: which value is used
    READ_AS = "read_as"  # a value read otherwise than written (a .jpg dropped, 320! forcing type 5, fff = #000fff)


@dataclass(frozen=True, slots=True)
class Note:
    """One remark of the parser about a key, made where the key's value is read: `height` clamped to 10000."""

    kind: NoteKind
    key: str
    detail: str

    def __str__(self) -> str:
        return f"`{self.key}` {self.detail}"


@dataclass(frozen=True, slots=True)
class Parsed:
    """A request target as the services read it: the request, the parser's notes on how it read it, the pairs it was
    given (decoded, aliases folded, the winning value of each key), and the KS it carried. Only what has no KS in it
    is ever remembered between requests: `ks` is attached per call."""

    request: ServiceRequest
    notes: tuple[Note, ...] = ()
    given: tuple[tuple[str, str], ...] = ()
    ks: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Route:
    """What the start of a path names: the service and the partner (nothing of the parameters)."""

    service: str
    partner_id: int


ParameterValue = int | float | str | bool | None


@dataclass(frozen=True, slots=True)
class Parameter:
    """One parameter of a service as the service uses it (None: the service decides, e.g. the partner's quality)."""

    key: str
    value: ParameterValue
    given: str | None  # the URL's text for it, None when absent
    canonical: bool  # written in the canonical path (differs from what an absent key gives)


# What a thumbnail's cache key is made of, in this order and spelling (`width=320|mode=<ResizeMode.FIT: 1>`): the
# results kept on disk are found by these keys, so a change here orphans them. Every parameter of the picture but
# the quality is in it (tests/test_options.py checks that none is forgotten).
_THUMBNAIL_KEY_PARTS = ("entry", "width", "height", "mode", "bgcolor", "region", "rel_width", "rel_height", "vid_sec",
                        "vid_slices", "vid_slice", "start_sec", "end_sec", "density", "strip", "format", "version",
                        "flavor_id")


def _thumbnail_key(request: ThumbnailRequest) -> str:
    """`"thumbnail|" + "|".join(f"{name}={getattr(request, name)!r}" for name in _THUMBNAIL_KEY_PARTS)`, spelt out
    (every cold request builds one; tests/test_urls.py checks the two agree), the reprs of the dataclasses and
    enums in it remembered."""
    options = request.options
    return (f"thumbnail|entry={_repr(request.entry)}|width={options.width!r}|height={options.height!r}"
            f"|mode={_repr(options.mode)}|bgcolor={options.bgcolor!r}|region={_repr(options.region)}"
            f"|rel_width={options.rel_width!r}|rel_height={options.rel_height!r}|vid_sec={request.vid_sec!r}"
            f"|vid_slices={request.vid_slices!r}|vid_slice={request.vid_slice!r}|start_sec={request.start_sec!r}"
            f"|end_sec={request.end_sec!r}|density={options.density!r}|strip={options.strip!r}"
            f"|format={_repr(options.format)}|version={request.version!r}|flavor_id={request.flavor_id!r}")


_repr = functools.lru_cache(maxsize=4096)(repr)


def parse(target: str, default_partner_id: int) -> ServiceRequest:
    """The request a target asks for (`/p/100/sp/10000/raw/entry_id/0_abc?ks=...`, still percent-encoded)."""
    return parse_target(target, default_partner_id).request


def parse_target(target: str, default_partner_id: int) -> Parsed:
    """The whole reading of a request target: the request, the notes, and the KS (taken out before the memo)."""
    if not _may_hold_ks(target):  # the hot path: a few substring scans, then the memo
        return _parse_without_ks(target, default_partner_id)
    without_ks, ks = split_ks(target)
    parsed = _parse_without_ks(without_ks, default_partner_id)
    return parsed if ks is None else Parsed(parsed.request, parsed.notes, parsed.given, ks)


def _may_hold_ks(target: str) -> bool:
    """False when no spelling of a `ks` key (`ks`, `%6Bs`, `k%73`, ...) can be in the target."""
    return "ks" in target or "%6" in target or "%73" in target


def split_ks(target: str) -> tuple[str, str | None]:
    """The target without its `ks` pairs, and the KS the parser reads (the path's last, else the query's last; a
    thumbnail's `.jpg` suffix dropped). Cheap, and never remembered, so no memo keeps a KS."""
    if not _may_hold_ks(target):
        return target, None
    path, _, query = target.partition("?")
    path_ks = query_ks = None
    if _may_hold_ks(path):
        segments = _segments(path)
        pairs_from = _pairs_start(segments)
        if pairs_from is None:  # parse refuses the target whatever follows, and refusals are not remembered
            return target, None
        kept, pairs = segments[:pairs_from], segments[pairs_from:]
        for index in range(0, len(pairs) - 1, 2):
            if _is_ks_key(pairs[index]):
                path_ks = unquote(pairs[index + 1])
            else:
                kept += pairs[index:index + 2]
        if len(pairs) % 2:
            kept.append(pairs[-1])
        path = "/" + "/".join(kept)
    items = []
    for item in query.split("&") if query else ():
        key, _, value = item.partition("=")
        if _is_ks_key(key.replace("+", " ")):
            query_ks = unquote(value.replace("+", " "))
        elif item:
            items.append(item)
    ks = path_ks if path_ks is not None else query_ks
    if ks is not None and _THUMBNAIL_VALUE_SUFFIX.search(ks):
        segments = _segments(path)
        pairs_from = _pairs_start(segments)
        if pairs_from is not None and segments[pairs_from - 1] == "thumbnail":
            ks = _THUMBNAIL_VALUE_SUFFIX.sub("", ks)
    return path + ("?" + "&".join(items) if items else ""), ks


def _is_ks_key(text: str) -> bool:
    return text == "ks" or ("%" in text and unquote(text) == "ks")


def _pairs_start(segments: list[str]) -> int | None:
    """Where the key/value pairs start, for any path `_route` accepts (None for most it refuses)."""
    skipped = 1 if segments[:1] == ["s"] else 0
    if segments[skipped:skipped + 1] == ["flvclipper"]:
        return skipped + 1
    service_at = skipped + (4 if segments[skipped + 2:skipped + 3] == ["sp"] else 2)
    if segments[skipped:skipped + 1] != ["p"] or segments[service_at:service_at + 1] not in _SERVICES:
        return None
    return service_at + 1


_SERVICES = (["thumbnail"], ["flvclipper"], ["raw"])


def route(target: str, default_partner_id: int) -> Route:
    """The service and partner a target names (NotFound / BadRequest as parse raises them for its start)."""
    return _route(_segments(target.partition("?")[0]), default_partner_id)[0]


@functools.lru_cache(maxsize=16384)  # hot URLs repeat: their (immutable, KS-free) reading is remembered
def _parse_without_ks(target: str, default_partner_id: int) -> Parsed:
    return _plain_thumbnail(target) or _parse_general(target, default_partner_id)


# The shape most thumbnail URLs have: /p/P[/sp/S]/thumbnail/ then plain key/value pairs, no query string
_PLAIN_THUMBNAIL = re.compile(r"/p/([0-9]{1,18})(?:/sp/[0-9]{1,18})?/thumbnail((?:/[a-z_]+/[A-Za-z0-9_]{1,64})+)/?\Z")
_PLAIN_RANGES = (("width", 1, MAX_DIMENSION), ("height", 1, MAX_DIMENSION), ("type", 1, 5), ("quality", 1, 100),
                 ("version", 0, MAX_VERSION))  # where the general reading takes the value as it is, without a note
_PLAIN_KEYS = frozenset({"entry_id", *(key for key, _, _ in _PLAIN_RANGES)})


def _plain_thumbnail(target: str) -> Parsed | None:
    """The reading of a target of the commonest shape, without the general reader's machinery (every cold request
    pays for the parse): entry_id with width and/or height, and type 1–5, quality 1–100 and version, as plain digits
    in range, each key once, in any order. None for anything else, which the general reading reads; where this
    answers, it answers exactly what that would (tests/test_urls.py checks it on generated URLs)."""
    match = _PLAIN_THUMBNAIL.match(target)
    if match is None:
        return None
    pairs = match.group(2).split("/")
    values = dict(zip(pairs[1::2], pairs[2::2]))
    if len(values) * 2 + 1 != len(pairs) or not values.keys() <= _PLAIN_KEYS or "entry_id" not in values:
        return None
    numbers = {}
    for key, low, high in _PLAIN_RANGES:
        text = values.get(key)
        if text is not None:
            if not text.isdigit() or len(text) > 8 or not low <= int(text) <= high:
                return None  # a value the general reading notes (read as, clamped, defaulted) or refuses
            numbers[key] = int(text)
    width, height = numbers.get("width"), numbers.get("height")
    if width is None and height is None:
        return None
    mode = ResizeMode(numbers.get("type", 1))
    notes = ()
    if width is None or height is None:  # as _box notes it
        notes = (Note(NoteKind.DEFAULT, "width" if width is None else "height", _absent_side(mode)),)
    request = ThumbnailRequest(entry=EntryRef(int(match.group(1)), values["entry_id"]),
                               options=ThumbnailOptions(width=width or 0, height=height or 0, mode=mode),
                               quality=numbers.get("quality"), version=numbers.get("version"))
    return Parsed(request, notes, tuple(values.items()))


def _parse_general(target: str, default_partner_id: int) -> Parsed:
    path, _, query = target.partition("?")
    segments = _segments(path)
    where, pairs_from = _route(segments, default_partner_id)
    prefix_notes = []
    if segments[:1] == ["s"]:
        prefix_notes.append(Note(NoteKind.IGNORED, "/s/", "ignored (a CDN's \"secured\" prefix)"))
    if pairs_from <= 2 and segments[pairs_from - 1] == "flvclipper":  # /flvclipper or /s/flvclipper: no /p/
        prefix_notes.append(Note(NoteKind.DEFAULT, "/p/",
                                 f"absent: partner {default_partner_id} ([defaults] partner_id)"))
    rest = segments[pairs_from:]
    if where.service == "thumbnail":
        params = _Params(where.service, rest, query, "flavor_id", strip_suffixes=True)
        request = _thumbnail(where.partner_id, params)
    elif where.service == "flvclipper":
        params = _Params(where.service, rest, query, "flavor")
        request = _clip(where.partner_id, params)
    else:
        params = _Params(where.service, rest, query, "flavor_id")
        request = _raw(where.partner_id, params)
    return Parsed(request, tuple(dict.fromkeys(prefix_notes + params.finish())), tuple(params.given.items()))


def _segments(path: str) -> list[str]:
    return [segment for segment in path.split("/") if segment]


def redact_ks(target: str) -> str:
    """The request target for logs: every value that may be a KS (after a `ks` key, however spelt) replaced; so is
    a KS inside the link given to /explain (`?url=...`)."""
    path, mark, query = target.partition("?")
    segments = _segments(path)
    redacted = [("[redacted]" if index and unquote(segments[index - 1]) == "ks" else segment)
                for index, segment in enumerate(segments)]
    pairs = []
    for key, _, value in (item.partition("=") for item in query.split("&")) if query else ():
        name = unquote(key.replace("+", " "))
        if name == "ks":
            value = "[redacted]"
        elif name == "url" and _may_hold_ks(unquote(value.replace("+", " "))):
            value = quote(redact_link(unquote(value.replace("+", " "))), safe=":/")
        pairs.append((key, value))
    return "/" + "/".join(redacted) + mark + "&".join(f"{key}={value}" for key, value in pairs)


def redact_link(link: str) -> str:
    """A link (`https://host/p/...`, `host/p/...` or a bare target) with its KS redacted, its scheme and host kept."""
    origin = _ORIGIN.match(link)
    start = origin.end() if origin else link.find("/")
    if start < 0 or start == len(link):
        return link
    return link[:start] + redact_ks(link[start:])


_ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")


def _route(segments: list[str], default_partner_id: int) -> tuple[Route, int]:
    """The route, and the index of the segment where the key/value pairs start."""
    skipped = 1 if segments[:1] == ["s"] else 0  # CDN "secured" prefix
    segments = segments[skipped:]
    if segments[:1] == ["flvclipper"]:
        return Route("flvclipper", default_partner_id), skipped + 1
    if len(segments) < 3 or segments[0] != "p":
        raise NotFound("no such service: use /p/{partner_id}/sp/{subp_id}/thumbnail|flvclipper|raw/...")
    partner_id = _partner_integer("partner_id", segments[1])
    service_at = 2
    if segments[2] == "sp":
        if len(segments) < 5:
            raise NotFound("no such service after /sp/{subp_id}/")
        _partner_integer("sp", segments[3])
        service_at = 4
    service = segments[service_at]
    if service not in ("thumbnail", "flvclipper", "raw"):
        raise NotFound(f"no such service: {unquote(service)[:40]!r} (use thumbnail, flvclipper or raw)")
    return Route(service, partner_id), skipped + service_at + 1


def _partner_integer(name: str, text: str) -> int:
    if not _PARTNER_INTEGER.match(text):  # past 18 digits it is no partner of a 64-bit world
        raise BadRequest(f"{name}: {unquote(text)[:40]!r} is not an integer of at most 18 digits")
    return int(text)


def _shown(text: str) -> str:
    """A value quoted in a note, cut short."""
    return repr(text if len(text) <= 40 else text[:39] + "…")


# keys of one service sent to another: named in the note, since "ignored" alone would puzzle
_MISPLACED = {
    ("flvclipper", "flavor_id"): "ignored (a clip's flavor is `flavor`)",
    ("thumbnail", "flavor"): "ignored (a thumbnail's flavor is `flavor_id`)",
    ("raw", "flavor"): "ignored (raw's flavor is `flavor_id`)",
}


class _Params:
    """Key/value pairs from the path (winning) and the query string, decoded and with aliases folded; it notes what
    it does to them as it reads them, and which keys were never read (ignored)."""

    def __init__(self, service: str, path_segments: list[str], query: str, flavor_key: str, *,
                 strip_suffixes: bool = False):
        self.service = service
        self.flavor_key = flavor_key
        self.notes: list[Note] = []
        self._read: set[str] = set()
        query_values = self._pairs(parse_qsl(query, keep_blank_values=True), "in the query string") if query else {}
        self.trailing = unquote(path_segments[-1]) if len(path_segments) % 2 else None
        self.trailing_used = False
        path_values = self._pairs(((unquote(path_segments[2 * index]), unquote(path_segments[2 * index + 1]))
                                   for index in range(len(path_segments) // 2)), "in the path")
        for key, value in path_values.items():
            if key in query_values and query_values[key] != value:
                self.notes.append(Note(NoteKind.OVERRIDDEN, key, f"in the path ({_shown(value)}) beats the query "
                                                                 f"string's ({_shown(query_values[key])})"))
        values = {**query_values, **path_values}
        self.given = dict(values)
        if strip_suffixes:
            for key, value in values.items():
                if "." not in value:
                    continue
                stripped = _THUMBNAIL_VALUE_SUFFIX.sub("", value)
                if stripped != value:
                    self.notes.append(Note(NoteKind.READ_AS, key, f"read as {_shown(stripped)} "
                                                                  f"({value[len(stripped):]} dropped)"))
                    values[key] = stripped
        self.values = values

    def _pairs(self, pairs, where: str) -> dict[str, str]:
        aliases = {"entryId": "entry_id", "flavorId": self.flavor_key}
        values: dict[str, str] = {}
        for key, value in pairs:
            name = aliases.get(key, key)
            if name != key:
                self.notes.append(Note(NoteKind.ALIAS, key, f"read as `{name}`"))
            if name in values and values[name] != value:
                self.notes.append(Note(NoteKind.OVERRIDDEN, name, f"given more than once {where}: the last "
                                                                  f"({_shown(value)}) is used"))
            values[name] = value
        return values

    def note(self, kind: NoteKind, key: str, detail: str) -> None:
        self.notes.append(Note(kind, key, detail))

    def given_text(self, key: str) -> str | None:
        """The value as the URL gave it, without reading it (so it does not count as used)."""
        return self.values.get(key)

    def get(self, key: str) -> str | None:
        self._read.add(key)
        return self.values.get(key)

    def names_any(self, keys: Iterable[str]) -> bool:
        """Whether the URL gives any of `keys`: a group of keys none of which is given reads as its defaults, with
        no note (an absent key makes none), so the parser may skip reading them one by one."""
        return not self.values.keys().isdisjoint(keys)

    def unused(self, key: str, why: str) -> None:
        """A known key that this URL's other parameters make pointless."""
        self._read.add(key)
        if key in self.values:
            self.notes.append(Note(NoteKind.IGNORED, key, f"ignored ({why})"))

    def accepted(self, key: str, why: str) -> str | None:
        """A key that is read and kept but changes nothing in the answer."""
        value = self.get(key)
        if value is not None:
            self.notes.append(Note(NoteKind.IGNORED, key, f"accepted, changes nothing ({why})"))
        return value

    def finish(self) -> list[Note]:
        ignored = [Note(NoteKind.IGNORED, key, _MISPLACED.get((self.service, key), "ignored"))
                   for key in self.values if key not in self._read]
        if self.trailing is not None and not self.trailing_used:
            what = "a trailing file name" if "." in self.trailing else "a trailing key without a value"
            ignored.append(Note(NoteKind.IGNORED, self.trailing, f"ignored ({what})"))
        return self.notes + ignored

    def entry(self, partner_id: int) -> EntryRef:
        entry_id = self.get("entry_id")
        if entry_id is None:
            raise BadRequest("entry_id: missing")
        return EntryRef(partner_id, _identifier("entry_id", entry_id))

    def flavor(self) -> str | None:
        value = self.get(self.flavor_key)
        return None if value is None else _identifier(self.flavor_key, value)

    def version(self) -> int | None:
        """None when absent or negative (Kaltura's -1 = absent), else clamped to 0..MAX_VERSION."""
        version = self.integer("version", -1, -1, MAX_VERSION, negative="none")
        return version if version >= 0 else None

    def integer(self, key: str, default: int, low: int, high: int, *, negative: str | None = None) -> int:
        """An integer clamped into low..high (as Kaltura does); not a number at all is a BadRequest. `negative`: what a
        negative value means, where low is the -1 that stands for "none"."""
        text = self.get(key)
        if text is None or text == "":
            return default
        if not _INTEGER.match(text):
            raise BadRequest(f"{key}: {text[:40]!r} is not an integer")
        value = _integer(text)
        used = min(max(value, low), high)
        if negative is not None and value < 0:
            self.note(NoteKind.DEFAULT, key, f"{_shown(text)} is negative: {negative}")
        elif used != value:
            self.note(NoteKind.CLAMPED, key, f"clamped to {used}")
        return used

    def number(self, key: str, *, negative: str | None = None) -> float | None:
        text = self.get(key)
        if text is None or text == "":
            return None
        if not _NUMBER.match(text):
            raise BadRequest(f"{key}: {text[:40]!r} is not a number")
        value = float(text)
        if not math.isfinite(value):
            raise BadRequest(f"{key}: {text[:40]!r} is out of range")
        if negative is not None and value < 0:
            self.note(NoteKind.DEFAULT, key, f"{_shown(text)} is negative: {negative}")
        return value

    def flag(self, key: str) -> bool:
        text = self.get(key)
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
    if forced:
        params.note(NoteKind.READ_AS, key, f"{_shown(text)}: the `!` forces type 5 (stretch)")
    if value < 0:
        params.note(NoteKind.DEFAULT, key, f"{_shown(text)} is negative: absent")
        return None, forced
    if value > MAX_DIMENSION:
        params.note(NoteKind.CLAMPED, key, f"clamped to {MAX_DIMENSION}")
    return min(value, MAX_DIMENSION), forced


def _mode(params: _Params) -> ResizeMode:
    text = params.get("type")
    if text is None or text == "":
        return ResizeMode.FIT
    if not _INTEGER.match(text) or _integer(text) < 1:  # as Kaltura: 0, negative and non-numeric types are type 1
        params.note(NoteKind.DEFAULT, "type", f"{_shown(text)} read as 1 (fit)")
        return ResizeMode.FIT
    if _integer(text) > 5:
        params.note(NoteKind.CLAMPED, "type", "clamped to 5")
    return ResizeMode(min(_integer(text), 5))


def _thumbnail(partner_id: int, params: _Params) -> ThumbnailRequest:
    # the parameters are read in this order: it is the order of the notes, and of the errors when several are wrong
    entry = params.entry(partner_id)
    width, height, mode = _box(params)
    bgcolor = _bgcolor(params)
    quality = _quality(params)
    output_format, format_given = _output_format(params)
    frames = _frames(params, width, height) if params.names_any(_FRAME_KEYS) else _NO_FRAMES
    rel_width, rel_height = _frame_side(params, "rel_width"), _frame_side(params, "rel_height")
    density = params.integer("density", 0, 0, MAX_DIMENSION)
    region = _region(params) if params.names_any(_REGION_KEYS) else _WHOLE
    options = ThumbnailOptions(width=width, height=height, mode=mode, bgcolor=bgcolor, region=region,
                               rel_width=rel_width, rel_height=rel_height, density=density or None,
                               strip=params.flag("strip"), format=output_format)
    return ThumbnailRequest(
        entry=entry,
        options=options,
        quality=quality,
        vid_sec=frames.vid_sec,
        vid_slices=frames.vid_slices,
        vid_slice=frames.vid_slice,
        start_sec=frames.start_sec,
        end_sec=frames.end_sec,
        version=params.version(),
        flavor_id=params.flavor(),
        file_name=params.accepted("file_name", "a thumbnail is not a download"),
        format_given=format_given,
    )


_DEFAULT_BOX = (120, 90)  # Kaltura's, when neither width nor height (nor def_width/def_height) is given


def _box(params: _Params) -> tuple[int, int, ResizeMode]:
    """width and height (0 = follows the other side; both 0 = the source's size), and the resize mode (type)."""
    width, width_forced = _dimension(params, "width")
    height, height_forced = _dimension(params, "height")
    if width_forced or height_forced:
        mode = ResizeMode.STRETCH
        params.unused("type", "a `!` in the size forces type 5")
    else:
        mode = _mode(params)
    if width is None and height is None:
        return *_default_box(params), mode
    for key in ("def_width", "def_height"):
        params.unused(key, "width or height is given")
    if width == 0 and height == 0:
        params.note(NoteKind.READ_AS, "width", "and `height` 0: the source's own size")
    for key, size, other in (("width", width, height), ("height", height, width)):
        if size is None and other:
            params.note(NoteKind.DEFAULT, key, _absent_side(mode))
    return width or 0, height or 0, mode


def _absent_side(mode: ResizeMode) -> str:
    """The note on a side absent beside the other one."""
    if mode in (ResizeMode.CROP_CENTER, ResizeMode.CROP_TOP):
        return "absent: equals the other side (a square)"
    return "absent: follows the source's aspect ratio"


def _default_box(params: _Params) -> tuple[int, int]:
    """The size without width and height: def_width × def_height where either is positive, else 120×90."""
    def_width = params.integer("def_width", -1, -1, MAX_DIMENSION, negative="none")
    def_height = params.integer("def_height", -1, -1, MAX_DIMENSION, negative="none")
    if def_width > 0 or def_height > 0:
        width, height = max(def_width, 0), max(def_height, 0)
        params.note(NoteKind.DEFAULT, "width", f"and `height` absent: def_width × def_height, {width}×{height}")
        return width, height
    width, height = _DEFAULT_BOX
    params.note(NoteKind.DEFAULT, "width", f"and `height` absent: the default box, {width}×{height}")
    return width, height


def _bgcolor(params: _Params) -> int:
    text = params.get("bgcolor")
    if text is None or text == "":
        return 0xFFFFFF
    if not _HEX_COLOUR.match(text):
        raise BadRequest(f"bgcolor: {text[:40]!r} is not 1-6 hex digits")
    colour = int(text, 16)
    if len(text) < 6:
        params.note(NoteKind.READ_AS, "bgcolor", f"{_shown(text)} read as #{colour:06x} (a number, not CSS shorthand)")
    return colour


def _quality(params: _Params) -> int | None:
    """1..100, or None for the partner's default (absent or 0)."""
    quality = params.integer("quality", 0, 0, 100)
    if quality == 0 and params.given_text("quality"):
        params.note(NoteKind.DEFAULT, "quality", "0: the partner's default")
    return quality or None


def _output_format(params: _Params) -> tuple[OutputFormat, bool]:
    """The format, and whether the URL names one (jpg otherwise)."""
    text = params.get("format") or ""
    try:
        output_format = OutputFormat({"": "jpg", "jpeg": "jpg"}.get(text.lower(), text.lower()))
    except ValueError:
        raise BadRequest(f"format: {text.lower()[:40]!r} is not one of jpg, png, gif, webp, avif, auto") from None
    if text and output_format.value != text:
        params.note(NoteKind.READ_AS, "format", f"read as {output_format.value}")
    return output_format, text != ""


class _Frames(NamedTuple):
    """Which frames of a video a thumbnail shows, as ThumbnailRequest holds them (None: absent or negative)."""

    vid_sec: float | None
    vid_slices: int | None
    vid_slice: int | None
    start_sec: float | None
    end_sec: float | None


_FRAME_KEYS = ("vid_sec", "vid_slices", "vid_slice", "start_sec", "end_sec")
_NO_FRAMES = _Frames(None, None, None, None, None)


def _frames(params: _Params, width: int, height: int) -> _Frames:
    """A strip (vid_slices without vid_slice) must stay within STRIP_LIMIT pixels along both sides."""
    vid_sec = params.number("vid_sec", negative="the entry's thumb_offset, else 3 s")
    vid_slices = params.integer("vid_slices", -1, -1, MAX_DIMENSION, negative="none")
    if vid_slices == 0:
        raise BadRequest("vid_slices: must be at least 1")
    vid_slice = params.integer("vid_slice", -1, -1, MAX_DIMENSION, negative="none")
    start_sec, end_sec = _window(params)
    slices = vid_slices if vid_slices > 0 else None
    if slices is not None and vid_slice < 0:  # a strip: all slices side by side
        for size, name in ((width, "width"), (height, "height")):
            if size * slices >= STRIP_LIMIT:
                raise BadRequest(f"vid_slices: a strip of {slices} × {name} {size} is too large "
                                 f"(limit {STRIP_LIMIT})")
    if slices is None:
        for key in ("vid_slice", "start_sec", "end_sec"):
            params.unused(key, "no vid_slices")
    else:
        params.unused("vid_sec", "vid_slices sets the times")
        if vid_slice >= slices:
            params.note(NoteKind.CLAMPED, "vid_slice", f"clamped to {slices - 1} (the last of {slices} slices)")
    return _Frames(vid_sec if vid_sec is not None and vid_sec >= 0 else None, slices,
                   None if slices is None or vid_slice < 0 else min(vid_slice, slices - 1), start_sec, end_sec)


def _window(params: _Params) -> tuple[float | None, float | None]:
    """start_sec and end_sec, the part of a video the slices divide (None where absent or negative)."""
    start_sec = params.number("start_sec", negative="none")
    end_sec = params.number("end_sec", negative="none")
    start_sec = start_sec if start_sec is not None and start_sec >= 0 else None
    end_sec = end_sec if end_sec is not None and end_sec >= 0 else None
    if start_sec is not None and end_sec is not None and start_sec > end_sec:
        raise BadRequest(f"start_sec: {start_sec:g} is after end_sec {end_sec:g}")
    return start_sec, end_sec


def _frame_side(params: _Params, key: str) -> int | None:
    """rel_width/rel_height: a side of the frame the source region was measured in, None where absent or < 1."""
    value = params.integer(key, -1, -1, _MAX_FRAME, negative="none")
    return value if value > 0 else None


_REGION_KEYS = ("src_x", "src_y", "src_w", "src_h")
_WHOLE = Region()


def _region(params: _Params) -> Region:
    return Region(*(params.integer(key, 0, 0, MAX_DIMENSION) for key in _REGION_KEYS))


def _milliseconds(params: _Params, key: str) -> int | None:
    value = params.number(key)
    if value is None:
        return None
    if value < 0:
        raise BadRequest(f"{key}: {value:g} is negative")
    if value != int(value):
        params.note(NoteKind.READ_AS, key, f"read as {int(value)} (whole milliseconds)")
    return int(value)


def _clip(partner_id: int, params: _Params) -> ClipRequest:
    entry = params.entry(partner_id)
    flavor = params.given_text("flavor")
    clip_from = _milliseconds(params, "clip_from")
    if clip_from is None:
        clip_from = _milliseconds(params, "seek_from")
        if clip_from is not None:
            params.note(NoteKind.ALIAS, "seek_from", "read as `clip_from`")
    else:
        params.unused("seek_from", "clip_from is given")
    clip_to = _milliseconds(params, "clip_to") or None
    if clip_to is None and params.given_text("clip_to"):
        params.note(NoteKind.DEFAULT, "clip_to", "0: to the end")
    clip_from = clip_from or 0
    if clip_to is not None and clip_from >= clip_to:
        raise BadRequest(f"clip_from: {clip_from} ms is not before clip_to {clip_to} ms")
    container = None
    if params.trailing:
        suffix = params.trailing.rpartition(".")[2].lower()
        container = suffix if suffix in ("mp4", "flv") else None
        if container:
            params.trailing_used = True
            params.note(NoteKind.READ_AS, params.trailing, f"read as the output container: {container}")
    if flavor == "1":
        params.get("flavor")
        params.note(NoteKind.DEFAULT, "flavor", "1: the best playable flavor")
    return ClipRequest(
        entry=entry,
        flavor_id=None if flavor in (None, "1") else params.flavor(),
        clip_from_ms=clip_from,
        clip_to_ms=clip_to,
        container=container,
        referrer=params.accepted("referrer", "referrer restrictions are not checked"),
    )


def _raw(partner_id: int, params: _Params) -> RawRequest:
    entry = params.entry(partner_id)
    extension = None
    type_text, format_text = params.given_text("type"), params.given_text("format")
    if (type_text or "").lower() == "download" and format_text:
        params.get("type")
        extension = params.get("format").lower()
        if not _EXTENSION.match(extension):
            raise BadRequest(f"format: {extension[:40]!r} is not a file extension")
    else:
        for key in ("type", "format"):
            params.unused(key, "only type/download with a format selects a file")
    return RawRequest(
        entry=entry,
        selector=FileSelector(flavor_id=params.flavor(), version=params.version(), extension=extension),
        file_name=params.get("file_name") or None,
        direct_serve=params.flag("direct_serve"),
    )


def parameters(parsed: Parsed) -> tuple[Parameter, ...]:
    """Every parameter of the request's service with the value the service uses, in the canonical order."""
    given = dict(parsed.given)
    return tuple(Parameter(key, value, given.get(key), canonical)
                 for key, value, canonical in _values(parsed.request))


def canonical_path(request: ServiceRequest) -> str:
    """The shortest spelling of the request in the grammar, in a fixed order: every URL that parses to an equal
    request has this one path (`/p/{P}/sp/{P}00/{service}/entry_id/{id}/...`), and it parses back to that request."""
    segments = ["p", str(request.entry.partner_id), "sp", str(request.entry.partner_id * 100), request.service,
                "entry_id", request.entry.entry_id]
    trailing = []
    for key, value, canonical in _values(request):
        if not canonical:
            continue
        if key == "container":
            trailing = [f"a.{value}"]
        elif isinstance(request, RawRequest) and key == "format":
            segments += ["type", "download", "format", quote(str(value), safe="")]
        else:
            segments += [key, _canonical_text(value)]
    return "/" + "/".join(segments + trailing)


def _values(request: ServiceRequest) -> list[tuple[str, ParameterValue, bool]]:
    """(key, value used, written in the canonical path) for every parameter of the request's service."""
    if isinstance(request, ThumbnailRequest):
        region = request.region
        return [
            ("width", request.width, True), ("height", request.height, True),
            ("type", int(request.mode), request.mode is not ResizeMode.FIT),
            ("bgcolor", f"{request.bgcolor:06x}", request.bgcolor != 0xFFFFFF),
            ("quality", request.quality, request.quality is not None),
            ("src_x", region.x, region.x != 0), ("src_y", region.y, region.y != 0),
            ("src_w", region.width, region.width != 0), ("src_h", region.height, region.height != 0),
            ("rel_width", request.rel_width, request.rel_width is not None),
            ("rel_height", request.rel_height, request.rel_height is not None),
            ("vid_sec", request.vid_sec, request.vid_sec is not None),
            ("vid_slices", request.vid_slices, request.vid_slices is not None),
            ("vid_slice", request.vid_slice, request.vid_slice is not None),
            ("start_sec", request.start_sec, request.start_sec is not None),
            ("end_sec", request.end_sec, request.end_sec is not None),
            ("density", request.density, request.density is not None),
            ("strip", request.strip, request.strip),
            # a given jpg is written: under [http] auto_format, leaving it out would make the link negotiate
            ("format", request.format.value, request.format is not OutputFormat.JPG or request.format_given),
            ("version", request.version, request.version is not None),
            ("flavor_id", request.flavor_id, request.flavor_id is not None),
        ]
    if isinstance(request, ClipRequest):
        return [
            ("flavor", request.flavor_id, request.flavor_id is not None),
            ("clip_from", request.clip_from_ms, request.clip_from_ms != 0),
            ("clip_to", request.clip_to_ms, request.clip_to_ms is not None),
            ("container", request.container, request.container is not None),
        ]
    selector = request.selector
    return [
        ("flavor_id", selector.flavor_id, selector.flavor_id is not None),
        ("version", selector.version, selector.version is not None),
        ("format", selector.extension, selector.extension is not None),
        ("file_name", request.file_name, request.file_name is not None),
        ("direct_serve", request.direct_serve, request.direct_serve),
    ]


def _canonical_text(value: ParameterValue) -> str:
    if isinstance(value, bool):
        return "1"
    if isinstance(value, float):
        return format(Decimal(repr(value)), "f")  # every digit, never an exponent (the grammar has none)
    return quote(str(value), safe="")


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
