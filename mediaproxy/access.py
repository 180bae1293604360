"""Kaltura sessions (KS v1 and v2) and the per-partner policy that says which services need one (SPEC §5).

A KS is read from the `ks` parameter or the `X-Kaltura-Ks` header, checked against every admin secret of the
URL's partner (several, for rotation), and must grant the service for the entry: `sview`, `download`, an admin
KS, or (a widget session, what embedded players send) `view`; `limitentry` narrows any KS to one entry. Rejections
are 403s with Kaltura's codes; their messages never contain the KS or a secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .config import Config
from .errors import BadKs, ExpiredKs, Forbidden, IpRestricted, WrongPartnerKs

ADMIN = 2  # KS type: 0 user, 2 admin (Kaltura's SessionType)


@dataclass(frozen=True)
class Session:
    """A KS whose signature checked out (expiry and privileges are checked separately)."""

    partner_id: int
    expiry: int  # unix time
    type: int
    user_id: str
    privileges: tuple[tuple[str, str], ...] = field(default=())

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.privileges if key == name]

    @property
    def is_widget(self) -> bool:
        """Kaltura's widget session (startWidgetSession): a user KS of nobody, with `widget:1`."""
        return self.type == 0 and not self.user_id and "1" in self.values("widget")

    def limited_to(self, entry_id: str) -> bool:
        """Whether `limitentry` (if any) lets this KS reach the entry."""
        limits = self.values("limitentry")
        return not limits or any(limit in ("*", entry_id) for limit in limits)


# ----------------------------------------------------------------------------------------------------------- reading


def parse_ks(ks: str, secrets: Iterable[str]) -> Session:
    """Decode and verify a KS with any of `secrets`; BadKs when it is malformed or signed with none of them."""
    raw = _decode(ks)
    if raw.startswith(b"v2|"):
        return _parse_v2(raw, secrets)
    return _parse_v1(raw, secrets)


def claimed_partner(ks: str) -> int:
    """The partner a KS says it belongs to, before anything is verified (to pick whose secrets verify it)."""
    raw = _decode(ks)
    try:
        if raw.startswith(b"v2|"):
            return int(raw.split(b"|", 2)[1])
        return int(raw.partition(b"|")[2].split(b";", 1)[0])
    except (ValueError, IndexError):
        raise BadKs("invalid KS: no partner") from None


@dataclass(frozen=True)
class KsShape:
    """What a KS says of itself before any secret is used: its version and the partner it names."""

    version: int  # 1 or 2
    partner_id: int


def ks_shape(ks: str) -> KsShape:
    """A KS read without verifying it (for explaining links); BadKs when it is not even shaped like one."""
    raw = _decode(ks)
    if raw.startswith(b"v2|"):
        return KsShape(2, _v2_parts(raw)[0])
    signature, separator, info = raw.partition(b"|")
    if not separator or len(signature) != 40 or not all(byte in b"0123456789abcdefABCDEF" for byte in signature):
        raise BadKs("invalid KS: unknown format")
    fields = info.split(b";")
    if len(fields) < 6:
        raise BadKs("invalid KS: missing fields")
    try:
        partner_id, _, _ = int(fields[0]), int(fields[2]), int(fields[3])
    except ValueError:
        raise BadKs("invalid KS: malformed fields") from None
    return KsShape(1, partner_id)


def _decode(ks: str) -> bytes:
    # a '+' that a query string made a space (at either end too: stripping first would lose it)
    text = ks.strip("\t\r\n").replace(" ", "+").replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadKs("invalid KS: not base64") from None


def _parse_v1(raw: bytes, secrets: Iterable[str]) -> Session:
    signature, separator, info = raw.partition(b"|")
    if not separator:
        raise BadKs("invalid KS: unknown format")
    if not any(hmac.compare_digest(hashlib.sha1(secret.encode() + info).hexdigest().encode(), signature.lower())
               for secret in secrets):
        raise BadKs("invalid KS: bad signature")
    fields = info.decode("utf-8", "replace").split(";")
    if len(fields) < 6:
        raise BadKs("invalid KS: missing fields")
    privileges = fields[6] if len(fields) > 6 else ""
    pairs = []
    for item in filter(None, (part.strip() for part in privileges.split(","))):
        name, _, value = item.partition(":")
        pairs.append((name, value))
    try:
        return Session(partner_id=int(fields[0]), expiry=int(fields[2]), type=int(fields[3]), user_id=fields[5],
                       privileges=tuple(pairs))
    except ValueError:
        raise BadKs("invalid KS: malformed fields") from None


def _v2_parts(raw: bytes) -> tuple[int, bytes]:
    """(partner id, ciphertext) of a v2 KS: `v2|{partner}|{AES blocks}`."""
    try:
        _, partner, ciphertext = raw.split(b"|", 2)
        partner_id = int(partner)
    except ValueError:
        raise BadKs("invalid KS: malformed v2 header") from None
    if not ciphertext or len(ciphertext) % 16:
        raise BadKs("invalid KS: malformed v2 payload")
    return partner_id, ciphertext


def _parse_v2(raw: bytes, secrets: Iterable[str]) -> Session:
    partner_id, ciphertext = _v2_parts(raw)
    for secret in secrets:
        plain = _aes(secret, ciphertext, decrypt=True).rstrip(b"\0")
        digest, rest = plain[:20], plain[20:]
        if len(rest) < 16 or not hmac.compare_digest(hashlib.sha1(rest).digest(), digest):
            continue
        fields = parse_qsl(rest[16:].decode("utf-8", "replace"), keep_blank_values=True)
        special = {key: value for key, value in fields if key in ("_e", "_t", "_u")}
        try:
            return Session(partner_id=partner_id, expiry=int(special.get("_e", "0")), type=int(special.get("_t", 0)),
                           user_id=special.get("_u", ""),
                           privileges=tuple((k, v) for k, v in fields if k not in ("_e", "_t", "_u")))
        except ValueError:
            raise BadKs("invalid KS: malformed fields") from None
    raise BadKs("invalid KS: bad signature")


def _aes(secret: str, data: bytes, *, decrypt: bool) -> bytes:
    key = hashlib.sha1(secret.encode()).digest()[:16]
    cipher = Cipher(algorithms.AES(key), modes.CBC(b"\0" * 16))
    worker = cipher.decryptor() if decrypt else cipher.encryptor()
    return worker.update(data) + worker.finalize()


# ----------------------------------------------------------------------------------------------------------- making


def make_ks(partner_id: int, secret: str, *, privileges: str = "", expiry: int | None = None, type: int = 0,
            user_id: str = "", v2: bool = False) -> str:
    """A KS as Kaltura makes it (for tests and the `mediaproxy ks` command). `privileges`: "sview:*,download:x"."""
    expiry = int(time.time()) + 86400 if expiry is None else expiry
    if not v2:
        rand = int.from_bytes(os.urandom(4), "big")
        info = f"{partner_id};{partner_id};{expiry};{type};{rand};{user_id};{privileges};"
        signature = hashlib.sha1((secret + info).encode()).hexdigest()
        return _encode(f"{signature}|{info}".encode())
    fields = [("_e", str(expiry)), ("_t", str(type)), ("_u", user_id)]
    for item in filter(None, (part.strip() for part in privileges.split(","))):
        name, _, value = item.partition(":")
        fields.append((name, value))
    rest = os.urandom(16) + urlencode(fields).encode()
    plain = hashlib.sha1(rest).digest() + rest
    plain += b"\0" * (-len(plain) % 16)
    return _encode(f"v2|{partner_id}|".encode() + _aes(secret, plain, decrypt=False))


def _encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode().replace("+", "-").replace("/", "_")


# ----------------------------------------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class Grant:
    """The outcome of a passed check: whether the answer may be cached publicly."""

    private: bool


PUBLIC = Grant(private=False)


class AccessPolicy:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._trusted = [ipaddress.ip_network(proxy, strict=False) for proxy in config.server.trusted_proxies]

    def check(self, service: str, partner_id: int, entry_id: str, ks: str | None, *, path: str, remote: str | None,
              forwarded_for: str | None, now: float | None = None) -> Grant:
        partner = self.config.partner(partner_id)
        if service not in partner.ks_required_for:
            return PUBLIC
        if not ks:
            raise Forbidden(f"access denied: partner {partner_id} requires a KS for {service}")
        session = self._session(partner_id, ks, path=path, remote=remote, forwarded_for=forwarded_for, now=now)
        if not session.limited_to(entry_id):
            raise Forbidden(f"access denied: the KS is limited to other entries than {entry_id}")
        if not _grants(session, service, entry_id):
            raise Forbidden(f"access denied: the KS grants no {service} of entry {entry_id}")
        return Grant(private=True)

    def check_admin(self, partner_id: int, entry_id: str, ks: str | None, *, path: str, remote: str | None,
                    forwarded_for: str | None, now: float | None = None) -> Session:
        """An admin KS (type ≥ 1) of the partner, valid for the entry (an operator's purge): else Forbidden."""
        if not ks:
            raise Forbidden(f"access denied: an admin KS of partner {partner_id} is needed")
        session = self._session(partner_id, ks, path=path, remote=remote, forwarded_for=forwarded_for, now=now)
        if session.type < 1:
            raise Forbidden("access denied: a user KS cannot do this; an admin KS is needed")
        if not session.limited_to(entry_id):
            raise Forbidden(f"access denied: the KS is limited to other entries than {entry_id}")
        return session

    def _session(self, partner_id: int, ks: str, *, path: str, remote: str | None, forwarded_for: str | None,
                 now: float | None) -> Session:
        """The KS verified for the partner's URL: signature, partner, expiry, IP and URI restrictions."""
        owner = claimed_partner(ks)
        # verified with the secrets of the partner it names: a genuine KS of another partner is told apart (32)
        # from a forged or damaged one (7)
        session = parse_ks(ks, self.config.partner(owner).admin_secrets)
        if session.partner_id != partner_id:
            raise WrongPartnerKs(f"invalid KS: it belongs to partner {session.partner_id}, not {partner_id}")
        if session.expiry < (time.time() if now is None else now):
            raise ExpiredKs("invalid KS: expired")
        client = self.client_address(remote, forwarded_for)
        allowed_ips = session.values("iprestrict")
        if allowed_ips and not _ip_allowed(client, allowed_ips):
            raise IpRestricted("access denied: the KS is restricted to other IP addresses")
        allowed_uris = session.values("urirestrict")
        if allowed_uris and not any(_uri_allowed(path, pattern) for pattern in allowed_uris):
            raise Forbidden("access denied: the KS is restricted to other URLs")
        return session

    def client_address(self, remote: str | None, forwarded_for: str | None) -> str | None:
        """The client: the peer, or (only behind a trusted proxy) the last untrusted X-Forwarded-For hop."""
        if not forwarded_for or not remote or not self._is_trusted(remote):
            return remote
        for hop in reversed([hop.strip() for hop in forwarded_for.split(",") if hop.strip()]):
            if not self._is_trusted(hop):
                return hop
        return remote

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)


def _grants(session: Session, service: str, entry_id: str) -> bool:
    if session.type >= 1:  # an admin KS allows all
        return True
    # `view` counts only in a widget session, and never for raw (players show thumbnails and clips)
    names = ("sview", "download") if service == "raw" else ("sview", "view") if session.is_widget else ("sview",)
    return any(value in ("*", entry_id) for name in names for value in session.values(name))


def _ip_allowed(client: str | None, allowed: Sequence[str]) -> bool:
    if client is None:
        return False
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return False
    for item in allowed:
        for part in item.split(";"):
            try:
                if ip in ipaddress.ip_network(part.strip(), strict=False):
                    return True
            except ValueError:
                continue
    return False


def _uri_allowed(path: str, pattern: str) -> bool:
    return path.startswith(pattern[:-1]) if pattern.endswith("*") else path == pattern
