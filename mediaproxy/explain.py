"""How mediaproxy reads a media link, whatever host it names (SPEC §9): `GET /explain?url=...` and `mediaproxy
explain URL`.

The explanation is the parse the services use (`urls.parse_target`), with the notes the parser made while reading
each value, so it cannot drift from what is served. It never fetches media and never repeats a KS: it says whether
one is there, its shape, and (when this node holds the partner's secrets) whether it checks out.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from . import urls
from .access import AccessPolicy, ks_shape, parse_ks
from .config import Config
from .errors import BadKs, MediaProxyError
from .urls import ClipRequest, Note, NoteKind, Parameter, ResizeMode, Route, ServiceRequest, ThumbnailRequest

# what a browser leaves as it is in a path and query (everything else, such as spaces and non-ASCII, it encodes)
_URL_SAFE = "/?&=%:@!$'()*+,;~[]"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True, slots=True)
class Refusal:
    """An error answer as the server gives it (SPEC §6)."""

    status: int
    code: int
    description: str
    message: str

    @classmethod
    def of(cls, error: MediaProxyError) -> Refusal:
        return cls(error.status, error.kaltura_code, error.kaltura_description, error.message)

    def __str__(self) -> str:
        return f"{self.status} (Kaltura error {self.code}, {self.description}): {self.message}"


@dataclass(frozen=True, slots=True)
class KsFacts:
    """What can be said of a link's KS without repeating it."""

    present: bool
    version: int | None = None  # 1 or 2 when it is shaped like a KS
    partner_id: int | None = None  # the partner it names
    verified: bool | None = None  # None: not checked (no secrets of that partner here)
    expired: bool | None = None  # known only once verified (a v2 KS's expiry is inside its ciphertext)
    problem: str | None = None  # why it is malformed or does not check out

    @property
    def well_formed(self) -> bool:
        return self.version is not None

    def __str__(self) -> str:
        if not self.present:
            return "none"
        if not self.well_formed:
            return f"present, malformed ({self.problem})"
        words = f"present, well-formed v{self.version}, partner {self.partner_id}"
        if self.verified is None:
            return words + f", not verified (no secrets of partner {self.partner_id} here)"
        if not self.verified:
            return words + f", does not check out ({self.problem})"
        return words + (", verified but expired" if self.expired else ", verified")


@dataclass(frozen=True, slots=True)
class Explanation:
    link: str  # as given, KS redacted
    host: str | None  # the host the link names (None for a bare path)
    target: str  # the path and query mediaproxy reads, KS redacted
    route: Route | None  # what the start of the path names, even when a parameter is malformed
    request: ServiceRequest | None
    given: tuple[tuple[str, str], ...]  # the link's pairs as read (decoded, aliases folded), KS left out
    notes: tuple[Note, ...]
    parameters: tuple[Parameter, ...]
    canonical: str | None
    local_url: str | None  # where this mediaproxy serves it (add the KS, which is never repeated)
    ks: KsFacts
    ks_required: bool  # the partner's policy asks a KS for this service
    refused: Refusal | None  # the access check's answer from the asking client, when it would refuse
    error: Refusal | None  # the answer to a malformed link

    @property
    def ignored(self) -> tuple[str, ...]:
        return tuple(note.key for note in self.notes if note.kind is NoteKind.IGNORED)

    def as_json(self) -> dict:
        request = self.request
        return {
            "link": self.link,
            "host": self.host,
            "target": self.target,
            "ok": self.error is None,
            "service": self.route.service if self.route else None,
            "partner_id": self.route.partner_id if self.route else None,
            "entry_id": request.entry.entry_id if request else None,
            "summary": describe(request) if request else None,
            "given": dict(self.given),
            "parameters": [{"key": parameter.key, "value": parameter.value, "given": parameter.given,
                            "canonical": parameter.canonical} for parameter in self.parameters],
            "notes": [{"kind": note.kind.value, "key": note.key, "detail": note.detail, "text": str(note)}
                      for note in self.notes],
            "ignored": list(self.ignored),
            "canonical": self.canonical,
            "local_url": self.local_url,
            "ks": {"present": self.ks.present, "well_formed": self.ks.well_formed, "version": self.ks.version,
                   "partner_id": self.ks.partner_id, "verified": self.ks.verified, "expired": self.ks.expired,
                   "problem": self.ks.problem, "text": str(self.ks)},
            "ks_required": self.ks_required,
            "access": (None if self.error else {"allowed": True} if self.refused is None
                       else {"allowed": False, **_refusal_json(self.refused)}),
            "error": _refusal_json(self.error) if self.error else None,
        }

    def words(self) -> str:
        rows = [("link", self.link)]
        if self.error is not None:
            if self.route:
                rows.append(("service", f"{self.route.service}, partner {self.route.partner_id}"))
            rows.append(("refused", str(self.error)))
            return _rows(rows)
        request = self.request
        rows.append(("reads as", f"{describe(request)} of entry {request.entry.entry_id}, "
                                 f"partner {request.entry.partner_id}"))
        given = [f"{key}={value}" for key, value in self.given if key != "entry_id"]
        rows.append(("given", "  ".join(given) or "(no parameters)"))
        used = [f"{parameter.key} {_shown(parameter, request)}" for parameter in self.parameters
                if parameter.canonical or parameter.given is not None]
        rows.append(("used", "  ".join(used + ["(the rest: defaults)"])))
        rows += [("notes" if index == 0 else "", str(note)) for index, note in enumerate(self.notes)]
        rows.append(("ks", str(self.ks) + ("; the partner requires one for this service" if self.ks_required
                                            else "")))
        if self.refused is not None:
            rows.append(("access", f"refused here: {self.refused}"))
        rows.append(("canonical", self.canonical))
        rows.append(("served at", self.local_url + (" (add the KS)" if self.ks.present else "")))
        return _rows(rows)


def explain(link: str, config: Config, policy: AccessPolicy, *, base_url: str, client: str | None,
            forwarded_for: str | None = None) -> Explanation:
    """The explanation of `link` (a URL of any host, `host/path`, or a path) as this node's config reads it."""
    link = link.strip()
    host, target = split_link(link)
    default_partner = config.defaults.partner_id
    try:
        where: Route | None = urls.route(target, default_partner)
    except MediaProxyError:
        where = None
    shown = dict(link=urls.redact_link(link), host=host, target=urls.redact_ks(target), route=where)
    try:
        parsed = urls.parse_target(target, default_partner)
    except MediaProxyError as error:
        return Explanation(**shown, request=None, given=(), notes=(), parameters=(), canonical=None, local_url=None,
                           ks=_ks_facts(urls.split_ks(target)[1], config), ks_required=False, refused=None,
                           error=Refusal.of(error))
    request = parsed.request
    partner_id = request.entry.partner_id
    refused = None
    try:
        policy.check(request.service, partner_id, request.entry.entry_id, parsed.ks,
                     path=unquote(target.partition("?")[0]), remote=client, forwarded_for=forwarded_for)
    except MediaProxyError as error:
        refused = Refusal.of(error)
    canonical = urls.canonical_path(request)
    return Explanation(**shown, request=request, given=parsed.given, notes=parsed.notes,
                       parameters=urls.parameters(parsed),
                       canonical=canonical, local_url=base_url.rstrip("/") + canonical,
                       ks=_ks_facts(parsed.ks, config), ks_required=request.service in
                       config.partner(partner_id).ks_required_for, refused=refused, error=None)


def describe(request: ServiceRequest) -> str:
    """What a request asks for, in a few words: `thumbnail 320×240 type 3 jpg`, `clip 1.0–4.0 s`, `raw original`."""
    if isinstance(request, ThumbnailRequest):
        width, height = request.width, request.height
        size = ("at the source's size" if width == 0 and height == 0 else
                f"{width} wide" if height == 0 else f"{height} high" if width == 0 else f"{width}×{height}")
        words = [f"strip of {request.vid_slices} frames" if request.is_strip else "thumbnail", size]
        if request.mode is not ResizeMode.FIT:
            words.append(f"type {int(request.mode)}")
        if request.vid_slices is not None and not request.is_strip:
            words.append(f"slice {request.vid_slice} of {request.vid_slices}")
        elif request.vid_sec is not None:
            words.append(f"at {request.vid_sec:g} s")
        words.append(request.format.value)
        return " ".join(words)
    if isinstance(request, ClipRequest):
        end = "the end" if request.clip_to_ms is None else f"{request.clip_to_ms / 1000:g} s"
        words = f"clip {request.clip_from_ms / 1000:g} s to {end}"
        return words + (f" ({request.container})" if request.container else "")
    selector = request.selector
    what = (f"flavor {selector.flavor_id}" if selector.flavor_id else "original")
    if selector.version is not None:
        what += f" version {selector.version}"
    if selector.extension:
        what += f" as .{selector.extension}"
    return f"raw {what}"


# what a parameter's "none" means to its service, for the words
_NONE_MEANS = {
    "quality": "(the partner's)", "vid_sec": "(thumb_offset, else 3 s)", "rel_width": "(none)",
    "rel_height": "(none)", "start_sec": "(none)", "end_sec": "(none)", "density": "(none)", "version": "(none)",
    "flavor_id": "(the original)", "vid_slices": "(none)", "flavor": "(the best playable)", "clip_to": "(the end)",
    "container": "(like the source)", "format": "(the original's)", "file_name": "(the entry's name)",
}


def _shown(parameter: Parameter, request: ServiceRequest) -> str:
    value = parameter.value
    if value is None:
        if parameter.key == "vid_slice":
            return "(a strip)" if isinstance(request, ThumbnailRequest) and request.is_strip else "(none)"
        return _NONE_MEANS.get(parameter.key, "(none)")
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _rows(rows: list[tuple[str, str]]) -> str:
    return "\n".join(f"{name:<10} {value}".rstrip() for name, value in rows)


def _refusal_json(refusal: Refusal) -> dict:
    return {"status": refusal.status, "code": refusal.code, "description": refusal.description,
            "message": refusal.message}


def split_link(link: str) -> tuple[str | None, str]:
    """(host, request target) of a pasted link, the target encoded as a browser would send it."""
    host = None
    if _SCHEME.match(link) or link.startswith("//"):
        parts = urlsplit(link)
        host = parts.hostname
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    elif link.startswith("/"):
        target = link.partition("#")[0]
    else:  # `cdnapisec.kaltura.com/p/...`: a host without its scheme
        first, slash, rest = link.partition("/")
        host, target = (first or None), slash + rest.partition("#")[0]
    return host, quote(target or "/", safe=_URL_SAFE)


def _ks_facts(ks: str | None, config: Config) -> KsFacts:
    if not ks:
        return KsFacts(present=False)
    try:
        shape = ks_shape(ks)
    except BadKs as error:
        return KsFacts(present=True, problem=error.message.removeprefix("invalid KS: "))
    secrets = config.partner(shape.partner_id).admin_secrets
    if not secrets:
        return KsFacts(present=True, version=shape.version, partner_id=shape.partner_id)
    try:
        session = parse_ks(ks, secrets)
    except BadKs as error:
        return KsFacts(present=True, version=shape.version, partner_id=shape.partner_id, verified=False,
                       problem=error.message.removeprefix("invalid KS: "))
    return KsFacts(present=True, version=shape.version, partner_id=shape.partner_id, verified=True,
                   expired=session.expiry < time.time())
