"""Kaltura's notifications received over HTTP (SPEC §8): every form, every refusal, deleted and blocked entries,
the operators' purge, the log and the metrics. One server on loopback; tests with several worker processes are in
test_purge_workers.py.

Every notification here is built from SPEC §8 alone by the helpers below (they never import mediaproxy's own
notification code): Kaltura's `sig` (MD5 of the admin secret and the sorted key+value pairs, only those listed in
`signed_fields` for a single notification), and the newer `X-KALTURA-SIGNATURE` (a hash of the secret and the raw
body). The origin is a local folder the tests change; `revalidate_seconds` is an hour, so only a notification (or a
purge) makes a change show before then.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from pathlib import Path
from urllib.parse import urlencode

import pytest
from PIL import Image

from .conftest import FIXTURE_MEDIA, cache_entries, make_config, send_raw, until

SECRET_A = "hundred-admin-secret-A-51e0"  # partner 100, two secrets (rotation)
SECRET_B = "hundred-admin-secret-B-77c2"
SECRET_200 = "two-hundred-admin-secret-3f9a"
ALL_SECRETS = (SECRET_A, SECRET_B, SECRET_200)
PARTNERS = f"""
[partners.100]
admin_secrets = ["{SECRET_A}", "{SECRET_B}"]

[partners.200]
admin_secrets = ["{SECRET_200}"]
"""
ORIGIN = 'kind = "local"\nroot = "{root}"\nrevalidate_seconds = 3600\nnot_found_seconds = 3600'
THUMB = "/p/100/sp/10000/thumbnail/entry_id/0_swap/width/32"
RAW = "/p/100/sp/10000/raw/entry_id/0_swap"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)


# ------------------------------------------------------------------------------- notifications from SPEC §8 only


def kaltura_sig(secret: str, fields: dict[str, str], only: set[str] | None = None) -> str:
    keys = sorted(key for key in fields if key != "sig" and (only is None or key in only))
    return hashlib.md5((secret + "".join(key + fields[key] for key in keys)).encode()).hexdigest()


def single(secret: str, kind: str, entry: str | None = "0_swap", *, id: str | None = "1001", partner: int = 100,
           extra: dict[str, str] | None = None, signed: list[str] | None = None) -> dict[str, str]:
    """A single notification as Kaltura sends it: `signed_fields` lists every field (itself too), then `sig`."""
    fields = {"notification_id": id, "notification_type": kind, "puser_id": "admin", "partner_id": str(partner),
              "entry_id": entry, **(extra or {})}
    fields = {key: value for key, value in fields.items() if value is not None}
    listed = signed if signed is not None else [*fields, "signed_fields"]
    fields["signed_fields"] = ",".join(listed) + ","
    fields["sig"] = kaltura_sig(secret, fields, set(listed))
    return fields


def multi(secret: str, notifications: list[dict[str, str]]) -> dict[str, str]:
    """Several in one POST: every field prefixed `not{i}_`, one `sig` over every field."""
    fields = {}
    for index, notification in enumerate(notifications, 1):
        fields.update({f"not{index}_{key}": value for key, value in notification.items()})
    fields.update(multi_notification="true", number_of_notifications=str(len(notifications)))
    fields["sig"] = kaltura_sig(secret, fields)
    return fields


def note(kind: str, entry: str = "0_swap", id: str = "2001", partner: int = 100) -> dict[str, str]:
    return {"notification_id": id, "notification_type": kind, "puser_id": "", "partner_id": str(partner),
            "entry_id": entry}


def header_signed(secret: str, body: bytes, algorithm: str | None = None,
                  content_type: str = "application/x-www-form-urlencoded") -> dict[str, str]:
    """The newer HTTP event notification: the raw body signed in X-KALTURA-SIGNATURE."""
    hasher = {None: hashlib.sha1, "sha1": hashlib.sha1, "sha256": hashlib.sha256,
              "sha512": hashlib.sha512}[algorithm]
    headers = {"Content-Type": content_type, "X-KALTURA-SIGNATURE": hasher(secret.encode() + body).hexdigest()}
    if algorithm:
        headers["X-KALTURA-HASH-ALGO"] = algorithm
    return headers


def event_json(kind_event: int, entry: str = "0_swap", *, status: int = 2, job: int = 33578094492,
               partner: int = 100, object_type: int = 1) -> bytes:
    """A KalturaHttpNotification with a KalturaMediaEntry object, as Kaltura's JSON object data sends it."""
    thing = {"objectType": "KalturaMediaEntry", "partnerId": partner, "status": status}
    thing.update({"id": entry} if object_type == 1 else {"id": "0_asset01", "entryId": entry})
    return json.dumps({"object": thing, "eventObjectType": object_type, "eventNotificationJobId": job,
                       "templateId": 26970222, "eventType": kind_event, "objectType": "KalturaHttpNotification"}
                      ).encode()


# ------------------------------------------------------------------------------------------------- the server


def solid_jpeg(color: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "JPEG", quality=90)
    return out.getvalue()


def replace_original(root: Path, color: tuple[int, int, int], entry: str = "0_swap") -> bytes:
    """A new file in place of the original (a new inode and mtime: a new identity)."""
    body = solid_jpeg(color)
    folder = root / "100" / entry
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "new.tmp").write_bytes(body)
    os.replace(folder / "new.tmp", folder / "original.jpg")
    return body


def colour_of(body: bytes) -> tuple[int, int, int]:
    image = Image.open(io.BytesIO(body)).convert("RGB")
    return image.getpixel((image.width // 2, image.height // 2))


def near(actual: tuple[int, int, int], expected: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 12 for a, b in zip(actual, expected))


@pytest.fixture
def origin(tmp_path) -> Path:
    root = tmp_path / "media"
    shutil.copytree(FIXTURE_MEDIA, root)
    replace_original(root, RED)
    return root


@pytest.fixture
def start(serve, tmp_path, origin):
    """start(extra_toml) → a client of a server on the changeable origin, with PARTNERS (+ extra)."""
    async def go(extra: str = "", partners: str = PARTNERS):
        return await serve(make_config(tmp_path, ORIGIN.format(root=origin), partners + "\n" + extra))
    return go


async def picture(client, target: str = THUMB) -> tuple[int, int, int]:
    response = await client.get(target)
    assert response.status == 200, await response.text()
    return colour_of(await response.read())


async def post(client, fields: dict[str, str] | None = None, *, body: bytes | None = None,
               headers: dict[str, str] | None = None, path: str = "/notifications"):
    """(status, parsed JSON or text) of a POST."""
    data = body if body is not None else urlencode(fields or {}).encode()
    response = await client.post(path, data=data, headers=headers or FORM)
    text = await response.text()
    try:
        return response.status, json.loads(text), response.headers
    except ValueError:
        return response.status, text, response.headers


def outcomes(answer: dict) -> list[str]:
    return [item["outcome"] for item in answer["notifications"]]


async def cached_then_changed(client, origin: Path) -> None:
    """The red picture is served and cached; the original turns blue; the cached red is still what is served."""
    assert near(await picture(client), RED)
    replace_original(origin, BLUE)
    assert near(await picture(client), RED)  # revalidate_seconds is an hour: what was learnt is trusted


# ------------------------------------------------------------------------------------------------------- forms


FORMS = {
    "single": lambda: (urlencode(single(SECRET_A, "entry_update")).encode(), FORM),
    "single, rotated-in secret": lambda: (urlencode(single(SECRET_B, "entry_update_thumbnail")).encode(), FORM),
    "single without signed_fields": lambda: (urlencode(_without_signed_fields()).encode(), FORM),
    "multi": lambda: (urlencode(multi(SECRET_A, [note("entry_update", "0_photo", "3001"),
                                                 note("entry_update_thumbnail", "0_swap", "3002")])).encode(), FORM),
    "header, sha1": lambda: _header_form(None),
    "header, sha256": lambda: _header_form("sha256"),
    "header, sha512": lambda: _header_form("sha512"),
    "header, JSON entry object": lambda: (event_json(2), header_signed(SECRET_A, event_json(2), "sha256",
                                                                      "application/json")),
    "header, JSON thumbnail asset": lambda: (event_json(2, object_type=5),
                                             header_signed(SECRET_B, event_json(2, object_type=5), None,
                                                           "application/json")),
}


def _without_signed_fields() -> dict[str, str]:
    fields = {"notification_id": "4001", "notification_type": "entry_update", "partner_id": "100",
              "entry_id": "0_swap"}
    fields["sig"] = kaltura_sig(SECRET_A, fields)
    return fields


def _header_form(algorithm: str | None) -> tuple[bytes, dict[str, str]]:
    body = urlencode({"notification_type": "entry_update", "partner_id": "100", "entry_id": "0_swap",
                      "notification_id": "5001"}).encode()
    return body, header_signed(SECRET_A, body, algorithm)


@pytest.mark.parametrize("form", FORMS)
async def test_every_form_drops_the_entry_and_the_next_request_shows_the_change(start, origin, form):
    client = await start()
    await cached_then_changed(client, origin)
    body, headers = FORMS[form]()
    status, answer, response_headers = await post(client, body=body, headers=headers)
    assert status == 200, answer
    assert response_headers["Cache-Control"] == "no-store"
    assert "purged" in outcomes(answer)
    assert near(await picture(client), BLUE)
    response = await client.get(RAW)
    assert await response.read() == (origin / "100/0_swap/original.jpg").read_bytes()


async def test_a_purge_drops_results_even_when_the_origins_validators_did_not_change(start, origin):
    """An original rewritten in place with the same size and mtime keeps its identity: only dropping everything
    derived from it (results in memory and on disk, decoded pictures, hot bytes) shows the new picture."""
    client = await start()
    path = origin / "100/0_swap/original.jpg"
    red = path.read_bytes()
    assert near(await picture(client), RED)
    blue = solid_jpeg(BLUE)
    assert len(blue) <= len(red)
    stat = path.stat()
    with open(path, "r+b") as file:  # same inode, same size (a JPEG ignores what follows its end), same mtime
        file.write(blue + b"\0" * (len(red) - len(blue)))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert near(await picture(client), RED)
    assert (await post(client, single(SECRET_A, "entry_update")))[0] == 200
    assert near(await picture(client), BLUE)


async def test_entry_add_makes_a_new_entry_visible_at_once(start, origin):
    client = await start()
    response = await client.get("/p/100/thumbnail/entry_id/0_brandnew/width/32")
    assert response.status == 404  # remembered for not_found_seconds (an hour here)
    replace_original(origin, GREEN, entry="0_brandnew")
    assert (await client.get("/p/100/thumbnail/entry_id/0_brandnew/width/32")).status == 404
    status, answer, _ = await post(client, single(SECRET_A, "entry_add", "0_brandnew", id="6001"))
    assert status == 200 and outcomes(answer) == ["purged"]
    assert near(await picture(client, "/p/100/thumbnail/entry_id/0_brandnew/width/32"), GREEN)


# ----------------------------------------------------------------------------------- refused: nothing dropped


def _tampered() -> dict[str, str]:
    fields = single(SECRET_A, "entry_update")
    fields["entry_id"] = "0_photo"  # changed after signing
    return fields


def _multi_with_one_altered() -> dict[str, str]:
    fields = multi(SECRET_A, [note("entry_update", "0_photo", "7001"), note("entry_delete", "0_swap", "7002")])
    fields["not2_notification_type"] = "entry_update"  # one notification changed after signing
    return fields


def _header(body: bytes, signature: str, algorithm: str | None = None) -> tuple[bytes, dict[str, str]]:
    headers = {**FORM, "X-KALTURA-SIGNATURE": signature}
    if algorithm:
        headers["X-KALTURA-HASH-ALGO"] = algorithm
    return body, headers


_FORM_BODY = urlencode({"notification_type": "entry_update", "partner_id": "100", "entry_id": "0_swap"}).encode()

REFUSED = {
    "wrong secret": lambda: (urlencode(single("not-the-secret", "entry_update")).encode(), FORM),
    "another partner's secret": lambda: (urlencode(single(SECRET_200, "entry_update")).encode(), FORM),
    "a partner without secrets": lambda: (urlencode(single(SECRET_A, "entry_update", partner=300)).encode(), FORM),
    "no signature": lambda: (urlencode({k: v for k, v in single(SECRET_A, "entry_update").items()
                                        if k != "sig"}).encode(), FORM),
    "a field changed after signing": lambda: (urlencode(_tampered()).encode(), FORM),
    "entry_id not among signed_fields": lambda: (urlencode(single(
        SECRET_A, "entry_update", signed=["notification_id", "notification_type", "partner_id", "signed_fields"]
    )).encode(), FORM),
    "multi with one notification altered": lambda: (urlencode(_multi_with_one_altered()).encode(), FORM),
    "multi signed by another partner": lambda: (urlencode(multi(SECRET_200, [note("entry_update")])).encode(), FORM),
    "header, wrong signature": lambda: _header(_FORM_BODY, hashlib.sha1(b"x" + _FORM_BODY).hexdigest()),
    "header, another partner's secret": lambda: _header(_FORM_BODY,
                                                        hashlib.sha1(SECRET_200.encode() + _FORM_BODY).hexdigest()),
    "header, sha256 signature named sha512": lambda: _header(
        _FORM_BODY, hashlib.sha256(SECRET_A.encode() + _FORM_BODY).hexdigest(), "sha512"),
    "header, an algorithm not accepted": lambda: _header(
        _FORM_BODY, hashlib.md5(SECRET_A.encode() + _FORM_BODY).hexdigest(), "md5"),
    "JSON without a signature": lambda: (event_json(2), {"Content-Type": "application/json"}),
}


@pytest.mark.parametrize("case", REFUSED)
async def test_an_unverified_notification_is_403_and_drops_nothing(start, origin, tmp_path, case):
    client = await start()
    await cached_then_changed(client, origin)
    await until(lambda: cache_entries(tmp_path / "cache"))  # the result is written behind its response
    before = sorted(entry["key"] for entry in cache_entries(tmp_path / "cache"))
    body, headers = REFUSED[case]()
    status, answer, response_headers = await post(client, body=body, headers=headers)
    assert status == 403, answer
    assert response_headers["X-Kaltura"].startswith("error-") and response_headers["Cache-Control"] == "no-store"
    assert isinstance(answer, str) and answer.endswith("\n") and "\n" not in answer[:-1]
    assert not any(secret in answer for secret in ALL_SECRETS)
    assert near(await picture(client), RED)
    assert sorted(entry["key"] for entry in cache_entries(tmp_path / "cache")) == before


MALFORMED = {
    "empty": (b"", FORM),
    "binary": (bytes(range(256)), FORM),
    "not key=value": (b"notification_type&partner_id=100", FORM),
    "a malformed %-escape": (b"partner_id=100&notification_type=entry_update&entry_id=0_sw%zzap", FORM),
    "not UTF-8": (b"partner_id=100&notification_type=entry_update&entry_id=0_swap&x=%ff", FORM),
    "a key given twice": (b"partner_id=100&notification_type=entry_update&entry_id=0_swap&entry_id=0_photo", FORM),
    "a NUL in a value (length extension)": (
        b"partner_id=100&notification_type=entry_update&entry_id=0_swap&puser_id=a%80%00%00%00%01%b8", FORM),
    "no partner": (b"notification_type=entry_update&entry_id=0_swap&sig=00", FORM),
    "no type": (b"partner_id=100&entry_id=0_swap&sig=00", FORM),
    "an entry id that is not one": (b"partner_id=100&notification_type=entry_update&entry_id=..%2Fx&sig=00", FORM),
    "an entry type without entry": (b"partner_id=100&notification_type=entry_delete&sig=00", FORM),
    "multi: a count that does not match": (
        b"multi_notification=true&number_of_notifications=3&not1_partner_id=100&not1_notification_type=test"
        b"&not1_entry_id=0_swap&not2_partner_id=100&not2_notification_type=test&sig=00", FORM),
    "multi: a notification beyond the count": (
        b"multi_notification=true&number_of_notifications=1&not1_partner_id=100&not1_notification_type=test"
        b"&not2_partner_id=100&not2_notification_type=test&sig=00", FORM),
    "multi: too many": (b"multi_notification=true&number_of_notifications=100000&sig=00", FORM),
    "multi: several partners": (
        b"multi_notification=true&number_of_notifications=2&not1_partner_id=100&not1_notification_type=test"
        b"&not2_partner_id=200&not2_notification_type=test&sig=00", FORM),
    "JSON that is not": (b"{\"object\": ", {"Content-Type": "application/json", "X-KALTURA-SIGNATURE": "00"}),
    "JSON without object": (b"{\"eventType\": 2}", {"Content-Type": "application/json", "X-KALTURA-SIGNATURE": "0"}),
    "XML": (b"<xml/>", {"Content-Type": "application/xml"}),
}


@pytest.mark.parametrize("case", MALFORMED)
async def test_a_malformed_body_is_400_and_drops_nothing(start, origin, case):
    client = await start()
    await cached_then_changed(client, origin)
    body, headers = MALFORMED[case]
    status, answer, response_headers = await post(client, body=body, headers=headers)
    assert status == 400, answer
    assert response_headers["X-Kaltura"] == "error-25"
    assert near(await picture(client), RED)


async def test_an_oversized_body_is_413_whether_announced_or_streamed(start, origin):
    client = await start("[notifications]\nmax_body_bytes = 2048\n")
    await cached_then_changed(client, origin)
    fields = single(SECRET_A, "entry_update", extra={"padding": "x" * 3000})
    body = urlencode(fields).encode()
    status, _, _ = await post(client, body=body)
    assert status == 413

    async def chunks():  # no Content-Length: refused once 2048 bytes have come
        for start_at in range(0, len(body), 500):
            yield body[start_at:start_at + 500]

    response = await client.post("/notifications", data=chunks(), headers=FORM)
    assert response.status == 413
    assert near(await picture(client), RED)
    small = urlencode(single(SECRET_A, "entry_update", id="8001")).encode()
    assert len(small) < 2048 and (await post(client, body=small))[0] == 200
    assert near(await picture(client), BLUE)


async def test_a_replayed_notification_id_does_nothing_more(start, origin):
    client = await start()
    await cached_then_changed(client, origin)
    fields = single(SECRET_A, "entry_update", id="9001")
    status, answer, _ = await post(client, fields)
    assert status == 200 and outcomes(answer) == ["purged"]
    assert near(await picture(client), BLUE)
    replace_original(origin, GREEN)
    status, answer, _ = await post(client, fields)  # Kaltura retrying: 200, nothing dropped
    assert status == 200 and outcomes(answer) == ["duplicate"]
    assert near(await picture(client), BLUE)
    # the same id from another partner is another notification
    other = single(SECRET_200, "entry_update", "0_private", id="9001", partner=200)
    assert outcomes((await post(client, other))[1]) == ["purged"]
    # and in a multi, only the new ones are applied
    both = multi(SECRET_A, [note("entry_update", id="9001"), note("entry_update_thumbnail", id="9002")])
    assert outcomes((await post(client, both))[1]) == ["duplicate", "purged"]
    assert near(await picture(client), GREEN)


@pytest.mark.parametrize("kind", ["test", "kshow_add", "user_add", "user_banned", "job_started", "no_such_type"])
async def test_types_that_do_not_concern_entries_are_200_and_ignored(start, origin, kind):
    client = await start()
    await cached_then_changed(client, origin)
    status, answer, _ = await post(client, single(SECRET_A, kind, entry=None, extra={"kshow_id": "1"}))
    assert status == 200 and outcomes(answer) == ["ignored"]
    assert near(await picture(client), RED)


async def test_an_unknown_entry_type_with_an_entry_still_drops_it(start, origin):
    """Dropping caches is always safe: an entry_* type this version does not know purges its entry."""
    client = await start()
    await cached_then_changed(client, origin)
    status, answer, _ = await post(client, single(SECRET_A, "entry_update_captions"))
    assert status == 200 and outcomes(answer) == ["purged"]
    assert near(await picture(client), BLUE)


async def test_notifications_are_off_without_admin_secrets_or_when_disabled(start, serve, tmp_path, origin):
    client = await start(partners="")
    status, _, _ = await post(client, single(SECRET_A, "entry_update"))
    assert status == 405  # no such route: POST is not a media request
    client = await start("[notifications]\nenabled = false\n")
    assert (await post(client, single(SECRET_A, "entry_update")))[0] == 405
    client = await start("[notifications]\npath = \"/hooks/kaltura\"\n")
    assert (await post(client, single(SECRET_A, "entry_update"), path="/hooks/kaltura"))[0] == 200


# ---------------------------------------------------------------------------------------- deleted and blocked


SERVICES = [THUMB, RAW, "/p/100/sp/10000/flvclipper/entry_id/0_video", "/p/100/thumbnail/entry_id/0_video/width/20"]


async def assert_withheld(client, target: str, why: str) -> None:
    status, headers, body = await send_raw(client, target)
    assert status == 404, body
    assert headers["x-kaltura"] == "error-1" and headers["cache-control"] == "no-store"
    assert body.decode().endswith(f"({why})\n")


@pytest.mark.parametrize("kind, why", [("entry_delete", "deleted"), ("entry_block", "blocked")])
async def test_a_deleted_or_blocked_entry_is_404_whatever_the_origin_holds_across_restarts(
        start, origin, kind, why):
    client = await start()
    for target in SERVICES:
        assert (await client.get(target)).status == 200
    notified = multi(SECRET_A, [note(kind, "0_swap", "10001"), note(kind, "0_video", "10002")])
    status, answer, _ = await post(client, notified)
    assert status == 200 and outcomes(answer) == ["withheld", "withheld"]
    for target in SERVICES:
        await assert_withheld(client, target, why)
    restarted = await start()  # a new process on the same cache dir: remembered in the node's index
    for target in SERVICES:
        await assert_withheld(restarted, target, why)
    # a thumbnail update does not bring it back; an update does
    assert outcomes((await post(restarted, single(SECRET_A, "entry_update_thumbnail", id="10003")))[1]) == ["purged"]
    await assert_withheld(restarted, THUMB, why)
    replace_original(origin, BLUE)
    assert outcomes((await post(restarted, single(SECRET_A, "entry_update", id="10004")))[1]) == ["released"]
    assert near(await picture(restarted), BLUE)
    await assert_withheld(restarted, SERVICES[2], why)  # the other entry is still withheld


@pytest.mark.parametrize("event, status_code, why", [(7, 2, "deleted"), (2, 6, "blocked"), (2, 3, "deleted")])
async def test_http_event_notifications_delete_and_block_too(start, event, status_code, why):
    client = await start()
    body = event_json(event, status=status_code)
    status, answer, _ = await post(client, body=body, headers=header_signed(SECRET_A, body, "sha256",
                                                                            "application/json"))
    assert status == 200 and outcomes(answer) == ["withheld"]
    await assert_withheld(client, THUMB, why)
    added = event_json(1, job=1)
    assert outcomes((await post(client, body=added, headers=header_signed(
        SECRET_A, added, "sha256", "application/json")))[1]) == ["released"]
    assert (await client.get(THUMB)).status == 200


# --------------------------------------------------------------------------------------- the operators' purge


def admin_ks(partner: int, secret: str, *, type: int = 2, privileges: str = "") -> str:
    """A v1 KS from SPEC §5 (the access tests hold the full independent implementation)."""
    import base64
    import time

    info = f"{partner};{partner};{int(time.time()) + 600};{type};12345;;{privileges};"
    raw = (hashlib.sha1((secret + info).encode()).hexdigest() + "|" + info).encode()
    return base64.b64encode(raw).decode().replace("+", "-").replace("/", "_")


async def test_admin_purge_needs_an_admin_ks_of_the_partner_and_says_what_it_dropped(start, origin, tmp_path):
    client = await start()
    await cached_then_changed(client, origin)
    # the result on disk (written behind the answers, in batches): what the purge below says it dropped
    await until(lambda: any(entry["ns"] == "results" for entry in cache_entries(tmp_path / "cache")))
    target = "/admin/purge?partner_id=100&entry_id=0_swap"
    for ks, code in ((None, "error-3"), (admin_ks(100, SECRET_A, type=0, privileges="sview:*"), "error-3"),
                     (admin_ks(200, SECRET_200), "error-32"), (admin_ks(100, "forged"), "error-7"),
                     (admin_ks(100, SECRET_A, privileges="limitentry:0_photo"), "error-3")):
        response = await client.post(target, headers={"X-Kaltura-Ks": ks} if ks else {})
        assert response.status == 403 and response.headers["X-Kaltura"] == code, await response.text()
    assert near(await picture(client), RED)
    assert (await client.post("/admin/purge?partner_id=100&entry_id=../x")).status == 400
    response = await client.post("/admin/purge", data=urlencode({"partner_id": "100", "entry_id": "0_swap",
                                                                 "ks": admin_ks(100, SECRET_B)}), headers=FORM)
    assert response.status == 200
    answer = await response.json()
    assert answer["partner_id"] == 100 and answer["entry_id"] == "0_swap"
    assert answer["dropped"]["results"] >= 1 and answer["withheld"] is None
    assert near(await picture(client), BLUE)


async def test_an_operators_purge_serves_a_deleted_entry_again(start):
    client = await start()
    await post(client, single(SECRET_A, "entry_delete", id="11001"))
    await assert_withheld(client, THUMB, "deleted")
    response = await client.post("/admin/purge?partner_id=100&entry_id=0_swap",
                                 headers={"X-Kaltura-Ks": admin_ks(100, SECRET_A)})
    answer = await response.json()
    assert answer["withheld_before"] == "deleted" and answer["withheld"] is None
    assert (await client.get(THUMB)).status == 200


# ---------------------------------------------------------------------------------------- the log and metrics


async def test_one_log_line_per_notification_without_signature_or_secret(start, caplog):
    caplog.set_level(logging.INFO)
    client = await start()
    fields = multi(SECRET_A, [note("entry_update", "0_swap", "12001"), note("user_add", "", "12002")])
    await post(client, fields)
    await post(client, single("wrong", "entry_update"))
    lines = [record.getMessage() for record in caplog.records if record.name == "mediaproxy.notifications"]
    assert "notification 12001 entry_update partner 100 entry 0_swap: purged" in lines[0]
    assert lines[1] == "notification 12002 user_add partner 100 entry -: ignored"
    assert lines[2] == "notification refused: 403 notification: bad signature"
    everything = "\n".join(record.getMessage() for record in caplog.records)
    assert fields["sig"] not in everything and "sig=" not in everything
    assert not any(secret in everything for secret in ALL_SECRETS)


async def test_metrics_count_notifications_by_type_and_outcome_and_purges(start):
    client = await start()
    await post(client, single(SECRET_A, "entry_delete", id="13001"))
    await post(client, single(SECRET_A, "entry_delete", id="13001"))
    await post(client, single(SECRET_A, "test", entry=None, id="13002"))
    await post(client, single("wrong", "entry_update"))
    await client.post("/admin/purge?partner_id=100&entry_id=0_swap", headers={"X-Kaltura-Ks": admin_ks(100,
                                                                                                        SECRET_A)})
    text = await (await client.get("/metrics")).text()

    def sample(labels: str) -> float:
        line = next(line for line in text.splitlines() if line.startswith(labels))
        return float(line.rsplit(" ", 1)[1])

    assert sample('mediaproxy_notifications_total{outcome="withheld",type="entry_delete"}') >= 1
    assert sample('mediaproxy_notifications_total{outcome="duplicate",type="entry_delete"}') >= 1
    assert sample('mediaproxy_notifications_total{outcome="ignored",type="other"}') >= 1
    assert sample('mediaproxy_notifications_total{outcome="refused",type="unknown"}') >= 1
    assert sample('mediaproxy_purges_total{source="notification"}') >= 1
    assert sample('mediaproxy_purges_total{source="operator"}') >= 1
    assert 'mediaproxy_requests_total{service="notifications",status="200"}' in text


# ------------------------------------------------------------------------------------------------- the console


async def test_the_console_shows_the_last_notification_and_purges_with_its_secret(start, origin):
    client = await start("[console]\nenabled = true\n")
    state = await (await client.get("/console/api/entry?partner_id=100&entry_id=0_swap")).json()
    assert state["last_notification"] is None and state["can_purge"] and state["withheld"] is None
    await post(client, single(SECRET_A, "entry_block", id="14001"))
    state = await (await client.get("/console/api/entry?partner_id=100&entry_id=0_swap")).json()
    assert state["last_notification"]["type"] == "entry_block" and state["withheld"] == "blocked"
    listing = await (await client.get("/console/api/entries")).json()
    partner = next(item for item in listing["partners"] if item["partner_id"] == 100)
    assert partner["can_purge"]
    # a form post (what another site's page could send) is refused; the console's JSON is not
    response = await client.post("/console/api/purge", data=urlencode({"partner_id": "100", "entry_id": "0_swap"}),
                                 headers=FORM)
    assert response.status == 403
    response = await client.post("/console/api/purge", json={"partner_id": 100, "entry_id": "0_swap"})
    assert response.status == 200
    assert (await response.json())["withheld_before"] == "blocked"
    assert (await client.get(THUMB)).status == 200
    assert (await client.post("/console/api/purge", json={"partner_id": 555, "entry_id": "0_swap"})).status == 403
    assert (await client.post("/console/api/purge", json=[1])).status == 400


@pytest.mark.parametrize("path", ["notifications", "/p/100/notify", "/admin/purge", "/with space", "/healthz"])
def test_the_notification_path_must_be_a_path_of_its_own(tmp_path, origin, path):
    from mediaproxy.config import ConfigError

    with pytest.raises(ConfigError, match=r"\[notifications\] path"):
        make_config(tmp_path, ORIGIN.format(root=origin), f'[notifications]\npath = "{path}"\n')


async def test_log_lines_are_json_objects_with_log_format_json(start, caplog):
    caplog.set_level(logging.INFO)
    client = await start('[server]\nlog_format = "json"\n')
    fields = single(SECRET_A, "entry_delete", id="15001")
    await post(client, fields)
    await post(client, body=b"partner_id=100&x", headers=FORM)
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "mediaproxy.notifications"]
    assert lines[0] == {"notification": "15001", "type": "entry_delete", "partner": 100, "entry": "0_swap",
                        "outcome": "withheld", "dropped": 0}
    assert lines[1]["status"] == 400 and lines[1]["notification"] is None
    assert fields["sig"] not in "\n".join(record.getMessage() for record in caplog.records)
