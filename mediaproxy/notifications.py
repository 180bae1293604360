"""Kaltura's partner notifications, received (SPEC §8), and the operators' purge over HTTP.

    POST /notifications    (path configurable) what Kaltura sends a partner's notification URL when an entry changes
    POST /admin/purge      partner_id, entry_id and an admin KS of that partner: the same purge, for operators

A delivery is read in two steps. First its form: Kaltura's form-encoded notifications, one (`sig` over the fields
named in `signed_fields`) or several (`multi_notification=true`, fields prefixed `not1_`, `not2_`..., `sig` over
every field), or the newer HTTP event notification (the raw body, form fields or Kaltura's JSON, signed in the
`X-KALTURA-SIGNATURE` header). Then its signature, with every admin secret of the partner it names, compared in
constant time. Only then is anything purged (purge.py), once per notification id (Kaltura retries).

Signatures are a hash of the secret followed by the data, which a length-extension attack can lengthen without the
secret; the padding such an attack appends always holds NUL and non-ASCII bytes, so a form body must be plain
ASCII and its decoded fields free of control characters, a duplicated key is refused, and JSON parsing fails on it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from aiohttp import web

from . import metrics
from .access import AccessPolicy
from .config import Config
from .errors import BadRequest, Forbidden, MediaProxyError, TooLarge
from .purge import BLOCKED, DELETED, KEEP, Purges
from .refs import ID_PATTERN, EntryRef
from .request_keys import ENTRY, SERVICE

log = logging.getLogger("mediaproxy.notifications")

MAX_FIELDS = 20_000
MAX_NOTIFICATIONS = 1000
_MULTI_FIELD = re.compile(r"not([0-9]{1,4})_(.+)\Z", re.DOTALL)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CONTROL_BYTE = re.compile(rb"[\x00-\x1f\x7f]")
_NOTIFICATION_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}\Z")
_HASHES = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
_ADMIN_BODY_LIMIT = 4096

# what each type does to the entry afterwards: withheld for a reason, served again (None), or as it was
_WITHHOLDING = {"entry_delete": DELETED, "entry_block": BLOCKED}
_RELEASING = frozenset({"entry_add", "entry_update"})
KNOWN_TYPES = frozenset({*_WITHHOLDING, *_RELEASING, "entry_update_thumbnail", "entry_update_permissions",
                         "entr_update_permissions", "entry_update_moderation"})  # (Kaltura spells one "entr_")


@dataclass(frozen=True)
class Notification:
    partner_id: int
    type: str  # "entry_update", ... (for an HTTP event notification: the classic type it amounts to)
    entry_id: str | None
    notification_id: str | None

    @property
    def concerns_entry(self) -> bool:
        return self.entry_id is not None and (self.type.startswith("entry_") or self.type in KNOWN_TYPES)

    @property
    def withhold(self) -> str | None:
        """The entry's state after it: withheld for a reason, served (None), or KEEP (as it was)."""
        if self.type in _WITHHOLDING:
            return _WITHHOLDING[self.type]
        return None if self.type in _RELEASING else KEEP

    @property
    def metric_type(self) -> str:
        """A bounded label: the type when it is one of Kaltura's entry types."""
        if self.type in KNOWN_TYPES:
            return self.type
        return "other_entry" if self.concerns_entry else "other"


@dataclass(frozen=True)
class Applied:
    """What one notification did."""

    notification: Notification
    outcome: str  # purged, withheld, released, duplicate, ignored
    dropped: int | None = None  # cache entries removed from the node

    def as_json(self) -> dict:
        answer = {"id": self.notification.notification_id, "type": self.notification.type,
                  "entry_id": self.notification.entry_id, "outcome": self.outcome}
        return answer if self.dropped is None else {**answer, "dropped": self.dropped}


@dataclass(frozen=True)
class Delivery:
    """One POST whose signature checked out."""

    partner_id: int
    form: str  # "single", "multi" or "http" (X-KALTURA-SIGNATURE)
    notifications: tuple[Notification, ...]


# ------------------------------------------------------------------------------------------------------- reading


def read_delivery(body: bytes, content_type: str, headers: Mapping[str, str], config: Config) -> Delivery:
    """The notifications of one POST, verified; BadRequest (400) when it cannot be read, Forbidden (403) when it is
    not signed by the partner it names (or that partner is unknown here)."""
    if not body.strip():
        raise BadRequest("notification: the body is empty")
    signature = headers.get("X-KALTURA-SIGNATURE")
    is_json = content_type == "application/json" or content_type.endswith("+json")
    if is_json:
        partner_id, notifications = _read_event(_json(body))
        form = "http"
    elif content_type in ("application/x-www-form-urlencoded", ""):
        fields = _form_fields(body)
        partner_id, notifications, form = _read_form(fields)
    else:
        raise BadRequest(f"notification: a body of type {content_type} is not read (form-encoded or JSON)")
    secrets = config.partner(partner_id).admin_secrets
    if not secrets:
        raise Forbidden(f"notification: partner {partner_id} is not known here (it has no admin secrets)")
    if signature is not None:
        _check_body_signature(body, signature, headers.get("X-KALTURA-HASH-ALGO", "sha1"), secrets)
        form = "http"
    elif is_json:
        raise Forbidden("notification: a JSON notification must be signed in X-KALTURA-SIGNATURE")
    else:
        _check_field_signature(fields, form, secrets)
    return Delivery(partner_id, form, notifications)


def _form_fields(body: bytes) -> dict[str, str]:
    if not body.isascii() or _CONTROL_BYTE.search(body):
        raise BadRequest("notification: the body holds bytes that are not form-encoded (control or non-ASCII)")
    text = body.decode("ascii")
    if _BAD_ESCAPE.search(text):
        raise BadRequest("notification: the body has a malformed %-escape")
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, encoding="utf-8", errors="strict",
                          max_num_fields=MAX_FIELDS)
    except UnicodeDecodeError:
        raise BadRequest("notification: a field is not UTF-8") from None
    except ValueError:  # its text quotes the body: not for the log
        raise BadRequest("notification: the body is not form-encoded (a field without '=', or too many)") from None
    fields: dict[str, str] = {}
    for key, value in pairs:
        if not key:
            raise BadRequest("notification: a field has no name")
        if key in fields:
            raise BadRequest(f"notification: the field {key[:64]!r} is given twice")
        if _CONTROL.search(key) or _CONTROL.search(value):
            raise BadRequest(f"notification: the field {key[:64]!r} holds control characters")
        fields[key] = value
    return fields


def _read_form(fields: Mapping[str, str]) -> tuple[int, tuple[Notification, ...], str]:
    if fields.get("multi_notification") != "true":
        notification = _notification(fields, "")
        return notification.partner_id, (notification,), "single"
    count = fields.get("number_of_notifications", "")
    if not count.isascii() or not count.isdigit() or not 1 <= int(count) <= MAX_NOTIFICATIONS:
        raise BadRequest(f"notification: number_of_notifications must be 1..{MAX_NOTIFICATIONS}")
    parts: dict[int, dict[str, str]] = {index: {} for index in range(1, int(count) + 1)}
    for key, value in fields.items():
        match = _MULTI_FIELD.match(key)
        if match is None:
            continue  # multi_notification, number_of_notifications, sig, and what Kaltura's merge left behind
        index = int(match[1])
        if index not in parts:
            raise BadRequest(f"notification: {key[:64]!r} names notification {index} of {count}")
        parts[index][match[2]] = value
    notifications = tuple(_notification(parts[index], f"not{index}_") for index in sorted(parts))
    partners = {notification.partner_id for notification in notifications}
    if len(partners) > 1:
        raise BadRequest("notification: a multi-notification of several partners")
    return partners.pop(), notifications, "multi"


def _notification(fields: Mapping[str, str], prefix: str) -> Notification:
    partner = fields.get("partner_id", "")
    if not partner.lstrip("-").isascii() or not partner.lstrip("-").isdigit() or len(partner) > 12:
        raise BadRequest(f"notification: {prefix}partner_id is missing or not an integer")
    kind = fields.get("notification_type", "")
    if not kind or len(kind) > 64 or not kind.isascii():
        raise BadRequest(f"notification: {prefix}notification_type is missing")
    entry_id = fields.get("entry_id") or None
    if entry_id is not None and not ID_PATTERN.match(entry_id):
        raise BadRequest(f"notification: {prefix}entry_id is not an entry id")
    if entry_id is None and kind in KNOWN_TYPES:
        raise BadRequest(f"notification: a {kind} notification without {prefix}entry_id")
    return Notification(int(partner), kind, entry_id, _notification_id(fields.get("notification_id")))


def _notification_id(value: object) -> str | None:
    if value is None or value == "":
        return None
    text = str(value)
    if not _NOTIFICATION_ID.match(text):
        raise BadRequest("notification: notification_id is malformed")
    return text


def _json(body: bytes) -> dict:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest("notification: the body is not JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("notification: the JSON body is not an object")
    return data


# Kaltura's event types (KalturaEventType) and entry statuses (KalturaEntryStatus) that decide what happened
_EVENT_ADDED, _EVENT_DELETED, _EVENT_ERASED = "1", "7", "10"
_STATUS_DELETED, _STATUS_BLOCKED = "3", "6"
_ENTRY_OBJECTS = ("1", "38")  # entry, live stream entry
_ASSET_TYPES = {"4": "entry_update_flavor", "5": "entry_update_thumbnail"}


def _read_event(data: dict) -> tuple[int, tuple[Notification, ...]]:
    """An HTTP event notification (a KalturaHttpNotification, format JSON): the object, what happened to it."""
    thing = data.get("object")
    if not isinstance(thing, dict):
        raise BadRequest("notification: the JSON has no \"object\"")
    partner = str(thing.get("partnerId", ""))
    if not partner.lstrip("-").isdigit() or len(partner) > 12:
        raise BadRequest("notification: the JSON object has no partnerId")
    object_type, event = str(data.get("eventObjectType", "")), str(data.get("eventType", ""))
    status = str(thing.get("status", ""))
    if object_type in _ENTRY_OBJECTS:
        entry_id = thing.get("id")
        kind = ("entry_delete" if event in (_EVENT_DELETED, _EVENT_ERASED) or status == _STATUS_DELETED else
                "entry_block" if status == _STATUS_BLOCKED else "entry_add" if event == _EVENT_ADDED else
                "entry_update")
    else:
        entry_id = thing.get("entryId")
        kind = _ASSET_TYPES.get(object_type, "entry_update_asset") if entry_id else f"object_{object_type[:16]}"
    if entry_id is not None and (not isinstance(entry_id, str) or not ID_PATTERN.match(entry_id)):
        raise BadRequest("notification: the JSON object's entry id is not an entry id")
    job = data.get("eventNotificationJobId")
    notification = Notification(int(partner), kind, entry_id or None,
                                _notification_id(None if job is None else str(job)))
    return notification.partner_id, (notification,)


# ------------------------------------------------------------------------------------------------------- signatures


def field_signature_text(fields: Mapping[str, str], form: str) -> str:
    """What Kaltura's `sig` hashes after the secret: key + value of every field but `sig`, sorted by key; for a
    single notification with `signed_fields`, only the fields it lists."""
    listed = {key for key in fields.get("signed_fields", "").split(",") if key} if form == "single" else set()
    keys = sorted(key for key in fields if key != "sig" and (not listed or key in listed))
    return "".join(key + fields[key] for key in keys)


def _check_field_signature(fields: Mapping[str, str], form: str, secrets: tuple[str, ...]) -> None:
    given = fields.get("sig")
    if not given:
        raise Forbidden("notification: no signature (neither sig nor X-KALTURA-SIGNATURE)")
    listed = {key for key in fields.get("signed_fields", "").split(",") if key}
    if form == "single" and listed:
        unsigned = sorted(key for key in ("partner_id", "notification_type", "entry_id", "notification_id")
                          if key in fields and key not in listed)
        if unsigned:
            raise Forbidden(f"notification: {', '.join(unsigned)} not among the signed fields")
    text = field_signature_text(fields, form).encode("utf-8")
    if not _any_matches([hashlib.md5(secret.encode() + text).hexdigest() for secret in secrets], given):
        raise Forbidden("notification: bad signature")


def _check_body_signature(body: bytes, given: str, algorithm: str, secrets: tuple[str, ...]) -> None:
    digest = _HASHES.get(algorithm.strip().lower())
    if digest is None:
        raise Forbidden(f"notification: X-KALTURA-HASH-ALGO {algorithm[:16]!r} is not one of "
                        f"{', '.join(_HASHES)}")
    if not _any_matches([digest(secret.encode() + body).hexdigest() for secret in secrets], given.strip()):
        raise Forbidden("notification: bad X-KALTURA-SIGNATURE")


def _any_matches(expected: list[str], given: str) -> bool:
    """Constant time, and every secret compared (which one matched does not show in the timing)."""
    given_bytes = given.lower().encode("utf-8", "replace")
    matches = [hmac.compare_digest(candidate.encode(), given_bytes) for candidate in expected]
    return any(matches)


# ------------------------------------------------------------------------------------------------------- endpoints


class NotificationEndpoints:
    def __init__(self, config: Config, purges: Purges, policy: AccessPolicy) -> None:
        self.config = config
        self.purges = purges
        self.policy = policy
        self._json_log = config.server.log_format == "json"

    async def notifications(self, request: web.Request) -> web.Response:
        request[SERVICE] = "notifications"
        try:
            body = await read_body(request, self.config.notifications.max_body_bytes)
            delivery = read_delivery(body, request.content_type, request.headers, self.config)
        except MediaProxyError as refusal:
            outcome = {413: "too_large", 403: "refused"}.get(refusal.status, "malformed")
            metrics.NOTIFICATIONS.labels("unknown", outcome).inc()
            self._log_refusal(refusal)
            raise
        if len(delivery.notifications) == 1 and delivery.notifications[0].entry_id:
            only = delivery.notifications[0]
            request[ENTRY] = EntryRef(only.partner_id, only.entry_id)
        applied = [await self._apply(notification) for notification in delivery.notifications]
        return web.json_response({"form": delivery.form, "notifications": [item.as_json() for item in applied]},
                                 headers={"Cache-Control": "no-store"})

    async def _apply(self, notification: Notification) -> Applied:
        if not notification.concerns_entry:
            applied = Applied(notification, "ignored")
        else:
            once = (f"notification|{notification.partner_id}|{notification.notification_id}"
                    if notification.notification_id else None)
            done = await self.purges.purge(EntryRef(notification.partner_id, notification.entry_id),
                                           withhold=notification.withhold, once=once, notice=notification.type,
                                           source="notification")
            if done is None:
                applied = Applied(notification, "duplicate")
            else:
                outcome = ("withheld" if notification.type in _WITHHOLDING else
                           "released" if done.withheld_before and not done.withheld else "purged")
                applied = Applied(notification, outcome, sum(done.dropped.values()))
        metrics.NOTIFICATIONS.labels(notification.metric_type, applied.outcome).inc()
        self._log(applied)
        return applied

    async def admin_purge(self, request: web.Request) -> web.Response:
        """An operator's purge: partner_id and entry_id (query or form body), an admin KS of that partner."""
        request[SERVICE] = "purge"
        fields = dict(request.query)
        body = await read_body(request, _ADMIN_BODY_LIMIT)
        if body.strip():
            fields.update(_form_fields(body))
        partner, entry_id = fields.get("partner_id", ""), fields.get("entry_id", "")
        if not partner.lstrip("-").isdigit() or len(partner) > 12 or not ID_PATTERN.match(entry_id):
            raise BadRequest("purge: give partner_id (an integer) and entry_id (an entry id)")
        ref = EntryRef(int(partner), entry_id)
        request[ENTRY] = ref
        self.policy.check_admin(ref.partner_id, entry_id, fields.get("ks") or request.headers.get("X-Kaltura-Ks"),
                                path=request.path, remote=request.remote,
                                forwarded_for=request.headers.get("X-Forwarded-For"))
        outcome = await self.purges.purge(ref, withhold=None, source="operator")
        assert outcome is not None  # no `once`: a purge always happens
        return web.json_response(outcome.as_json(), headers={"Cache-Control": "no-store"})

    def _log(self, applied: Applied) -> None:
        """One line per notification (never a signature or a secret), in the access log's format."""
        notification = applied.notification
        if self._json_log:
            log.info(json.dumps({"notification": notification.notification_id, "type": notification.type,
                                 "partner": notification.partner_id, "entry": notification.entry_id,
                                 "outcome": applied.outcome, "dropped": applied.dropped}, separators=(",", ":")))
        else:
            log.info("notification %s %s partner %d entry %s: %s%s", notification.notification_id or "-",
                     notification.type, notification.partner_id, notification.entry_id or "-", applied.outcome,
                     "" if applied.dropped is None else f" ({applied.dropped} cached files dropped)")

    def _log_refusal(self, refusal: MediaProxyError) -> None:
        if self._json_log:
            log.info(json.dumps({"notification": None, "status": refusal.status, "reason": refusal.message},
                                separators=(",", ":")))
        else:
            log.info("notification refused: %d %s", refusal.status, refusal.message)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"the body is {request.content_length} bytes (limit {limit})")
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"the body is over {limit} bytes")
    return bytes(body)

