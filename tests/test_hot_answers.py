"""Hot answers (mediaproxy/answers.py): the last public thumbnail answer of an exact URL, kept a moment and served
before routing. What must hold: the same bytes and headers as the full path, never for a request the full path
would refuse (a KS partner), per Accept where the answer varies, 304 for a current ETag, and nothing kept past a
change of the original or a purge."""

from __future__ import annotations

import os
import shutil
import time

from prometheus_client import CollectorRegistry, Histogram

from mediaproxy.access import make_ks
from mediaproxy.metrics import Tally

from .conftest import FIXTURE_MEDIA, make_config, make_entry, metric

PHOTO = FIXTURE_MEDIA / "100" / "0_photo" / "original.jpg"
SECRET = "hot-answers-secret-200"
THUMB = "/p/100/sp/10000/thumbnail/entry_id/0_photo/width/130"


async def test_a_hot_url_is_answered_from_memory_with_the_same_bytes_and_headers(client):
    first = await client.get(THUMB)
    second = await client.get(THUMB)  # asked again: its answer is kept from now on (a URL asked once never is)
    assert second.headers["Server-Timing"] != "cache;desc=memory"  # the result cache's, through the full path
    again = await client.get(THUMB)
    assert first.status == second.status == again.status == 200
    assert await first.read() == await second.read() == await again.read()
    assert again.headers["Server-Timing"] == "cache;desc=memory"
    for name in ("Content-Type", "Cache-Control", "ETag", "Last-Modified", "Access-Control-Allow-Origin", "Server"):
        assert again.headers[name] == first.headers[name], name
    head = await client.head(THUMB)
    assert head.status == 200 and head.headers["ETag"] == first.headers["ETag"] and await head.read() == b""
    current = await client.get(THUMB, headers={"If-None-Match": first.headers["ETag"]})
    assert current.status == 304 and current.headers["ETag"] == first.headers["ETag"]
    stale = await client.get(THUMB, headers={"If-None-Match": '"another"'})
    assert stale.status == 200 and await stale.read() == await first.read()


async def test_an_answer_that_needed_a_ks_is_never_kept_for_a_request_without_one(serve, tmp_path):
    config = make_config(tmp_path, extra=f'[partners.200]\nadmin_secrets = ["{SECRET}"]\n'
                                         'ks_required_for = ["thumbnail"]\n')
    client = await serve(config)
    ks = make_ks(200, SECRET, privileges="sview:*")
    path = f"/p/200/sp/20000/thumbnail/entry_id/0_private/width/90/ks/{ks}"
    for _ in range(2):
        allowed = await client.get(path)
        assert allowed.status == 200 and allowed.headers["Cache-Control"].startswith("private")
    refused = await client.get("/p/200/sp/20000/thumbnail/entry_id/0_private/width/90")
    assert refused.status == 403 and refused.headers["X-Kaltura"] == "error-3"
    by_header = await client.get("/p/200/sp/20000/thumbnail/entry_id/0_private/width/90",
                                 headers={"X-Kaltura-Ks": ks})
    assert by_header.status == 200 and by_header.headers["Cache-Control"].startswith("private")
    refused = await client.get("/p/200/sp/20000/thumbnail/entry_id/0_private/width/90")
    assert refused.status == 403


async def test_a_negotiated_answer_is_kept_per_accept(client):
    path = "/p/100/sp/10000/thumbnail/entry_id/0_photo/width/70/format/auto"
    for _ in range(3):
        webp = await client.get(path, headers={"Accept": "image/webp,*/*"})
        jpeg = await client.get(path, headers={"Accept": "*/*"})
        assert webp.headers["Content-Type"] == "image/webp" and jpeg.headers["Content-Type"] == "image/jpeg"
        assert webp.headers["Vary"] == jpeg.headers["Vary"] == "Accept"
    assert webp.headers["Server-Timing"] == jpeg.headers["Server-Timing"] == "cache;desc=memory"


async def test_a_changed_original_is_not_answered_from_memory_past_revalidation(serve, tmp_path):
    root = tmp_path / "media"
    folder = make_entry(root, 100, "0_changes", {"original.jpg": PHOTO.read_bytes()})
    client = await serve(make_config(tmp_path, f'kind = "local"\nroot = "{root}"\nrevalidate_seconds = 1'))
    path = "/p/100/thumbnail/entry_id/0_changes/width/50"
    before = await (await client.get(path)).read()
    assert await (await client.get(path)).read() == before
    replacement = FIXTURE_MEDIA / "200" / "0_private" / "original.jpg"
    shutil.copyfile(replacement, folder / "original.jpg.new")
    os.replace(folder / "original.jpg.new", folder / "original.jpg")
    changed_at = time.monotonic()

    async def shows_the_new_picture() -> bool:
        return await (await client.get(path)).read() != before

    deadline = changed_at + 5
    while not await shows_the_new_picture():
        assert time.monotonic() < deadline, "the change was never noticed"
    assert time.monotonic() - changed_at < 1 + 1 + 1  # revalidate_seconds, the hot answers' second, slack


async def test_a_purge_drops_the_hot_answers(serve, tmp_path):
    root = tmp_path / "media"
    folder = make_entry(root, 100, "0_purged", {"original.jpg": PHOTO.read_bytes()})
    client = await serve(make_config(tmp_path, f'kind = "local"\nroot = "{root}"\nrevalidate_seconds = 3600',
                                     f'[partners.100]\nadmin_secrets = ["{SECRET}"]\n'))
    path = "/p/100/thumbnail/entry_id/0_purged/width/40"
    before = await (await client.get(path)).read()
    shutil.copyfile(FIXTURE_MEDIA / "200" / "0_private" / "original.jpg", folder / "original.jpg")
    assert await (await client.get(path)).read() == before  # still the old picture: nothing said it changed
    admin = make_ks(100, SECRET, type=2)
    purged = await client.post("/admin/purge?partner_id=100&entry_id=0_purged", headers={"X-Kaltura-Ks": admin})
    assert purged.status == 200, await purged.text()
    assert await (await client.get(path)).read() != before


async def test_hot_answers_are_counted_in_the_metrics(client):
    async def scraped() -> tuple[float, float, float, float]:
        text = await (await client.get("/metrics")).text()
        return (metric(text, "mediaproxy_requests_total", service="thumbnail", status="200"),
                metric(text, "mediaproxy_requests_total", service="thumbnail", status="304"),
                metric(text, "mediaproxy_cache_lookups_total", tier="memory", outcome="hit"),
                metric(text, "mediaproxy_request_seconds_count", service="thumbnail"))

    first = await client.get(THUMB)
    await client.get(THUMB)  # asked again: kept from now on
    before = await scraped()
    for _ in range(5):
        assert (await client.get(THUMB)).headers["Server-Timing"] == "cache;desc=memory"
    current = await client.get(THUMB, headers={"If-None-Match": first.headers["ETag"]})
    assert current.status == 304
    after = await scraped()  # counted in this worker, written to the metrics before it answers /metrics
    assert [round(b - a) for a, b in zip(before, after)] == [5, 1, 6, 6]


def test_the_tally_puts_latencies_in_the_buckets_observe_would():
    registry = CollectorRegistry()
    histogram = Histogram("tallied_seconds", "", ["way"], buckets=(0.001, 0.01, 0.1), registry=registry)
    tally = Tally()
    values = [0.0, 0.0005, 0.001, 0.002, 0.01, 0.05, 0.1, 0.5, 7.0]
    for value in values:
        histogram.labels("observed").observe(value)
        tally.observe(histogram.labels("tallied"), value)
    tally.flush()
    samples = {(sample.name, sample.labels.get("le")): {} for sample in next(iter(registry.collect())).samples}
    for sample in next(iter(registry.collect())).samples:
        samples[(sample.name, sample.labels.get("le"))][sample.labels["way"]] = sample.value
    compared = {key: by_way for key, by_way in samples.items() if not key[0].endswith("_created")}
    assert all(by_way["observed"] == by_way["tallied"] for by_way in compared.values()), compared
