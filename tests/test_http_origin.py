"""The http origin against real upstreams: nginx, and small servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from .conftest import FIXTURE_MEDIA, cache_entries, make_config

PHOTO = FIXTURE_MEDIA / "100" / "0_photo" / "original.jpg"
VIDEO = FIXTURE_MEDIA / "100" / "0_video" / "original.mp4"


def http_config(tmp_path, url: str, extra_origin: str = "", extra: str = ""):
    return make_config(tmp_path, f'kind = "http"\nurl = "{url}"\ntimeout_seconds = 1\n{extra_origin}', extra)


def gets(nginx, path: str) -> list[int]:
    return [status for method, seen, status in nginx.requests() if method == "GET" and seen == path]


async def test_originals_are_fetched_once_and_served_from_the_disk_cache(serve, tmp_path, nginx):
    client = await serve(http_config(tmp_path, nginx.url))
    for _ in range(3):
        response = await client.get("/p/100/sp/10000/raw/entry_id/0_photo")
        assert response.status == 200
        assert await response.read() == PHOTO.read_bytes()
        assert response.headers["Content-Type"] == "image/jpeg"
        assert response.headers["Content-Disposition"] == 'attachment; filename="Harbour photo.jpg"'
    assert gets(nginx, "/100/0_photo/original.jpg") == [206]  # one block, read by range
    assert gets(nginx, "/100/0_photo/entry.json") == [200]


async def test_last_modified_and_range_follow_the_upstream_file(serve, tmp_path, nginx):
    client = await serve(http_config(tmp_path, nginx.url))
    response = await client.get("/p/100/raw/entry_id/0_video", headers={"Range": "bytes=10-19"})
    assert response.status == 206
    assert await response.read() == VIDEO.read_bytes()[10:20]
    upstream = [line for line in nginx.requests() if line[1] == "/100/0_video/original.mp4"]
    assert upstream[-1] == ("GET", "/100/0_video/original.mp4", 206)
    import email.utils
    stamp = email.utils.parsedate_to_datetime(response.headers["Last-Modified"]).timestamp()
    assert int(stamp) == int((nginx.root / "100/0_video/original.mp4").stat().st_mtime)


async def test_without_entry_json_the_extensions_are_probed_once_and_remembered(serve, tmp_path, nginx):
    client = await serve(http_config(tmp_path, nginx.url, "revalidate_seconds = 0"))
    first = await client.get("/p/100/raw/entry_id/0_flv")
    assert first.status == 200
    assert await first.read() == (FIXTURE_MEDIA / "100/0_flv/original.flv").read_bytes()
    heads = [path for method, path, _ in nginx.requests() if method == "HEAD"]
    assert "/100/0_flv/original.flv" in heads and "/100/0_flv/original.jpg" in heads
    before = len(nginx.requests())
    second = await client.get("/p/100/raw/entry_id/0_flv")
    assert second.status == 200
    again = nginx.requests()[before:]
    # remembered which extension it was: revalidated with one HEAD, its blocks not downloaded again
    assert [(method, path) for method, path, _ in again if path.endswith(".flv") or method == "HEAD"] == [
        ("HEAD", "/100/0_flv/original.flv")]


async def test_concurrent_requests_make_one_upstream_fetch(serve, tmp_path, nginx):
    client = await serve(http_config(tmp_path, nginx.url))
    responses = await asyncio.gather(*(client.get("/p/100/raw/entry_id/0_video") for _ in range(12)))
    assert all(response.status == 200 for response in responses)
    assert {await response.read() for response in responses} == {VIDEO.read_bytes()}
    assert gets(nginx, "/100/0_video/original.mp4") == [206]


async def test_the_cache_survives_a_restart_and_is_revalidated(serve, tmp_path, nginx):
    config = http_config(tmp_path, nginx.url)
    assert (await (await serve(config)).get("/p/100/raw/entry_id/0_photo")).status == 200
    restarted = await serve(config)
    response = await restarted.get("/p/100/raw/entry_id/0_photo")
    assert await response.read() == PHOTO.read_bytes()
    assert gets(nginx, "/100/0_photo/original.jpg") == [206]  # the block was on disk
    # what the origin said is in the node's index, trusted for revalidate_seconds across restarts and workers
    assert [path for method, path, _ in nginx.requests() if method == "HEAD"].count("/100/0_photo/original.jpg") == 1


async def test_a_corrupt_cached_original_is_detected_and_fetched_again(serve, tmp_path, nginx):
    config = http_config(tmp_path, nginx.url)
    first = await (await serve(config)).get("/p/100/raw/entry_id/0_photo")
    assert await first.read() == PHOTO.read_bytes()  # sent whole: that server reads the block no more
    cached = [entry["path"] for entry in cache_entries(tmp_path / "cache") if "0_photo/original.jpg" in entry["key"]]
    assert len(cached) == 1
    damaged = bytearray(cached[0].read_bytes())
    damaged[5000:5010] = b"XXXXXXXXXX"  # same size, different bytes
    cached[0].write_bytes(bytes(damaged))
    restarted = await serve(config)
    response = await restarted.get("/p/100/raw/entry_id/0_photo")
    assert await response.read() == PHOTO.read_bytes()
    assert gets(nginx, "/100/0_photo/original.jpg") == [206, 206]


async def test_a_changed_upstream_file_is_picked_up_after_revalidation(serve, tmp_path, nginx):
    client = await serve(http_config(tmp_path, nginx.url, "revalidate_seconds = 0"))
    assert await (await client.get("/p/100/raw/entry_id/0_video")).read() == VIDEO.read_bytes()
    flavor = FIXTURE_MEDIA / "100/0_video/flavor_0_small.mp4"
    shutil.copyfile(flavor, nginx.root / "100/0_video/original.mp4")
    assert await (await client.get("/p/100/raw/entry_id/0_video")).read() == flavor.read_bytes()


async def test_manifest_names_and_flavors(serve, tmp_path, nginx):
    client = await serve(http_config(tmp_path, nginx.url))
    named = await client.get("/p/100/raw/entry_id/0_named")
    assert await named.read() == (FIXTURE_MEDIA / "100/0_named/source.jpg").read_bytes()
    flavor = await client.get("/p/100/raw/entry_id/0_video/flavor_id/0_small")
    assert await flavor.read() == (FIXTURE_MEDIA / "100/0_video/flavor_0_small.mp4").read_bytes()
    missing_flavor = await client.get("/p/100/raw/entry_id/0_video/flavor_id/0_big")
    assert missing_flavor.status == 404 and missing_flavor.headers["X-Kaltura"] == "error-6"
    missing = await client.get("/p/100/raw/entry_id/0_none")
    assert missing.status == 404 and missing.headers["X-Kaltura"] == "error-1"


async def test_a_base_path_is_kept_and_the_host_never_changes(serve, tmp_path, nginx):
    (nginx.root / "media").mkdir()
    shutil.copytree(FIXTURE_MEDIA / "100", nginx.root / "media" / "100")
    client = await serve(http_config(tmp_path, nginx.url + "/media/"))
    assert (await client.get("/p/100/raw/entry_id/0_photo")).status == 200
    assert (await client.get("/p/100/raw/entry_id/%2F%2Fevil.test%2Fx")).status == 400
    assert all(path.startswith("/media/100/") for _, path, _ in nginx.requests())


async def test_too_large_originals_are_refused(serve, tmp_path, nginx):
    client = await serve(http_config(tmp_path, nginx.url, extra="[limits]\nmax_original_bytes = 1000"))
    response = await client.get("/p/100/raw/entry_id/0_photo")
    assert response.status == 413
    assert response.headers["X-Kaltura"] == "error-17"


async def test_a_dead_upstream_is_a_502(serve, tmp_path):
    from .conftest import free_port
    client = await serve(http_config(tmp_path, f"http://127.0.0.1:{free_port()}"))
    response = await client.get("/p/100/raw/entry_id/0_photo")
    assert response.status == 502
    assert response.headers["X-Kaltura"] == "error-5"
    assert "Traceback" not in await response.text()


class MisbehavingUpstream:
    """A TCP server answering every request with `reply` bytes (then closing), or never answering."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.requests = 0

    async def __aenter__(self) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            if self.reply is None:
                await asyncio.sleep(30)
            else:
                writer.write(self.reply)
                await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()


async def test_a_hanging_upstream_is_a_504_within_the_timeout(serve, tmp_path):
    async with MisbehavingUpstream(None) as url:
        client = await serve(http_config(tmp_path, url))
        started = asyncio.get_running_loop().time()
        response = await client.get("/p/100/raw/entry_id/0_photo")
        assert response.status == 504
        assert response.headers["X-Kaltura"] == "error-5"
        assert asyncio.get_running_loop().time() - started < 5


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100,  # truncated
    b"garbage\r\n\r\n",
])
async def test_upstream_faults_are_502_and_nothing_is_cached(serve, tmp_path, reply):
    async with MisbehavingUpstream(reply) as url:
        client = await serve(http_config(tmp_path, url, 'extensions = ["jpg"]'))
        for _ in range(2):  # not cached: the second request goes upstream again
            response = await client.get("/p/100/raw/entry_id/0_photo")
            assert response.status == 502
            assert response.headers["X-Kaltura"] == "error-5"
    data = tmp_path / "cache" / "data"
    assert not data.exists() or not [p for p in data.rglob("*") if p.is_file()]
    assert not [p for p in (tmp_path / "cache" / "tmp").glob("*")]


async def test_a_failed_revalidation_serves_the_cached_copy(serve, tmp_path, nginx):
    client = await serve(http_config(tmp_path, nginx.url, "revalidate_seconds = 0"))
    assert (await client.get("/p/100/raw/entry_id/0_photo")).status == 200
    nginx.stop()
    response = await client.get("/p/100/raw/entry_id/0_photo")
    assert response.status == 200
    assert await response.read() == PHOTO.read_bytes()
