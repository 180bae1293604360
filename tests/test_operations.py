"""Operations: /healthz, /metrics, the access log, Server-Timing, and the url / warm helpers."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from aiohttp import web

from mediaproxy.app import AccessLogger, make_app
from mediaproxy.urls import build, parse

from fixtures.servers import wait_until

from .conftest import FIXTURE_MEDIA, free_port, make_config, metric, until
from .test_cli import SERVE, on_the_bundled_config


async def test_healthz_reports_version_uptime_and_the_origin(client):
    response = await client.get("/healthz")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ok" and body["origin"] == {"kind": "local", "reachable": True}
    assert body["version"] and body["uptime_seconds"] >= 0 and body["worker"] == os.getpid()
    assert response.headers["Cache-Control"] == "no-store"


async def test_healthz_is_503_when_the_upstream_is_unreachable(serve, tmp_path):
    config = make_config(tmp_path, f'kind = "http"\nurl = "http://127.0.0.1:{free_port()}"\ntimeout_seconds = 1')
    client = await serve(config)
    response = await client.get("/healthz")
    assert response.status == 503
    assert (await response.json())["origin"]["reachable"] is False


async def test_metrics_count_requests_cache_tiers_and_latency(client):
    before = await (await client.get("/metrics")).text()
    for _ in range(3):
        assert (await client.get("/p/100/thumbnail/entry_id/0_photo/width/77")).status == 200
    assert (await client.get("/p/100/thumbnail/entry_id/0_nothing")).status == 404
    response = await client.get("/metrics")
    assert response.headers["Content-Type"].startswith("text/plain")
    after = await response.text()

    def grew(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert grew("mediaproxy_requests_total", service="thumbnail", status="200") == 3
    assert grew("mediaproxy_requests_total", service="thumbnail", status="404") == 1
    assert grew("mediaproxy_cache_lookups_total", tier="memory", outcome="hit") >= 2
    assert grew("mediaproxy_cache_lookups_total", tier="memory", outcome="miss") >= 1
    assert grew("mediaproxy_request_seconds_count", service="thumbnail") == 4
    assert "mediaproxy_work_jobs" in after and "mediaproxy_upstream_fetch_seconds" in after


async def test_media_answers_before_routing_are_finished_as_routed_ones_are(client):
    """`/p/...` GETs skip aiohttp's router and middlewares (app._hot_or_routed); `/s/p/...` (a CDN's prefix) is
    routed. The same request either way: the same status, body, SPEC §6 error form, server-wide headers, metrics."""
    from mediaproxy.app import SERVER_HEADER

    before = await (await client.get("/metrics")).text()
    for path in ("/p/100/thumbnail/entry_id/0_photo/width/61", "/p/100/thumbnail/entry_id/0_nothing",
                 "/p/100/thumbnail/entry_id/0_photo/width/abc"):
        direct, routed = await client.get(path), await client.get("/s" + path)
        assert direct.status == routed.status and await direct.read() == await routed.read()
        for answer in (direct, routed):
            assert answer.headers["Server"] == SERVER_HEADER
            assert answer.headers["Access-Control-Allow-Origin"] == "*"
            assert ("X-Kaltura" in answer.headers) == (answer.status >= 400)
    after = await (await client.get("/metrics")).text()
    for service, status in (("thumbnail", "200"), ("thumbnail", "404"), ("other", "400")):  # unparsed: no service
        assert (metric(after, "mediaproxy_requests_total", service=service, status=status)
                - metric(before, "mediaproxy_requests_total", service=service, status=status)) == 2


async def test_metrics_count_upstream_fetches(serve, tmp_path, nginx):
    client = await serve(make_config(tmp_path, f'kind = "http"\nurl = "{nginx.url}"'))
    before = await (await client.get("/metrics")).text()
    assert (await client.get("/p/100/raw/entry_id/0_photo")).status == 200
    after = await (await client.get("/metrics")).text()
    size = (FIXTURE_MEDIA / "100/0_photo/original.jpg").stat().st_size
    assert metric(after, "mediaproxy_upstream_bytes_total") - metric(before, "mediaproxy_upstream_bytes_total") == size
    assert (metric(after, "mediaproxy_cache_lookups_total", tier="origin", outcome="fetched")
            - metric(before, "mediaproxy_cache_lookups_total", tier="origin", outcome="fetched")) == 1


async def test_server_timing_says_where_the_time_went(client):
    path = "/p/100/thumbnail/entry_id/0_photo/width/91"
    first = await client.get(path)
    timing = first.headers["Server-Timing"]
    for part in ("origin;dur=", "decode;dur=", "resize;dur=", "encode;dur=", "cache;desc=render"):
        assert part in timing, timing
    second = await client.get(path)
    assert second.headers["Server-Timing"].endswith("cache;desc=memory")
    raw = await client.get("/p/100/raw/entry_id/0_video")
    assert "origin;dur=" in raw.headers["Server-Timing"]
    clip = await client.get("/p/100/flvclipper/entry_id/0_video/clip_from/1000/clip_to/3000")
    assert "index;dur=" in clip.headers["Server-Timing"] and "cache;desc=index" in clip.headers["Server-Timing"]
    again = await client.get("/p/100/flvclipper/entry_id/0_video/clip_from/1000/clip_to/3000")
    assert again.headers["Server-Timing"].endswith("cache;desc=memory")  # the built index, kept
    remux = await client.get("/p/100/flvclipper/entry_id/0_video/clip_from/1000/clip_to/3000/a.flv")
    assert "remux;dur=" in remux.headers["Server-Timing"] and "cache;desc=remux" in remux.headers["Server-Timing"]
    remuxed = await client.get("/p/100/flvclipper/entry_id/0_video/clip_from/1000/clip_to/3000/a.flv")
    assert remuxed.headers["Server-Timing"].endswith("cache;desc=disk")


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_one_access_log_line_per_request_without_the_ks(tmp_path, caplog, log_format):
    config = make_config(tmp_path, extra=f"[server]\nlog_format = \"{log_format}\"")
    app = make_app(config)
    runner = web.AppRunner(app, access_log_class=AccessLogger, access_log=logging.getLogger("mediaproxy.access"))
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        import aiohttp

        with caplog.at_level(logging.INFO, logger="mediaproxy.access"):
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{port}/p/100/sp/10000/thumbnail/entry_id/0_photo/width/50/ks/SECRETKS"
                async with session.get(url + "?ks=OTHERSECRET") as response:
                    assert response.status == 200
                    await response.read()
                await until(lambda: access_lines(caplog))  # written just after the answer went out
    finally:
        await runner.cleanup()
    lines = access_lines(caplog)
    assert len(lines) == 1
    assert "SECRETKS" not in lines[0] and "OTHERSECRET" not in lines[0] and "[redacted]" in lines[0]
    if log_format == "json":
        fields = json.loads(lines[0])
        assert fields["status"] == 200 and fields["method"] == "GET" and fields["service"] == "thumbnail"
        assert fields["partner"] == 100 and fields["entry"] == "0_photo" and fields["tier"] == "render"
        assert fields["ms"] >= 0 and fields["bytes"] > 0
    else:
        assert " 200 " in lines[0] and lines[0].endswith(" render")


def access_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "mediaproxy.access"]


def test_url_builds_what_the_grammar_parses():
    path = build("thumbnail", 100, "0_photo", {"width": "320", "height": "240", "type": "3", "bgcolor": "ff0000"})
    assert path == "/p/100/sp/10000/thumbnail/entry_id/0_photo/width/320/height/240/type/3/bgcolor/ff0000"
    request = parse(path, 100)
    assert (request.width, request.height, int(request.mode), request.bgcolor) == (320, 240, 3, 0xFF0000)
    assert build("raw", 7, "0_x", {"file_name": "a b/c"}, subpartner_id=1) == \
        "/p/7/sp/1/raw/entry_id/0_x/file_name/a%20b%2Fc"
    assert parse(build("raw", 7, "0_x", {"file_name": "a b/c"}), 100).file_name == "a b/c"


def test_the_url_command():
    run = subprocess.run([sys.executable, "-m", "mediaproxy", "url", "flvclipper", "--entry", "0_video",
                          "clip_from=1000", "--partner", "100", "clip_to=3000"], capture_output=True, text=True)
    assert run.returncode == 0
    assert run.stdout.strip() == ("http://127.0.0.1:8080/p/100/sp/10000/flvclipper/entry_id/0_video/"
                                  "clip_from/1000/clip_to/3000")
    bad = subprocess.run([sys.executable, "-m", "mediaproxy", "url", "thumbnail", "--entry", "0_x", "width=abc"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "width" in bad.stderr


def test_warm_fetches_a_list_with_progress_and_a_summary(tmp_path):
    with on_the_bundled_config(tmp_path, [*SERVE, "--workers", "1"]) as served:
        port = served.port
        listing = tmp_path / "urls.txt"
        listing.write_text("# launch list\n/p/100/thumbnail/entry_id/0_photo/width/333\n\n"
                           f"http://127.0.0.1:{port}/p/100/thumbnail/entry_id/0_video/vid_slices/3/width/60\n"
                           "/p/100/raw/entry_id/0_flv\n")
        warm = subprocess.run([sys.executable, "-m", "mediaproxy", "warm", str(listing), "--base",
                               f"http://127.0.0.1:{port}"], capture_output=True, text=True, timeout=120)
        assert warm.returncode == 0, warm.stderr
        assert "3/3" in warm.stderr  # the progress bar
        assert warm.stdout.startswith("warmed 3 URLs") and "200: 3" in warm.stdout
        # the warmed thumbnail now comes from memory
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/p/100/thumbnail/entry_id/0_photo/width/333") as hot:
            assert hot.headers["Server-Timing"].endswith("cache;desc=memory")
        failing = subprocess.run([sys.executable, "-m", "mediaproxy", "warm", "--base", f"http://127.0.0.1:{port}"],
                                 input="/p/100/thumbnail/entry_id/0_none\n/p/100/raw/entry_id/0_photo\n",
                                 capture_output=True, text=True, timeout=120)
        assert failing.returncode == 1
        assert "404: 1" in failing.stdout and "0_none" in failing.stdout and "ENTRY_NOT_FOUND" in failing.stdout


def test_metrics_add_up_across_workers(tmp_path):
    with on_the_bundled_config(tmp_path, [*SERVE, "--workers", "2"]) as served:
        port = served.port
        for _ in range(40):  # new connections: the kernel spreads them over both workers
            urllib.request.urlopen(f"http://127.0.0.1:{port}/p/100/raw/entry_id/0_photo").close()
        workers_seen = set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(workers_seen) < 2:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as health:
                workers_seen.add(json.loads(health.read())["worker"])
        assert len(workers_seen) == 2

        def counted() -> float:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
                return metric(response.read().decode(), "mediaproxy_requests_total", service="raw", status="200")

        # every worker's requests, whichever worker answered /metrics (another worker's within its half-second tally)
        wait_until(lambda: counted() >= 41, 5, failure="every worker's raw requests did not reach /metrics")


async def test_the_console_lists_a_ks_partners_entries_only_to_a_ks_that_grants_their_thumbnails(serve, tmp_path):
    from mediaproxy.access import make_ks

    secret = "console-listing-secret"
    config = make_config(tmp_path, extra=f'[console]\nenabled = true\n\n[partners.200]\nadmin_secrets = ["{secret}"]\n'
                                         'ks_required_for = ["thumbnail", "raw"]\n')
    client = await serve(config)

    async def listed(**query) -> dict[int, tuple[list[str], int]]:
        answer = await (await client.get("/console/api/entries", params=query)).json()
        return {partner["partner_id"]: ([entry["entry_id"] for entry in partner["entries"]], partner["hidden"])
                for partner in answer["partners"]}

    public = sorted(path.name for path in (FIXTURE_MEDIA / "100").iterdir() if path.is_dir())
    private = sorted(path.name for path in (FIXTURE_MEDIA / "200").iterdir() if path.is_dir())
    anonymous = await listed()
    assert sorted(anonymous[100][0]) == public and anonymous[100][1] == 0
    assert anonymous[200] == ([], len(private))  # that they exist is said, not what they are
    granted = await listed(ks=make_ks(200, secret, privileges="sview:*"))
    assert sorted(granted[200][0]) == private and granted[200][1] == 0
    forged = await listed(ks=make_ks(200, "not-the-secret", privileges="sview:*"))
    assert forged[200] == ([], len(private))
