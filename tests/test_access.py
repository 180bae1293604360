"""Access with Kaltura sessions over HTTP (SPEC §5, §6): KS v1/v2, privileges, rejections, policy, caching, logs.

Every KS used against the server here is made by the independent implementation below, written from SPEC §5
alone (it never imports mediaproxy.access), or by the `mediaproxy ks` command run as a subprocess; the command's
output is also checked with the independent parser. Requests go through the real server on a loopback port,
sent byte for byte with `send_raw` (so `+`, `/`, `%2F` and `=` in a KS arrive exactly as written).

Partners of the main config (fixture media: 100/0_photo, 100/0_video, 200/0_private):
  100  two admin secrets (rotation); a KS is needed for thumbnail, flvclipper and raw
  200  one admin secret; a KS is needed for raw only (thumbnails stay public)
  300  its own admin secret; a KS is needed for everything (it has no media: it is "the other partner")
A partner without a section is public.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import random
import re
import subprocess
import sys
import time
from urllib.parse import parse_qsl, quote, urlencode

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mediaproxy.app import RUNTIME, AccessLogger, make_app
from mediaproxy.config import load

from .conftest import FIXTURE_MEDIA, REPO, make_config, send_raw, until

SECRET_A = "hundred-secret-A-7f3e9c"  # partner 100, current
SECRET_B = "hundred-secret-B-21d0aa"  # partner 100, the rotated-in one
SECRET_200 = "two-hundred-secret-5b8c1e"
SECRET_300 = "three-hundred-secret-90af44"
WRONG_SECRET = "nobody-knows-this-secret-0000"
ENV_SECRET_1 = "env-secret-one-c0ffee"
ENV_SECRET_2 = "env-secret-two-decade"
FILE_SECRET = "file-secret-overridden-beef"
ALL_SECRETS = (SECRET_A, SECRET_B, SECRET_200, SECRET_300, WRONG_SECRET, ENV_SECRET_1, ENV_SECRET_2, FILE_SECRET)

PARTNERS = f"""
[partners.100]
admin_secrets = ["{SECRET_A}", "{SECRET_B}"]
ks_required_for = ["thumbnail", "flvclipper", "raw"]

[partners.200]
admin_secrets = ["{SECRET_200}"]
ks_required_for = ["raw"]

[partners.300]
admin_secrets = ["{SECRET_300}"]
ks_required_for = ["thumbnail", "flvclipper", "raw"]
"""
TRUSTED_LOOPBACK = '[server]\ntrusted_proxies = ["127.0.0.1"]\n'

PHOTO_THUMB = "/p/100/sp/10000/thumbnail/entry_id/0_photo/width/64"
PHOTO_RAW = "/p/100/sp/10000/raw/entry_id/0_photo"
VIDEO_CLIP = "/p/100/sp/10000/flvclipper/entry_id/0_video"  # the whole file: no clip is cut (fast)
VIDEO_RAW = "/p/100/sp/10000/raw/entry_id/0_video"
PRIVATE_RAW = "/p/200/sp/20000/raw/entry_id/0_private"
PRIVATE_THUMB = "/p/200/sp/20000/thumbnail/entry_id/0_private/width/50"
MAX_AGE = {"thumbnail": 3600, "raw": 8_640_000, "flvclipper": 8_640_000}
VERSIONS = ("v1", "v2")

assert (FIXTURE_MEDIA / "100" / "0_photo").is_dir() and (FIXTURE_MEDIA / "200" / "0_private").is_dir()


# ------------------------------------------------------------------------- an independent KS (SPEC §5 only)


def b64(raw: bytes, urlsafe: bool = False) -> str:
    text = base64.b64encode(raw).decode("ascii")
    return text.replace("+", "-").replace("/", "_") if urlsafe else text


def _aes_key(secret: str) -> bytes:
    return hashlib.sha1(secret.encode()).digest()[:16]


def _aes_encrypt(secret: str, plain: bytes) -> bytes:
    plain += b"\0" * (-len(plain) % 16)  # zero padding
    encryptor = Cipher(algorithms.AES(_aes_key(secret)), modes.CBC(bytes(16))).encryptor()
    return encryptor.update(plain) + encryptor.finalize()


def _aes_decrypt(secret: str, data: bytes) -> bytes:
    decryptor = Cipher(algorithms.AES(_aes_key(secret)), modes.CBC(bytes(16))).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def raw_v1(partner: int, secret: str, *, privileges: str = "", expiry: int | None = None, type: int = 0,
           user: str = "", rand: int | None = None, info: str | None = None) -> bytes:
    """`sha1hex|partnerId;partnerPattern;validUntil;type;rand;userId;privileges;masterPartnerId;additionalData`."""
    if info is None:
        expiry = int(time.time()) + 3600 if expiry is None else expiry
        rand = int.from_bytes(os.urandom(4), "big") if rand is None else rand
        info = f"{partner};{partner};{expiry};{type};{rand};{user};{privileges};;"
    return (hashlib.sha1((secret + info).encode()).hexdigest() + "|" + info).encode()


def _privilege_pairs(privileges: str) -> list[tuple[str, str]]:
    pairs = []
    for item in privileges.split(","):
        if item:
            name, _, value = item.partition(":")
            pairs.append((name, value))
    return pairs


def raw_v2(partner: int, secret: str, *, privileges: str = "", expiry: int | None = None, type: int = 0,
           user: str = "", fields: list[tuple[str, str]] | None = None) -> bytes:
    """`v2|{partner}|AES-128-CBC(SHA-1(rest) + rest)`, rest = 16 random bytes + urlencoded privileges, _e, _t, _u."""
    if fields is None:
        expiry = int(time.time()) + 3600 if expiry is None else expiry
        fields = [*_privilege_pairs(privileges), ("_e", str(expiry)), ("_t", str(type)), ("_u", user)]
    rest = os.urandom(16) + urlencode(fields).encode()
    return f"v2|{partner}|".encode() + _aes_encrypt(secret, hashlib.sha1(rest).digest() + rest)


def make(version: str, partner: int, secret: str, *, urlsafe: bool = True, **options) -> str:
    raw = raw_v1(partner, secret, **options) if version == "v1" else raw_v2(partner, secret, **options)
    return b64(raw, urlsafe)


def make_with(chars: str, version: str, partner: int, secret: str, *, urlsafe: bool, **options) -> str:
    """A KS whose text contains every character of `chars` (the random parts are drawn again until it does)."""
    for attempt in range(5000):
        if version == "v1" and "user" not in options:  # v1 is ASCII text: vary a user id with high 6-bit groups
            options_now = {**options, "user": "u~?" + "".join(random.choice("~?>}{o") for _ in range(attempt % 7))}
        else:
            options_now = options
        ks = make(version, partner, secret, urlsafe=urlsafe, **options_now)
        if all(char in ks for char in chars):
            return ks
    raise AssertionError(f"no KS with {chars!r} in 5000 draws")


def independent_parse(ks: str, secret: str) -> dict:
    """Decode and verify a KS (either alphabet) per SPEC §5; AssertionError when it does not verify."""
    text = ks.strip().replace("-", "+").replace("_", "/")
    raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    if raw.startswith(b"v2|"):
        _, partner, ciphertext = raw.split(b"|", 2)
        plain = _aes_decrypt(secret, ciphertext).rstrip(b"\0")
        digest, rest = plain[:20], plain[20:]
        assert hashlib.sha1(rest).digest() == digest, "v2: SHA-1 of the plaintext does not match"
        fields = parse_qsl(rest[16:].decode(), keep_blank_values=True)
        special = dict(item for item in fields if item[0] in ("_e", "_t", "_u"))
        return {"version": 2, "partner": int(partner), "expiry": int(special["_e"]), "type": int(special["_t"]),
                "user": special.get("_u", ""),
                "privileges": [item for item in fields if item[0] not in ("_e", "_t", "_u")]}
    signature, _, info = raw.partition(b"|")
    assert signature.decode() == hashlib.sha1(secret.encode() + info).hexdigest(), "v1: bad signature"
    parts = info.decode().split(";")
    return {"version": 1, "partner": int(parts[0]), "pattern": parts[1], "expiry": int(parts[2]),
            "type": int(parts[3]), "user": parts[5], "privileges": _privilege_pairs(parts[6])}


def test_independent_maker_round_trips():
    """The test's own maker and parser agree with each other (so they can judge the server and the command)."""
    for version in VERSIONS:
        for urlsafe in (False, True):
            ks = make(version, 100, SECRET_A, urlsafe=urlsafe, privileges="sview:0_photo,download:*",
                      expiry=2_000_000_000, type=0, user="alice")
            parsed = independent_parse(ks, SECRET_A)
            assert parsed["partner"] == 100 and parsed["expiry"] == 2_000_000_000 and parsed["user"] == "alice"
            assert parsed["privileges"] == [("sview", "0_photo"), ("download", "*")]
            with pytest.raises(AssertionError):
                independent_parse(ks, WRONG_SECRET)
    assert make_with("+/", "v1", 100, SECRET_A, urlsafe=False).count("+")
    assert not set(make_with("-_", "v2", 100, SECRET_A, urlsafe=True)) & set("+/")


# ------------------------------------------------------------------------------------------------ helpers


@pytest.fixture
def start(serve, tmp_path):
    """start(extra_toml) → a client of the real server on the fixture media with PARTNERS (+ extra)."""
    async def go(extra: str = "", partners: str = PARTNERS):
        return await serve(make_config(tmp_path, None, partners + "\n" + extra))
    return go


async def fetch(client, target: str, *, ks: str | None = None, where: str = "path", headers: dict | None = None):
    """GET target with the KS in the path (`/ks/...`), the query (`?ks=`, sent as is) or the X-Kaltura-Ks header."""
    headers = dict(headers or {})
    if ks is not None:
        if where == "path":
            target = target.rstrip("/") + "/ks/" + ks
        elif where == "query":
            target += ("&" if "?" in target else "?") + "ks=" + ks
        elif where == "header":
            headers["X-Kaltura-Ks"] = ks
        else:
            raise ValueError(where)
    return await send_raw(client, target, headers=headers)


def assert_allowed(result, service: str, *, private: bool = True) -> None:
    status, headers, body = result
    assert status == 200, (status, body[:300])
    assert body
    expected = f"{'private' if private else 'public'}, max-age={MAX_AGE[service]}"
    assert headers["cache-control"] == expected


def assert_denied(result, code: int | tuple[int, ...], *, ks: str | None = None) -> None:
    """403 with Kaltura's code (one of `code`), a one-line reason, never cached, and neither the KS nor a secret
    anywhere."""
    status, headers, body = result
    assert status == 403, (status, body[:300])
    codes = code if isinstance(code, tuple) else (code,)
    assert headers["x-kaltura"] in [f"error-{code}" for code in codes], headers["x-kaltura"]
    code = int(headers["x-kaltura"].removeprefix("error-"))
    assert re.fullmatch(rf"exiting on error {code} - [A-Z_]+", headers["x-kaltura-app"]), headers["x-kaltura-app"]
    text = body.decode()
    assert text.endswith("\n") and "\n" not in text[:-1] and "\r" not in text and len(text.strip()) > 5, text
    cache = headers.get("cache-control", "")
    assert cache == "no-store" or re.fullmatch(r"public, max-age=[0-9]", cache), cache
    exposed = text + "\n" + "\n".join(f"{name}: {value}" for name, value in headers.items())
    for secret in ALL_SECRETS:
        assert secret not in exposed
    if ks:
        for form in {ks, ks.replace("+", " "), quote(ks, safe=""), ks[:24], ks[-24:]}:
            if len(form.strip()) >= 8:
                assert form not in exposed, "the KS leaked into the error"


# ----------------------------------------------------------------------------------- no KS, bad KS, rejections


@pytest.mark.parametrize("target", [PHOTO_THUMB, VIDEO_CLIP, PHOTO_RAW, PRIVATE_RAW])
async def test_no_ks_where_one_is_required_is_403_code_3(start, target):
    client = await start()
    assert_denied(await fetch(client, target), 3)
    assert_denied(await fetch(client, target + "?ks="), 3)  # an empty KS is no KS
    # the check comes first: without a KS nobody learns whether an entry exists
    assert_denied(await fetch(client, target.replace("0_", "0_missing_")), 3)


def _tamper_v1() -> str:
    raw = raw_v1(100, SECRET_A, privileges="sview:0_other")
    return b64(raw.replace(b"sview:0_other", b"sview:*"), urlsafe=True)  # the signature no longer matches


def _tamper_v2() -> str:
    raw = bytearray(raw_v2(100, SECRET_A, privileges="sview:*"))
    raw[-20] ^= 0x01  # one bit of the ciphertext
    return b64(bytes(raw), urlsafe=True)


BAD_KS = {
    "garbage": lambda: "this is not a KS at all!",
    "not base64": lambda: "@@@@####$$$$",
    "base64 without a separator": lambda: b64(b"hello world, no pipe here"),
    "base64 binary": lambda: b64(os.urandom(60)),
    "v1 wrong secret": lambda: make("v1", 100, WRONG_SECRET, privileges="sview:*"),
    "v1 signed by another partner's secret": lambda: make("v1", 100, SECRET_200, privileges="sview:*"),
    "v1 truncated": lambda: make("v1", 100, SECRET_A, privileges="sview:*")[:-12],
    "v1 truncated by one char": lambda: make("v1", 100, SECRET_A, privileges="sview:*", user="u").rstrip("=")[:-1],
    "v1 tampered privileges": _tamper_v1,
    "v1 signature only": lambda: b64(hashlib.sha1(b"x").hexdigest().encode()),
    "v1 missing fields": lambda: b64(raw_v1(100, SECRET_A, info="100;100")),
    "v1 non-numeric expiry": lambda: b64(raw_v1(100, SECRET_A, info="100;100;soon;0;1;;sview:*;;")),
    "v1 non-numeric partner": lambda: b64(raw_v1(100, SECRET_A, info="abc;100;2000000000;0;1;;sview:*;;")),
    "v2 wrong secret": lambda: make("v2", 100, WRONG_SECRET, privileges="sview:*"),
    "v2 truncated": lambda: b64(raw_v2(100, SECRET_A, privileges="sview:*")[:-5]),
    "v2 truncated by a block": lambda: b64(raw_v2(100, SECRET_A, privileges="sview:*")[:-16]),
    "v2 tampered ciphertext": _tamper_v2,
    "v2 no ciphertext": lambda: b64(b"v2|100|"),
    "v2 non-numeric partner": lambda: b64(b"v2|abc|" + bytes(32)),
    "v2 plaintext instead of ciphertext": lambda: b64(b"v2|100|" + b"_e=2000000000&_t=2&_u=&sview=%2A----"),
    "v2 bad expiry": lambda: b64(raw_v2(100, SECRET_A, fields=[("sview", "*"), ("_e", "never"), ("_t", "0")])),
}


@pytest.mark.parametrize("name", BAD_KS)
async def test_unparsable_or_badly_signed_ks_is_403_code_7(start, name):
    client = await start()
    ks = BAD_KS[name]()
    for target, where in ((PHOTO_RAW, "header"), (PHOTO_THUMB, "query"), (PHOTO_RAW, "path")):
        assert_denied(await fetch(client, target, ks=ks if where == "header" else quote(ks, safe=""), where=where),
                      7, ks=ks)
    # on partner 200's URL: a KS naming partner 100 (even one signed with 200's secret) is 7 or 32, never accepted
    assert_denied(await fetch(client, PRIVATE_RAW, ks=ks, where="header"), (7, 32), ks=ks)


@pytest.mark.parametrize("version", VERSIONS)
async def test_expired_ks_is_403_code_31(start, version):
    client = await start()
    expired = make(version, 100, SECRET_A, privileges="sview:*", expiry=int(time.time()) - 60)
    assert_denied(await fetch(client, PHOTO_THUMB, ks=expired), 31, ks=expired)
    admin = make(version, 200, SECRET_200, type=2, expiry=int(time.time()) - 1)
    assert_denied(await fetch(client, PRIVATE_RAW, ks=admin, where="header"), 31, ks=admin)
    fresh = make(version, 100, SECRET_A, privileges="sview:*", expiry=int(time.time()) + 30)
    assert_allowed(await fetch(client, PHOTO_THUMB, ks=fresh), "thumbnail")


@pytest.mark.parametrize("version", VERSIONS)
async def test_ks_of_another_partner_signed_with_the_urls_secret_is_rejected(start, version):
    """A KS naming partner 300 that verifies only under partner 200's secret: never accepted on 200's URL."""
    client = await start()
    ks = make(version, 300, SECRET_200, type=2, privileges="sview:*")
    assert_denied(await fetch(client, PRIVATE_RAW, ks=ks), (7, 32), ks=ks)


@pytest.mark.parametrize("version", VERSIONS)
async def test_genuine_ks_of_partner_300_on_partner_200s_url_is_403_code_32(start, version):
    client = await start()
    ks = make(version, 300, SECRET_300, type=2, privileges="sview:*")
    assert_denied(await fetch(client, PRIVATE_RAW, ks=ks), 32, ks=ks)


@pytest.mark.parametrize("version", VERSIONS)
async def test_genuine_ks_of_partner_300_is_never_accepted_on_partner_200s_url(start, version):
    """Whatever the code, another partner's KS (even admin) opens nothing of partner 200."""
    client = await start()
    for ks in (make(version, 300, SECRET_300, type=2), make(version, 300, SECRET_300, privileges="download:*")):
        assert_denied(await fetch(client, PRIVATE_RAW, ks=ks), (7, 32), ks=ks)


# ---------------------------------------------------------------------------------------------- iprestrict

# (trusted proxies, X-Forwarded-For, iprestrict value, allowed). The test client is 127.0.0.1.
IP_CASES = {
    "peer matches": (False, None, "127.0.0.1", True),
    "peer does not match": (False, None, "10.1.2.3", False),
    "untrusted XFF is ignored (spoof)": (False, "10.1.2.3", "10.1.2.3", False),
    "untrusted XFF is ignored (peer)": (False, "10.9.9.9", "127.0.0.1", True),
    "trusted XFF matches": (True, "10.1.2.3", "10.1.2.3", True),
    "trusted XFF does not match": (True, "10.9.9.9", "10.1.2.3", False),
    "trusted XFF replaces the peer": (True, "10.1.2.3", "127.0.0.1", False),
    "trusted proxy without XFF": (True, None, "127.0.0.1", True),
    "trusted chain: last untrusted hop": (True, "10.1.2.3, 127.0.0.1", "10.1.2.3", True),
    "trusted chain: spoofed first hop": (True, "10.1.2.3, 10.7.7.7", "10.1.2.3", False),
    "network": (True, "10.1.2.3", "10.0.0.0/8", True),
    "network not matching": (True, "11.1.2.3", "10.0.0.0/8", False),
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", IP_CASES)
async def test_iprestrict(start, version, case):
    trusted, forwarded, allowed_ip, allowed = IP_CASES[case]
    client = await start(TRUSTED_LOOPBACK if trusted else "")
    ks = make(version, 200, SECRET_200, privileges=f"download:*,iprestrict:{allowed_ip}")
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    result = await fetch(client, PRIVATE_RAW, ks=ks, where="header", headers=headers)
    if allowed:
        assert_allowed(result, "raw")
    else:
        assert_denied(result, 34, ks=ks)


@pytest.mark.parametrize("version", VERSIONS)
async def test_iprestrict_applies_to_admin_ks_too(start, version):
    client = await start()
    ks = make(version, 100, SECRET_A, type=2, privileges="iprestrict:10.1.2.3")
    assert_denied(await fetch(client, PHOTO_RAW, ks=ks), 34, ks=ks)


# ---------------------------------------------------------------------------------------------- urirestrict

# (urirestrict value, request target, where the KS goes, allowed)
URI_CASES = {
    "exact": (PRIVATE_RAW, PRIVATE_RAW, "header", True),
    "exact, KS in the query": (PRIVATE_RAW, PRIVATE_RAW, "query", True),
    "exact, other path": (PRIVATE_RAW, PRIVATE_RAW + "/file_name/x.jpg", "header", False),
    "exact, other partner path spelling": (PRIVATE_RAW, "/p/200/raw/entry_id/0_private", "header", False),
    "prefix": ("/p/200/sp/20000/raw/*", PRIVATE_RAW, "header", True),
    "prefix, KS in the path": ("/p/200/sp/20000/raw/*", PRIVATE_RAW, "path", True),
    "prefix of the entry": ("/p/200/sp/20000/raw/entry_id/0_priv*", PRIVATE_RAW, "path", True),
    "prefix of another service": ("/p/200/sp/20000/thumbnail/*", PRIVATE_RAW, "header", False),
    "prefix is not a substring": ("/sp/20000/raw/*", PRIVATE_RAW, "header", False),
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", URI_CASES)
async def test_urirestrict(start, version, case):
    pattern, target, where, allowed = URI_CASES[case]
    client = await start()
    ks = make(version, 200, SECRET_200, privileges=f"download:*,urirestrict:{pattern}")
    result = await fetch(client, target, ks=ks, where=where)
    if allowed:
        assert_allowed(result, "raw")
    else:
        assert_denied(result, 3, ks=ks)


# ----------------------------------------------------------------------------------------------- privileges

# (privileges, type) → the requests that must pass; every other one of REQUESTS is a 403 code 3
REQUESTS = {"thumbnail photo": (PHOTO_THUMB, "thumbnail"), "clip video": (VIDEO_CLIP, "flvclipper"),
            "raw photo": (PHOTO_RAW, "raw"), "raw video": (VIDEO_RAW, "raw")}
PRIVILEGE_CASES = {
    "sview:0_photo": (0, {"thumbnail photo", "raw photo"}),
    "sview:0_video": (0, {"clip video", "raw video"}),
    "sview:*": (0, {"thumbnail photo", "clip video", "raw photo", "raw video"}),
    "download:0_photo": (0, {"raw photo"}),
    "download:*": (0, {"raw photo", "raw video"}),
    "sview:0_video,download:0_photo": (0, {"clip video", "raw video", "raw photo"}),
    "": (0, set()),  # a user KS without privileges
    "edit:*,list:*,sview:0_phot": (0, set()),  # unrelated privileges, a prefix of an entry id
    "sview:0_photo_x,download:0_vid": (0, set()),
    "admin": (2, set(REQUESTS)),  # an admin KS allows all, with no privileges at all
    "type 1": (1, set(REQUESTS)),  # SPEC §5: type >= 1 counts as admin
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", PRIVILEGE_CASES)
async def test_privileges(start, version, case):
    type, granted = PRIVILEGE_CASES[case]
    client = await start()
    ks = make(version, 100, SECRET_A, privileges="" if case in ("admin", "type 1") else case, type=type,
              user="alice")
    for name, (target, service) in REQUESTS.items():
        result = await fetch(client, target, ks=ks, where="query")
        if name in granted:
            assert_allowed(result, service)
        else:
            assert_denied(result, 3, ks=ks)


async def test_successful_ks_answers_are_the_real_content(start):
    client = await start()
    ks = make("v2", 100, SECRET_B, privileges="sview:*")
    status, headers, body = await fetch(client, PHOTO_RAW, ks=ks)
    assert status == 200 and body == (FIXTURE_MEDIA / "100/0_photo/original.jpg").read_bytes()
    status, headers, body = await fetch(client, PHOTO_THUMB, ks=ks)
    assert status == 200 and headers["content-type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    status, headers, body = await fetch(client, VIDEO_CLIP, ks=ks)
    assert status == 200 and headers["content-type"] == "video/mp4"
    assert headers["cache-control"] == "private, max-age=8640000"


# ----------------------------------------------------------------------------- alphabets and where the KS goes

# (alphabet, how it is sent)
CARRIERS = {
    "standard in the header": (False, "header", lambda ks: ks),
    "standard in the query, + as sent (arrives as a space)": (False, "query", lambda ks: ks),
    "standard in the query, percent-encoded": (False, "query", lambda ks: quote(ks, safe="")),
    "standard in the path, percent-encoded": (False, "path", lambda ks: quote(ks, safe="")),
    "url-safe in the path": (True, "path", lambda ks: ks),
    "url-safe in the query": (True, "query", lambda ks: ks),
    "url-safe in the header": (True, "header", lambda ks: ks),
    "url-safe without padding in the path": (True, "path", lambda ks: ks.rstrip("=")),
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("carrier", CARRIERS)
async def test_both_alphabets_from_path_query_and_header(start, version, carrier):
    urlsafe, where, transform = CARRIERS[carrier]
    client = await start()
    chars = "-_" if urlsafe else "+/"
    if carrier.endswith("without padding in the path"):  # a KS with padding to leave out (lengths vary with user)
        users = [{"user": "u" * n} if version == "v2" else {} for n in range(1, 100)]  # v1 varies its own
        ks = next(ks for user in users for ks in [make_with(chars, version, 200, SECRET_200, urlsafe=True,
                                                            privileges="download:*", **user)] if ks.endswith("="))
    else:
        ks = make_with(chars, version, 200, SECRET_200, urlsafe=urlsafe, privileges="download:*")
    assert_allowed(await fetch(client, PRIVATE_RAW, ks=transform(ks), where=where), "raw")
    if where == "path":  # before a trailing file name
        assert_allowed(await send_raw(client, f"{PRIVATE_RAW}/ks/{transform(ks)}/a.jpg"), "raw")
    else:
        assert_allowed(await fetch(client, PRIVATE_RAW + "/a.jpg", ks=transform(ks), where=where), "raw")


async def test_path_ks_beats_query_ks(start):
    client = await start()
    good = make("v1", 200, SECRET_200, privileges="download:*")
    bad = make("v1", 200, WRONG_SECRET, privileges="download:*")
    assert_allowed(await send_raw(client, f"{PRIVATE_RAW}/ks/{good}?ks={bad}"), "raw")
    assert_denied(await send_raw(client, f"{PRIVATE_RAW}/ks/{bad}?ks={good}"), 7, ks=bad)


async def test_ks_in_the_path_of_every_service_and_url_form(start):
    client = await start()
    ks = make("v2", 100, SECRET_A, privileges="sview:*")
    for target, service in ((f"/p/100/thumbnail/entry_id/0_photo/ks/{ks}/width/40", "thumbnail"),
                            (f"/s/p/100/sp/10000/thumbnail/ks/{ks}/entry_id/0_photo.jpg", "thumbnail"),
                            (f"/p/100/flvclipper/ks/{ks}/entry_id/0_video/a.mp4", "flvclipper"),
                            (f"/flvclipper/entry_id/0_video/ks/{ks}", "flvclipper"),  # [defaults] partner 100
                            (f"/p/100/raw/entry_id/0_photo/ks/{ks}/file_name/x.jpg", "raw")):
        assert_allowed(await send_raw(client, target), service)


async def test_preflight_needs_no_ks_and_allows_the_header(start):
    client = await start()
    status, headers, _ = await send_raw(client, PHOTO_RAW, method="OPTIONS",
                                        headers={"Origin": "https://example.com",
                                                 "Access-Control-Request-Headers": "x-kaltura-ks"})
    assert status == 204 and "x-kaltura-ks" in headers["access-control-allow-headers"].lower()


# --------------------------------------------------------------------------------------- secrets: rotation, env


@pytest.mark.parametrize("version", VERSIONS)
async def test_secret_rotation(start, version):
    client = await start()
    for secret in (SECRET_A, SECRET_B):
        ks = make(version, 100, secret, privileges="download:0_photo")
        assert_allowed(await fetch(client, PHOTO_RAW, ks=ks), "raw")
    for secret in (WRONG_SECRET, SECRET_A + SECRET_B, SECRET_A[:-1]):
        ks = make(version, 100, secret, privileges="download:0_photo")
        assert_denied(await fetch(client, PHOTO_RAW, ks=ks), 7, ks=ks)


@pytest.mark.parametrize("version", VERSIONS)
async def test_secrets_from_the_environment(serve, tmp_path, version):
    path = tmp_path / "config.toml"
    path.write_text(f'[origin]\nkind = "local"\nroot = "{FIXTURE_MEDIA}"\n\n[cache]\ndir = "{tmp_path / "cache"}"\n\n'
                    f'[partners.200]\nks_required_for = ["raw"]\n\n'
                    f'[partners.100]\nadmin_secrets = ["{FILE_SECRET}"]\n')
    config = load(path, environ={"MEDIAPROXY_PARTNER_200_ADMIN_SECRETS": f"{ENV_SECRET_1}, {ENV_SECRET_2}",
                                 "MEDIAPROXY_PARTNER_100_ADMIN_SECRETS": ENV_SECRET_1,
                                 "MEDIAPROXY_PARTNER_100_KS_REQUIRED_FOR": "raw,thumbnail"})
    assert config.partner(200).admin_secrets == (ENV_SECRET_1, ENV_SECRET_2)
    client = await serve(config)
    for secret in (ENV_SECRET_1, ENV_SECRET_2):
        assert_allowed(await fetch(client, PRIVATE_RAW, ks=make(version, 200, secret, privileges="download:*")),
                       "raw")
    assert_denied(await fetch(client, PRIVATE_RAW), 3)
    ks = make(version, 200, WRONG_SECRET, privileges="download:*")
    assert_denied(await fetch(client, PRIVATE_RAW, ks=ks), 7, ks=ks)
    # partner 100: the environment's secret replaces the file's; its ks_required_for came from the environment too
    assert_allowed(await fetch(client, PHOTO_RAW, ks=make(version, 100, ENV_SECRET_1, type=2)), "raw")
    ks = make(version, 100, FILE_SECRET, type=2)
    assert_denied(await fetch(client, PHOTO_RAW, ks=ks), 7, ks=ks)
    assert_denied(await fetch(client, PHOTO_THUMB), 3)
    assert_allowed(await fetch(client, VIDEO_CLIP), "flvclipper", private=False)


def test_a_partner_needing_a_ks_needs_a_secret_from_the_file_or_the_environment(tmp_path):
    """A partner that needs a KS but has no secret anywhere is a config error, not an open door."""
    from mediaproxy.config import ConfigError

    path = tmp_path / "config.toml"
    path.write_text(f'[origin]\nkind = "local"\nroot = "{FIXTURE_MEDIA}"\n\n[partners.200]\nks_required_for = ["raw"]\n')
    with pytest.raises(ConfigError):
        load(path, environ={})
    assert load(path, environ={"MEDIAPROXY_PARTNER_200_ADMIN_SECRETS": ENV_SECRET_1}).partner(200).admin_secrets


# ------------------------------------------------------------------------------------------- public partners


async def test_public_partner_ignores_any_ks(start):
    client = await start(partners=f'[partners.200]\nadmin_secrets = ["{SECRET_200}"]\nks_required_for = ["raw"]\n')
    garbage = "this is not a KS at all!"
    expired = make("v1", 100, SECRET_A, type=2, expiry=int(time.time()) - 600)
    other = make("v2", 300, SECRET_300, privileges="sview:*")
    ip_bound = make("v1", 100, SECRET_A, privileges="sview:*,iprestrict:10.1.2.3")
    for target, service in ((PHOTO_THUMB, "thumbnail"), (VIDEO_CLIP, "flvclipper"), (PHOTO_RAW, "raw")):
        assert_allowed(await fetch(client, target), service, private=False)
        assert_allowed(await fetch(client, target, ks=quote(garbage, safe=""), where="path"), service, private=False)
        assert_allowed(await fetch(client, target, ks=garbage, where="header"), service, private=False)
        for ks in (expired, other, ip_bound):
            assert_allowed(await fetch(client, target, ks=ks, where="query"), service, private=False)


async def test_services_not_listed_stay_public_for_that_partner(start):
    client = await start()
    garbage = "garbage-ks"
    valid = make("v1", 200, SECRET_200, privileges="sview:*")
    for ks in (None, garbage, valid, make("v2", 200, SECRET_200, expiry=1)):
        assert_allowed(await fetch(client, PRIVATE_THUMB, ks=ks, where="query"), "thumbnail", private=False)
    assert_denied(await fetch(client, PRIVATE_RAW), 3)
    assert_allowed(await fetch(client, PRIVATE_RAW, ks=valid), "raw")


# ----------------------------------------------------------------------- caching: shared render, check each time


async def test_cached_thumbnail_is_shared_but_the_check_runs_every_time(aiohttp_client, tmp_path):
    app = make_app(make_config(tmp_path, None, PARTNERS))
    pool = app[RUNTIME].pool
    renders = []
    original_run = pool.run

    async def counting_run(function, *args):
        if function.__name__ in ("render_image", "decode_and_render", "render_decoded"):
            renders.append("render_image")
        return await original_run(function, *args)

    pool.run = counting_run
    client = await aiohttp_client(app)
    user_ks = make("v1", 100, SECRET_A, privileges="sview:0_photo", user="alice")
    admin_ks = make("v2", 100, SECRET_B, type=2, user="bob")
    first = await fetch(client, PHOTO_THUMB, ks=user_ks, where="path")
    second = await fetch(client, PHOTO_THUMB, ks=admin_ks, where="query")
    third = await fetch(client, PHOTO_THUMB, ks=user_ks, where="header")
    for result in (first, second, third):
        assert_allowed(result, "thumbnail")
    assert first[2] == second[2] == third[2]
    assert first[1]["etag"] == second[1]["etag"] == third[1]["etag"]
    assert renders == ["render_image"]
    etag = first[1]["etag"]

    assert_denied(await fetch(client, PHOTO_THUMB), 3)
    assert_denied(await fetch(client, PHOTO_THUMB, headers={"If-None-Match": etag}), 3)  # no 304 without a KS
    expired = make("v1", 100, SECRET_A, privileges="sview:*", expiry=int(time.time()) - 5)
    assert_denied(await fetch(client, PHOTO_THUMB, ks=expired), 31, ks=expired)
    assert_denied(await fetch(client, PHOTO_THUMB, ks="garbage"), 7)
    other_entry = make("v1", 100, SECRET_A, privileges="sview:0_video")
    assert_denied(await fetch(client, PHOTO_THUMB, ks=other_entry), 3, ks=other_entry)
    status, headers, _ = await fetch(client, PHOTO_THUMB, ks=user_ks, headers={"If-None-Match": etag})
    assert status == 304 and headers["cache-control"].startswith("private")
    assert renders == ["render_image"]


# -------------------------------------------------------------------------------------------------- the logs


async def start_logged_server(config):
    """The server as `mediaproxy serve` runs it: mediaproxy's AccessLogger on the "mediaproxy.access" logger."""
    runner = web.AppRunner(make_app(config), access_log_class=AccessLogger,
                           access_log=logging.getLogger("mediaproxy.access"))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()

    class Address:
        host = "127.0.0.1"
        port = site._server.sockets[0].getsockname()[1]

    return runner, Address()


def _leaks(text: str, kss: list[str]) -> list[str]:
    found = [secret for secret in ALL_SECRETS if secret in text]
    for ks in kss:
        for form in {ks, ks.replace("+", " "), quote(ks, safe=""), ks[:24], ks[-24:].rstrip("=")}:
            if len(form.strip()) >= 8 and form in text:
                found.append(form)
    return found


async def test_access_log_never_holds_a_ks_or_a_secret(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    runner, client = await start_logged_server(make_config(tmp_path, None, PARTNERS))
    try:
        good = make_with("+/", "v1", 100, SECRET_A, urlsafe=False, privileges="sview:*")
        good_safe = make("v2", 100, SECRET_B, privileges="sview:*")
        bad = make("v1", 100, WRONG_SECRET, privileges="sview:*")
        expired = make("v2", 100, SECRET_A, type=2, expiry=1)
        kss = [good, good_safe, bad, expired]
        targets = [
            (f"{PHOTO_THUMB}/ks/{good_safe}", 200),
            (f"{PHOTO_THUMB}/ks/{quote(good, safe='')}/a.jpg", 200),
            (f"{PHOTO_THUMB}?ks={good}", 200),  # standard alphabet, + and / as sent
            (f"{PHOTO_THUMB}?a=1&ks={quote(good, safe='')}&b=2", 200),
            (f"{PHOTO_RAW}/k%73/{good_safe}", 200),  # an escaped key is still `ks`
            (f"{PHOTO_RAW}?k%73={good_safe}", 200),
            (f"{PHOTO_RAW}/ks/{bad}", 403),
            (f"{PHOTO_RAW}?ks={expired}", 403),
            (f"/p/100/sp/10000/raw/ks/{bad}/entry_id/bad!id", 400),
        ]
        for target, expected in targets:
            status, headers, body = await send_raw(client, target)
            assert status == expected, (target, status, body[:200])
            assert not _leaks(body.decode("latin-1"), kss)
        status, _, _ = await send_raw(client, PHOTO_RAW, headers={"X-Kaltura-Ks": good_safe})
        assert status == 200
        # the access line is written after the response went out
        await until(lambda: len([r for r in caplog.records if r.name == "mediaproxy.access"]) >= len(targets) + 1)
    finally:
        await runner.cleanup()
    access = [record.getMessage() for record in caplog.records if record.name == "mediaproxy.access"]
    assert len(access) == len(targets) + 1, access
    assert sum("[redacted]" in line for line in access) >= len(targets)
    everything = "\n".join(f"{record.name} {record.getMessage()} {record.exc_text or ''}"
                           for record in caplog.records)
    assert not _leaks(everything, kss), everything


@pytest.mark.parametrize("template", [
    "/p/100/sp/10000/thumbnail/entry_id/0_photo/ks/{ks}",
    "/p/100/sp/10000/thumbnail/ks/{ks}/entry_id/0_photo/a.jpg",
    "/p/100/sp/10000/raw/entry_id/0_photo?ks={ks}",
    "/p/100/sp/10000/raw/entry_id/0_photo?x=1&ks={ks}&y=2",
    "/p/100/sp/10000/raw/entry_id/0_photo/k%73/{ks}",
    "/p/100/sp/10000/raw/entry_id/0_photo?k%73={ks}",
    "/s/p/100/flvclipper/entry_id/0_video//ks//{ks}",
])
@pytest.mark.parametrize("version", VERSIONS)
def test_access_logger_redacts_the_ks(caplog, template, version):
    caplog.set_level(logging.INFO, logger="mediaproxy.access")
    ks = make_with("-_", version, 100, SECRET_A, urlsafe=True, privileges="sview:*")
    request = make_mocked_request("GET", template.format(ks=ks))
    AccessLogger(logging.getLogger("mediaproxy.access"), "").log(request, web.Response(status=200), 0.1)
    lines = [record.getMessage() for record in caplog.records if record.name == "mediaproxy.access"]
    assert len(lines) == 1 and "[redacted]" in lines[0], lines
    assert not _leaks(lines[0], [ks]), lines[0]


# ------------------------------------------------------------------------------------------- `mediaproxy ks`

CLI_CASES = {
    "v1 user": ["--partner", "100", "--secret", SECRET_A, "--privileges", "sview:0_photo", "--user", "alice"],
    "v2 user": ["--partner", "200", "--secret", SECRET_200, "--privileges", "download:*,iprestrict:127.0.0.1",
                "--v2", "--user", "bob"],
    "v1 admin": ["--partner", "100", "--secret", SECRET_B, "--type", "2"],
    "v2 admin": ["--partner", "100", "--secret", SECRET_A, "--type", "2", "--v2"],
    "v1 expired": ["--partner", "100", "--secret", SECRET_A, "--privileges", "sview:*", "--expiry=-60"],
    "v2 expired": ["--partner", "100", "--secret", SECRET_A, "--privileges", "sview:*", "--expiry=-60", "--v2"],
    "v2 short": ["--partner", "100", "--secret", SECRET_B, "--privileges", "sview:0_video", "--expiry", "120",
                 "--v2"],
}


@pytest.fixture(scope="module")
def cli_ks() -> dict[str, tuple[str, float]]:
    """The output of `python -m mediaproxy ks` for each case (run in parallel), with the time it was made."""
    environ = {key: value for key, value in os.environ.items() if not key.startswith("MEDIAPROXY_")}
    made = time.time()
    processes = {name: subprocess.Popen([sys.executable, "-m", "mediaproxy", "ks", *args], cwd=REPO, env=environ,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name, args in CLI_CASES.items()}
    outputs = {}
    for name, process in processes.items():
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, (name, err)
        assert out.endswith("\n") and out.count("\n") == 1, out
        outputs[name] = (out.strip(), made)
    return outputs


def test_cli_ks_verifies_with_the_independent_parser(cli_ks):
    expectations = {
        "v1 user": (1, SECRET_A, 100, 0, "alice", [("sview", "0_photo")], 86400),
        "v2 user": (2, SECRET_200, 200, 0, "bob", [("download", "*"), ("iprestrict", "127.0.0.1")], 86400),
        "v1 admin": (1, SECRET_B, 100, 2, "", [], 86400),
        "v2 admin": (2, SECRET_A, 100, 2, "", [], 86400),
        "v1 expired": (1, SECRET_A, 100, 0, "", [("sview", "*")], -60),
        "v2 expired": (2, SECRET_A, 100, 0, "", [("sview", "*")], -60),
        "v2 short": (2, SECRET_B, 100, 0, "", [("sview", "0_video")], 120),
    }
    for name, (version, secret, partner, type, user, privileges, lifetime) in expectations.items():
        ks, made = cli_ks[name]
        assert re.fullmatch(r"[A-Za-z0-9_=-]+", ks), (name, ks)  # usable as is in a path or a query string
        parsed = independent_parse(ks, secret)
        assert (parsed["version"], parsed["partner"], parsed["type"], parsed["user"]) == (version, partner, type,
                                                                                         user), name
        assert parsed["privileges"] == privileges, name
        assert abs(parsed["expiry"] - (made + lifetime)) < 30, name
        for other in (WRONG_SECRET, SECRET_300):
            with pytest.raises(AssertionError):
                independent_parse(ks, other)


async def test_cli_ks_is_accepted_by_the_server(start, cli_ks):
    client = await start()
    ks = {name: value for name, (value, _) in cli_ks.items()}
    assert_allowed(await fetch(client, PHOTO_THUMB, ks=ks["v1 user"]), "thumbnail")
    assert_allowed(await fetch(client, PHOTO_RAW, ks=ks["v1 user"], where="query"), "raw")
    assert_denied(await fetch(client, VIDEO_RAW, ks=ks["v1 user"]), 3, ks=ks["v1 user"])
    assert_allowed(await fetch(client, PRIVATE_RAW, ks=ks["v2 user"], where="header"), "raw")
    assert_denied(await fetch(client, PHOTO_RAW, ks=ks["v2 user"]), (7, 32), ks=ks["v2 user"])  # 200's KS
    for name in ("v1 admin", "v2 admin"):
        for target, service in ((PHOTO_THUMB, "thumbnail"), (VIDEO_CLIP, "flvclipper"), (VIDEO_RAW, "raw")):
            assert_allowed(await fetch(client, target, ks=ks[name]), service)
    for name in ("v1 expired", "v2 expired"):
        assert_denied(await fetch(client, PHOTO_THUMB, ks=ks[name]), 31, ks=ks[name])
    assert_allowed(await fetch(client, VIDEO_CLIP, ks=ks["v2 short"], where="query"), "flvclipper")
    assert_denied(await fetch(client, PHOTO_RAW, ks=ks["v2 short"]), 3, ks=ks["v2 short"])


async def test_a_ks_ending_with_plus_survives_a_query_string(start):
    """A '+' of the standard alphabet sent raw in a query arrives as a space, at the end of the KS too."""
    ks = next(ks for ks in (make("v2", 200, SECRET_200, urlsafe=False, privileges="download:*").rstrip("=")
                            for _ in range(5000)) if ks.endswith("+"))
    client = await start()
    assert_allowed(await fetch(client, PRIVATE_RAW, ks=ks, where="query"), "raw")
