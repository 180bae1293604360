"""Range and If-Range (RFC 9110 §14, §13.1.5) decided once, as a pure function of the request's two headers and
the representation's size and validators. The caller streams what the answer says; nothing here does I/O.

    decide(range_header, if_range, size, etag, last_modified) -> Whole() | Partial(start, end, size)
                                                               | Unsatisfiable(size)

- No `Range`, one that is not valid `bytes` syntax, or another unit (`items=0-5`): `Whole` (200), as RFC 9110
  §14.2 says a server must (other units) or may (invalid syntax) ignore it.
- `If-Range` (only looked at when there is a `Range`): an entity-tag must match the representation's ETag by
  strong comparison (a weak `W/"..."` never matches), a date must be exactly its Last-Modified (to the second,
  as the header carries it); anything else, or a validator the representation does not have: `Whole`.
- One range: `Partial` with inclusive `start`/`end` clamped to the size (`bytes=N-` to the end, `bytes=-N` the last
  N bytes, the whole representation when N ≥ size). Not satisfiable (`bytes=-0`, a first byte ≥ size, any int-range
  of an empty representation): `Unsatisfiable`, answered 416 with `Content-Range: bytes */size`.
- Several ranges (`bytes=0-1,5-9`): `Whole` (200). RFC 9110 §14.2 lets a server ignore a Range header; we never
  send multipart/byteranges (what `<video>` elements and download managers send is one range).
- An empty representation has no byte to send in a 206: a satisfiable suffix range of it is `Whole` (200).

The caller passes `Range` only for GET and HEAD (RFC 9110 defines range handling for GET; HEAD answers as GET would).
"""

from __future__ import annotations

import datetime
import email.utils
import re
from dataclasses import dataclass

# RFC 9110 §5.6.2: token characters; a range unit is a token, compared case-insensitively.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_INT_RANGE = re.compile(r"([0-9]+)-([0-9]*)")
_SUFFIX_RANGE = re.compile(r"-([0-9]+)")
_ENTITY_TAG = re.compile(r'(W/)?"[\x21\x23-\x7e\x80-\xff]*"')
_BEYOND_ANY_SIZE = 1 << 63  # positions this large are compared as "past the end", whatever their digits


@dataclass(frozen=True)
class Whole:
    """Send the whole representation (200)."""

    status = 200


@dataclass(frozen=True)
class Partial:
    """Send bytes start..end (inclusive) of a representation of `size` bytes (206)."""

    start: int
    end: int
    size: int
    status = 206

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def headers(self) -> dict[str, str]:
        return partial_headers(self)


@dataclass(frozen=True)
class Unsatisfiable:
    """No requested byte exists (416); `headers` says how long the representation is."""

    size: int
    status = 416

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}"}


Decision = Whole | Partial | Unsatisfiable


def partial_headers(part: Partial) -> dict[str, str]:
    """The headers of a 206 for `part`: `Content-Range` and `Content-Length`."""
    return {"Content-Range": f"bytes {part.start}-{part.end}/{part.size}", "Content-Length": str(part.length)}


def decide(range_header: str | None, if_range: str | None, size: int, etag: str | None,
           last_modified: float | None) -> Decision:
    """What to send for these request headers. `etag` is the strong ETag the answer carries, quoted as sent
    (`"abc"`); `last_modified` the POSIX time its Last-Modified header shows (None: the answer has none)."""
    if size < 0:
        raise ValueError(f"size must be ≥ 0, not {size}")
    if range_header is None:
        return Whole()
    specs = _range_specs(range_header)
    if specs is None or len(specs) != 1:
        return Whole()
    if if_range is not None and not if_range_holds(if_range, etag, last_modified):
        return Whole()
    return _select(specs[0], size)


def if_range_holds(if_range: str, etag: str | None, last_modified: float | None) -> bool:
    """RFC 9110 §13.1.5: a strong ETag match, or a date equal to the Last-Modified (whole seconds)."""
    validator = if_range.strip(" \t")
    if validator.startswith(('"', "W/")):
        if not _ENTITY_TAG.fullmatch(validator) or validator.startswith("W/"):
            return False  # weak tags never match strongly; a malformed tag matches nothing
        return etag is not None and not etag.startswith("W/") and validator == etag
    if last_modified is None:
        return False
    try:
        moment = email.utils.parsedate_to_datetime(validator)
    except (TypeError, ValueError, IndexError, OverflowError):
        return False
    if moment.tzinfo is None:  # asctime dates carry no zone: HTTP dates are always GMT
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return int(moment.timestamp()) == int(last_modified)


# (first, last) of an int-range, last None when open; or (None, suffix length) of a suffix-range; positions as
# digit strings without leading zeros, so that lengths past any integer still compare exactly
_Spec = tuple[str | None, str | None]


def _range_specs(header: str) -> list[_Spec] | None:
    """The byte-range specs of a `Range` value, or None when it is not valid `bytes=` syntax (RFC 9110 §14.1.1)."""
    unit, equals, range_set = header.strip(" \t").partition("=")
    if not equals or not _TOKEN.fullmatch(unit) or unit.lower() != "bytes":
        return None
    specs: list[_Spec] = []
    for element in range_set.split(","):
        element = element.strip(" \t")
        if not element:
            continue  # RFC 9110 §5.6.1.2: empty list elements are ignored
        if match := _INT_RANGE.fullmatch(element):
            first, last = _digits(match.group(1)), _digits(match.group(2)) if match.group(2) else None
            if last is not None and _less(last, first):
                return None  # last-pos before first-pos: an invalid range-spec
            specs.append((first, last))
        elif match := _SUFFIX_RANGE.fullmatch(element):
            specs.append((None, _digits(match.group(1))))
        else:
            return None
    return specs or None


def _select(spec: _Spec, size: int) -> Decision:
    first, last = spec
    if first is None:  # suffix-range: the last N bytes
        length = _position(last)
        if length == 0:
            return Unsatisfiable(size)
        if size == 0:
            return Whole()
        return Partial(max(size - length, 0), size - 1, size)
    start = _position(first)
    if start >= size:
        return Unsatisfiable(size)
    end = size - 1 if last is None else min(_position(last), size - 1)
    return Partial(start, end, size)


def _digits(text: str) -> str:
    return text.lstrip("0") or "0"


def _less(a: str, b: str) -> bool:
    return (len(a), a) < (len(b), b)


def _position(digits: str) -> int:
    return int(digits) if len(digits) < 19 else _BEYOND_ANY_SIZE
