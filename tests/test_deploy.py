"""deploy/nginx.conf as shipped: nginx caching in front of two mediaproxy nodes, on loopback; a notification sent
to nginx reaches both nodes."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import pytest
from PIL import Image

from fixtures.servers import DeployedNginx, Mediaproxy, wait_for

from .conftest import FIXTURE_MEDIA, require_tool, wait_until


def _start_node(tmp_path: Path, name: str, root: Path = FIXTURE_MEDIA, extra: str = "") -> Mediaproxy:
    config = tmp_path / f"{name}.toml"
    config.write_text(f'[origin]\nroot = "{root}"\n{extra}\n[cache]\ndir = "{tmp_path / name}"\n'
                      '[partners.200]\nadmin_secrets = ["mediaproxy-fixture-secret-200"]\nks_required_for = ["raw"]\n')
    return Mediaproxy(config, tmp_path / f"{name}.log", workers=1)


def _get(url: str, headers: dict[str, str] | None = None):
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, dict(response.headers), response.read()


def _settled_counts(nodes: list[Mediaproxy], expected: int, timeout: float = 5) -> list[int]:
    """Requests each node logged, once they add up (a node logs a request just after answering it)."""
    try:
        wait_until(lambda: sum(len(_served(node.log)) for node in nodes) >= expected, timeout)
    except TimeoutError:
        pass  # the caller's assertion shows what was logged
    return [len(_served(node.log)) for node in nodes]


def _logs_caught_up(nodes: list[Mediaproxy], marker: str) -> None:
    """A request sent to each node now (/healthz?`marker`, a name=value no other request has), until each has logged
    it: what a node answered before (and logs just after answering it) is in its log by then. The connection stays
    open until then (a client that goes at once could cancel the node's handler before its log line)."""
    connections = []
    for node in nodes:
        connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=30)
        connection.request("GET", f"/healthz?{marker}")
        assert connection.getresponse().read()
        connections.append(connection)
    try:
        wait_until(lambda: all(f" GET /healthz?{marker} " in node.output() for node in nodes), 10)
    finally:
        for connection in connections:
            connection.close()


def _served(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "mediaproxy.access" in line and " GET /p/" in line]


@pytest.fixture
def cluster(tmp_path):
    with _cluster(tmp_path) as running:
        yield running


@contextlib.contextmanager
def _cluster(tmp_path: Path, root: Path = FIXTURE_MEDIA, extra: str = ""):
    nodes = [_start_node(tmp_path, "node1", root, extra), _start_node(tmp_path, "node2", root, extra)]
    try:
        with DeployedNginx(tmp_path / "nginx", [node.port for node in nodes],
                           executable=require_tool("nginx")) as nginx:
            for node in nodes:
                wait_for(f"{node.url}/healthz", process=node.process, output=node.output)
            wait_for(f"{nginx.url}/healthz", process=nginx.process)
            yield nginx.url, nodes
    finally:
        for node in nodes:
            node.stop(20)


def test_requests_are_spread_cached_and_survive_a_node(cluster):
    url, nodes = cluster
    for width in range(100, 130):
        status, headers, body = _get(f"{url}/p/100/sp/10000/thumbnail/entry_id/0_photo/width/{width}")
        assert status == 200 and body[:2] == b"\xff\xd8"
    spread = _settled_counts(nodes, 30)
    assert sum(spread) == 30 and all(count > 0 for count in spread), spread

    # a repeated URL comes from nginx's cache: the nodes do not see it again
    _, first, _ = _get(f"{url}/p/100/sp/10000/thumbnail/entry_id/0_photo/width/100")
    assert first["X-Cache-Status"] == "HIT"
    _logs_caught_up(nodes, "marker=after-the-hit")
    assert sum(len(_served(node.log)) for node in nodes) == 30

    # ranges of raw originals are cut from cached slices
    photo = (FIXTURE_MEDIA / "100/0_photo/original.jpg").read_bytes()
    for _ in range(2):
        status, headers, body = _get(f"{url}/p/100/sp/10000/raw/entry_id/0_photo", {"Range": "bytes=1000-1999"})
        assert status == 206 and body == photo[1000:2000]
        assert headers["Content-Range"] == f"bytes 1000-1999/{len(photo)}"
    assert headers["X-Cache-Status"] == "HIT"

    # one node dies: traffic keeps flowing through the other
    nodes[0].kill()
    for width in range(200, 220):
        status, _, body = _get(f"{url}/p/100/sp/10000/thumbnail/entry_id/0_photo/width/{width}")
        assert status == 200 and body[:2] == b"\xff\xd8"


def test_answers_that_needed_a_ks_are_not_cached(cluster):
    url, nodes = cluster
    from mediaproxy.access import make_ks

    ks = make_ks(200, "mediaproxy-fixture-secret-200", privileges="download:*")
    for _ in range(2):
        status, headers, _ = _get(f"{url}/p/200/sp/20000/raw/entry_id/0_private", {"X-Kaltura-Ks": ks})
        assert status == 200
        assert headers["Cache-Control"].startswith("private")
        assert headers["X-Cache-Status"] in ("BYPASS", "MISS")
    with pytest.raises(urllib.error.HTTPError) as denied:  # and without the KS nothing leaks from a cache
        _get(f"{url}/p/200/sp/20000/raw/entry_id/0_private")
    assert denied.value.code == 403


def test_negotiated_thumbnails_are_cached_once_per_format_not_per_accept_string(cluster):
    url, nodes = cluster
    path = f"{url}/p/100/sp/10000/thumbnail/entry_id/0_photo/width/64/format/auto"
    asked = [
        ("image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8", "image/avif", "MISS"),
        ("image/avif,*/*", "image/avif", "HIT"),  # another browser's string, the same answer
        ("image/webp,*/*", "image/webp", "MISS"),
        ("image/avif;q=0, image/webp", "image/webp", "HIT"),  # avif refused: the webp copy
        ("*/*", "image/jpeg", "MISS"),
        ("image/png,image/*;q=0.8", "image/jpeg", "HIT"),
    ]
    for accept, content_type, cache in asked:
        status, headers, body = _get(path, {"Accept": accept})
        assert status == 200
        assert (headers["Content-Type"], headers["X-Cache-Status"]) == (content_type, cache), accept
        assert headers["Vary"] == "Accept"  # passed on to the clients and caches further down
        assert Image.open(io.BytesIO(body)).format == content_type.partition("/")[2].upper()
    assert sum(_settled_counts(nodes, 3)) == 3
SECRET_200 = "mediaproxy-fixture-secret-200"
THUMB = "/p/200/sp/20000/thumbnail/entry_id/0_swap/width/40"


def _solid_jpeg(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (80, 60), color).save(out, "JPEG", quality=90)
    return out.getvalue()


def _colour(body: bytes) -> tuple[int, int, int]:
    image = Image.open(io.BytesIO(body)).convert("RGB")
    return image.getpixel((image.width // 2, image.height // 2))


def _is(color: tuple[int, int, int], body: bytes) -> bool:
    return all(abs(a - b) <= 12 for a, b in zip(_colour(body), color))


def _notification(kind: str, notification_id: str) -> bytes:
    """Kaltura's single notification, signed as SPEC §8 says (written here, not with mediaproxy's code)."""
    fields = {"notification_id": notification_id, "notification_type": kind, "puser_id": "", "partner_id": "200",
              "entry_id": "0_swap"}
    fields["signed_fields"] = ",".join([*fields, "signed_fields"]) + ","
    fields["sig"] = hashlib.md5((SECRET_200 + "".join(key + fields[key] for key in sorted(fields))).encode()).hexdigest()
    return urlencode(fields).encode()


def _purged_on(port: int) -> dict[str, float]:
    """Notification outcomes a node counted (its /metrics)."""
    _, _, body = _get(f"http://127.0.0.1:{port}/metrics")
    counted: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith("mediaproxy_notifications_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            counted[outcome] = counted.get(outcome, 0) + float(line.rsplit(" ", 1)[1])
    return counted


def test_one_notification_to_nginx_reaches_both_nodes(tmp_path):
    root = tmp_path / "media"
    shutil.copytree(FIXTURE_MEDIA, root)
    entry = root / "200" / "0_swap"
    entry.mkdir()
    (entry / "original.jpg").write_bytes(_solid_jpeg((220, 30, 30)))
    with _cluster(tmp_path, root, "revalidate_seconds = 3600") as (url, nodes):
        direct = [node.url for node in nodes]
        through_nginx = _get(f"{url}{THUMB}")
        assert _is((220, 30, 30), through_nginx[2])
        for node in direct:
            assert _is((220, 30, 30), _get(f"{node}{THUMB}")[2])
        (entry / "new.tmp").write_bytes(_solid_jpeg((30, 30, 220)))
        os.replace(entry / "new.tmp", entry / "original.jpg")
        for node in direct:  # an hour of trust: both still show what they cached
            assert _is((220, 30, 30), _get(f"{node}{THUMB}")[2])

        request = urllib.request.Request(f"{url}/notifications", data=_notification("entry_update", "77"),
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
            assert json.loads(response.read())["notifications"][0]["outcome"] in ("purged", "duplicate")

        # each node got its copy (the copies are not waited for: polled); the answering one got two
        wait_until(lambda: [_purged_on(node.port).get("purged", 0) for node in nodes] == [1, 1], 10,
                   failure="a node did not purge once")
        assert sum(_purged_on(node.port).get("duplicate", 0) for node in nodes) == 1
        for node in direct:
            assert _is((30, 30, 220), _get(f"{node}{THUMB}")[2])

        # nginx (a CDN) keeps its copy until max-age; a new URL (Kaltura changes `version`) shows the change
        status, headers, body = _get(f"{url}{THUMB}")
        assert headers["X-Cache-Status"] == "HIT" and _is((220, 30, 30), body)
        assert _is((30, 30, 220), _get(f"{url}{THUMB}/version/2")[2])
