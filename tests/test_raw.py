"""raw over HTTP against the local origin: bytes, Range, conditional requests, downloads, errors (SPEC §4, §6)."""

from __future__ import annotations

import io
import os

import pytest
from PIL import Image

from fixtures.generate import alpha_png

from .conftest import FIXTURE_MEDIA, make_config, make_entry, send_raw, url_forms

PHOTO = FIXTURE_MEDIA / "100" / "0_photo" / "original.jpg"
VIDEO = FIXTURE_MEDIA / "100" / "0_video" / "original.mp4"


@pytest.mark.parametrize("path", [*url_forms("raw"), "/p/100/sp/10000/raw/entry_id/0_photo?entry_id=0_video"])
async def test_every_url_form_serves_the_original_bytes(client, path):
    status, headers, body = await send_raw(client, path)
    assert status == 200
    assert body == PHOTO.read_bytes()
    assert headers["content-type"] == "image/jpeg"
    assert headers["content-length"] == str(PHOTO.stat().st_size)
    assert headers["accept-ranges"] == "bytes"
    assert headers["cache-control"] == "public, max-age=8640000"
    assert headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("entry, content_type, disposition", [
    ("0_video", "video/mp4", 'attachment; filename="Colour seconds.mp4"'),
    ("0_flv", "video/x-flv", 'attachment; filename="0_flv.flv"'),
    ("0_audio", "audio/mp4", 'attachment; filename="0_audio.m4a"'),
    ("0_alpha", "image/png", 'attachment; filename="0_alpha.png"'),
    ("0_anim", "image/gif", 'attachment; filename="0_anim.gif"'),
    ("0_webp", "image/webp", 'attachment; filename="0_webp.webp"'),
])
async def test_content_type_and_download_name_of_each_media_kind(client, entry, content_type, disposition):
    response = await client.get(f"/p/100/sp/10000/raw/entry_id/{entry}")
    assert response.status == 200
    assert response.headers["Content-Type"] == content_type
    assert response.headers["Content-Disposition"] == disposition


async def test_content_type_comes_from_the_content_not_the_name(serve, tmp_path):
    root = tmp_path / "origin"
    make_entry(root, 100, "0_liar", {"original.jpg": alpha_png(40, 30)})
    make_entry(root, 100, "0_text", {"original.mp4": "this is not a video\n"})
    client = await serve(make_config(tmp_path, f'kind = "local"\nroot = "{root}"'))
    png = await client.get("/p/100/raw/entry_id/0_liar")
    assert png.headers["Content-Type"] == "image/png"
    assert png.headers["Content-Disposition"] == 'attachment; filename="0_liar.png"'
    assert Image.open(io.BytesIO(await png.read())).size == (40, 30)
    text = await client.get("/p/100/raw/entry_id/0_text")
    assert text.status == 200
    assert text.headers["Content-Type"] == "application/octet-stream"
    assert await text.read() == b"this is not a video\n"


async def test_range_requests(client):
    size = VIDEO.stat().st_size
    data = VIDEO.read_bytes()
    first = await client.get("/p/100/raw/entry_id/0_video", headers={"Range": "bytes=0-99"})
    assert first.status == 206
    assert first.headers["Content-Range"] == f"bytes 0-99/{size}"
    assert await first.read() == data[:100]
    middle = await client.get("/p/100/raw/entry_id/0_video", headers={"Range": "bytes=1000-"})
    assert middle.status == 206
    assert await middle.read() == data[1000:]
    suffix = await client.get("/p/100/raw/entry_id/0_video", headers={"Range": "bytes=-500"})
    assert suffix.status == 206
    assert suffix.headers["Content-Range"] == f"bytes {size - 500}-{size - 1}/{size}"
    assert await suffix.read() == data[-500:]
    past_end = await client.get("/p/100/raw/entry_id/0_video", headers={"Range": f"bytes={size}-"})
    assert past_end.status == 416
    assert past_end.headers["Content-Range"] == f"bytes */{size}"


async def test_head_has_the_headers_and_no_body(client):
    response = await client.head("/p/100/raw/entry_id/0_video")
    assert response.status == 200
    assert response.headers["Content-Length"] == str(VIDEO.stat().st_size)
    assert response.headers["Content-Type"] == "video/mp4"
    assert await response.read() == b""


async def test_conditional_requests_answer_304(client):
    first = await client.get("/p/100/raw/entry_id/0_photo")
    etag, last_modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert etag.startswith('"') and not etag.startswith("W/")  # strong
    by_etag = await client.get("/p/100/raw/entry_id/0_photo", headers={"If-None-Match": etag})
    assert by_etag.status == 304
    assert by_etag.headers["ETag"] == etag
    assert await by_etag.read() == b""
    by_date = await client.get("/p/100/raw/entry_id/0_photo", headers={"If-Modified-Since": last_modified})
    assert by_date.status == 304
    changed = await client.get("/p/100/raw/entry_id/0_photo", headers={"If-None-Match": '"something-else"'})
    assert changed.status == 200


async def test_download_names(client):
    async def disposition(query: str) -> str:
        response = await client.get(f"/p/100/raw/entry_id/0_photo{query}")
        assert response.status == 200
        return response.headers.get("Content-Disposition")

    assert await disposition("") == 'attachment; filename="Harbour photo.jpg"'
    assert await disposition("/file_name/holiday") == 'attachment; filename="holiday.jpg"'
    assert await disposition("/file_name/holiday.JPG") == 'attachment; filename="holiday.JPG"'
    assert await disposition("?file_name=a%22b%5Cc%2Fd%0D%0Ae") == 'attachment; filename="a_b_c_de.jpg"'
    assert await disposition("?file_name=..") == 'attachment; filename="Harbour photo.jpg"'
    assert await disposition("/direct_serve/1") is None
    assert await disposition("/direct_serve/0") is not None


async def test_non_ascii_download_name_uses_filename_star(client):
    response = await client.get("/p/100/raw/entry_id/0_named")
    assert response.status == 200
    assert response.headers["Content-Disposition"] == (
        'attachment; filename="Cafe deja vu _quoted_slash.jpg"; '
        "filename*=UTF-8''Caf%C3%A9%20d%C3%A9j%C3%A0%20vu%20_quoted_slash.jpg")
    assert await response.read() == (FIXTURE_MEDIA / "100" / "0_named" / "source.jpg").read_bytes()


async def test_flavors_versions_and_download_format(serve, tmp_path):
    root = tmp_path / "origin"
    manifest = '{"versions": {"2": "original_v2.png"}, "flavors": {"0_web": "web.mp4"}}'
    make_entry(root, 100, "0_e", {
        "original.png": alpha_png(10, 10), "original_v2.png": alpha_png(20, 20), "entry.json": manifest,
        "web.mp4": VIDEO.read_bytes(), "flavor_0_flv.flv": (FIXTURE_MEDIA / "100/0_flv/original.flv").read_bytes(),
    })
    client = await serve(make_config(tmp_path, f'kind = "local"\nroot = "{root}"'))

    async def body(path: str) -> bytes:
        response = await client.get(path)
        assert response.status == 200, await response.text()
        return await response.read()

    assert Image.open(io.BytesIO(await body("/p/100/raw/entry_id/0_e"))).size == (10, 10)
    assert Image.open(io.BytesIO(await body("/p/100/raw/entry_id/0_e/version/2"))).size == (20, 20)
    assert Image.open(io.BytesIO(await body("/p/100/raw/entry_id/0_e/version/7"))).size == (10, 10)
    assert await body("/p/100/raw/entry_id/0_e/flavor_id/0_web") == VIDEO.read_bytes()
    assert await body("/p/100/raw/entry_id/0_e/flavorId/0_flv") == (root / "100/0_e/flavor_0_flv.flv").read_bytes()
    assert await body("/p/100/raw/entry_id/0_e/type/download/format/mp4") == VIDEO.read_bytes()
    flv = await client.get("/p/100/raw/entry_id/0_e/type/download/format/flv")
    assert flv.headers["Content-Type"] == "video/x-flv"
    missing = await client.get("/p/100/raw/entry_id/0_e/flavor_id/0_nope")
    assert missing.status == 404
    assert missing.headers["X-Kaltura"] == "error-6"
    no_format = await client.get("/p/100/raw/entry_id/0_e/type/download/format/avi")
    assert no_format.status == 404


@pytest.mark.parametrize("path, status, code", [
    ("/p/100/raw/entry_id/0_nothing", 404, 1),
    ("/p/200/raw/entry_id/0_photo", 404, 1),  # entries are scoped to their partner
    ("/p/100/raw/entry_id/0_photo/flavor_id/0_none", 404, 6),
    ("/p/100/raw/entry_id/..", 400, 25),
    ("/p/100/raw/entry_id/../../../etc/passwd", 400, 25),
    ("/p/100/raw/entry_id/%2E%2E%2F%2E%2E%2Fetc", 400, 25),
    ("/p/100/raw/entry_id/a%00b", 400, 25),
    ("/p/100/raw/entry_id/" + "a" * 65, 400, 25),
    ("/p/100/raw/flavor_id/0_x", 400, 25),
    ("/p/abc/raw/entry_id/0_photo", 400, 25),
    ("/p/100/nosuch/entry_id/0_photo", 404, 1),
    ("/", 404, 1),
])
async def test_errors_are_one_line_with_kaltura_headers(client, path, status, code):
    got_status, headers, body = await send_raw(client, path)
    assert got_status == status
    text = body.decode()
    assert text.endswith("\n") and text.count("\n") == 1 and "Traceback" not in text
    assert headers["x-kaltura"] == f"error-{code}"
    assert headers["x-kaltura-app"].startswith(f"exiting on error {code} - ")
    assert headers["cache-control"] == "no-store"
    assert headers["content-type"].startswith("text/plain")


async def test_bad_request_names_the_parameter(client):
    response = await client.get("/p/100/raw/entry_id/0_photo/flavor_id/a.b")
    assert response.status == 400
    assert "flavor_id" in await response.text()


async def test_a_link_out_of_the_origin_root_is_never_followed(serve, tmp_path):
    root = tmp_path / "origin"
    folder = make_entry(root, 100, "0_link", {})
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(PHOTO.read_bytes())
    os.symlink(secret, folder / "original.jpg")
    client = await serve(make_config(tmp_path, f'kind = "local"\nroot = "{root}"'))
    response = await client.get("/p/100/raw/entry_id/0_link")
    assert response.status == 404


async def test_cors_preflight_and_methods(client):
    preflight = await client.options("/p/100/raw/entry_id/0_video", headers={
        "Origin": "http://example.test", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "range"})
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert set(preflight.headers["Access-Control-Allow-Methods"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    allowed = preflight.headers["Access-Control-Allow-Headers"]
    assert {"Range", "X-Kaltura-Ks", "Cache-Control"} <= set(allowed.split(", "))
    exposed = (await client.get("/p/100/raw/entry_id/0_photo")).headers["Access-Control-Expose-Headers"]
    assert {"Content-Length", "Content-Range"} <= set(exposed.split(", "))
    post = await client.post("/p/100/raw/entry_id/0_photo", data=b"x")
    assert post.status == 405
    assert post.headers["Allow"] == "GET, HEAD, OPTIONS"


async def test_partner_max_age_overrides_the_default(serve, tmp_path):
    client = await serve(make_config(tmp_path, extra="[http]\nraw_max_age = 60\n\n[partners.100]\nraw_max_age = 5"))
    response = await client.get("/p/100/raw/entry_id/0_photo")
    assert response.headers["Cache-Control"] == "public, max-age=5"


async def test_a_replaced_local_original_is_noticed_after_revalidation(serve, tmp_path):
    root = tmp_path / "origin"
    folder = make_entry(root, 100, "0_e", {"original.png": alpha_png(10, 10)})
    client = await serve(make_config(tmp_path, f'kind = "local"\nroot = "{root}"\nrevalidate_seconds = 0'))
    first = await client.get("/p/100/raw/entry_id/0_e")
    assert Image.open(io.BytesIO(await first.read())).size == (10, 10)
    (folder / "original.png").write_bytes(alpha_png(30, 30))
    second = await client.get("/p/100/raw/entry_id/0_e")
    assert Image.open(io.BytesIO(await second.read())).size == (30, 30)
    assert second.headers["ETag"] != first.headers["ETag"]
