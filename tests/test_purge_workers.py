"""A notification reaches every worker of a node (SPEC §8): real `mediaproxy serve --workers 2` processes, a long
`revalidate_seconds`, an original changed on a local origin and on an nginx upstream. Before the notification
every worker keeps serving the old picture; after it, every request on every worker shows the new one. Which worker
answered each request is read from the server's log (the access log line carries the worker's pid and the
request's own `n` parameter, which the URL grammar ignores).

The notification is built here from SPEC §8 (Kaltura's `sig`), not with mediaproxy's code.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import time
from itertools import count
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
from PIL import Image

from .conftest import FIXTURE_MEDIA, REPO, Server, make_config, until

SECRET = "workers-admin-secret-6d1e"
PARTNERS = f'[partners.100]\nadmin_secrets = ["{SECRET}"]\n'
THUMB = "/p/100/sp/10000/thumbnail/entry_id/0_swap/width/40"
RAW = "/p/100/sp/10000/raw/entry_id/0_swap"
RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)
REQUESTS = 24  # new connections each: the kernel spreads them over the workers (all on one: 2**-23)
_ids = count()


def solid_jpeg(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (80, 60), color).save(out, "JPEG", quality=90)
    return out.getvalue()


def put_original(folder: Path, color: tuple[int, int, int], *, later: float = 0.0) -> bytes:
    """A new file in place of the original; `later` moves its mtime on (an nginx ETag counts whole seconds)."""
    body = solid_jpeg(color)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "new.tmp").write_bytes(body)
    if later:
        moment = time.time() + later
        os.utime(folder / "new.tmp", (moment, moment))
    os.replace(folder / "new.tmp", folder / "original.jpg")
    return body


def signed_notification(kind: str, notification_id: str) -> dict[str, str]:
    fields = {"notification_id": notification_id, "notification_type": kind, "puser_id": "", "partner_id": "100",
              "entry_id": "0_swap"}
    fields["signed_fields"] = ",".join([*fields, "signed_fields"]) + ","
    text = "".join(key + fields[key] for key in sorted(fields))
    fields["sig"] = hashlib.md5((SECRET + text).encode()).hexdigest()
    return fields


def colour(body: bytes) -> tuple[int, int, int]:
    image = Image.open(io.BytesIO(body)).convert("RGB")
    return image.getpixel((image.width // 2, image.height // 2))


def near(actual, expected) -> bool:
    return all(abs(a - b) <= 12 for a, b in zip(actual, expected))


async def every_worker(server: Server, target: str) -> list[tuple[int, int, bytes]]:
    """REQUESTS requests of `target`, each on a new connection: (status, worker pid, body) of each."""
    tags = [f"n{next(_ids)}" for _ in range(REQUESTS)]
    answers = []
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for tag in tags:
            async with session.get(f"{server.url}{target}?n={tag}") as response:
                answers.append((response.status, tag, await response.read()))
    pids: dict[str, int] = {}

    def logged() -> bool:
        for match in re.finditer(r"\[(\d+)\] mediaproxy\.access: \S+ GET \S+\?n=(n\d+) ", server.output()):
            pids[match[2]] = int(match[1])
        return all(tag in pids for tag in tags)

    await until(logged, timeout=30)  # each line is written when its answer has gone out
    return [(status, pids[tag], body) for status, tag, body in answers]


def assert_all(answers, *, pictures: tuple[int, int, int] | None = None, body: bytes | None = None,
               status: int = 200) -> None:
    assert len({pid for _, pid, _ in answers}) == 2, "both workers answered"
    for got, pid, content in answers:
        assert got == status, (pid, content[:200])
        if pictures is not None:
            assert near(colour(content), pictures), (pid, colour(content))
        if body is not None:
            assert content == body, pid


async def notify(server: Server, kind: str, notification_id: str) -> dict:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}/notifications", data=urlencode(signed_notification(
                kind, notification_id)), headers={"Content-Type": "application/x-www-form-urlencoded"}) as response:
            assert response.status == 200, await response.text()
            return await response.json()


@pytest.fixture
def upstream_nginx(nginx):
    """The conftest nginx, serving a copy of the fixtures; the test's entry is added to it."""
    put_original(nginx.root / "100" / "0_swap", RED)
    return nginx


@pytest.mark.parametrize("origin_kind", ["local", "http"])
async def test_one_notification_reaches_every_worker(tmp_path, request, origin_kind):
    if origin_kind == "local":
        root = tmp_path / "media"
        shutil.copytree(FIXTURE_MEDIA, root)
        entry = root / "100" / "0_swap"
        put_original(entry, RED)
        origin = f'kind = "local"\nroot = "{root}"'
    else:
        nginx = request.getfixturevalue("upstream_nginx")
        entry = nginx.root / "100" / "0_swap"
        origin = f'kind = "http"\nurl = "{nginx.url}"'
    make_config(tmp_path, origin + "\nrevalidate_seconds = 3600\nnot_found_seconds = 3600", PARTNERS)
    async with Server(tmp_path / "config.toml", tmp_path / "server.log", workers=2) as server:  # both workers up
        assert_all(await every_worker(server, THUMB), pictures=RED)
        blue = put_original(entry, BLUE, later=10)
        assert_all(await every_worker(server, THUMB), pictures=RED)  # trusted for an hour, on every worker
        answer = await notify(server, "entry_update", "501")
        assert [item["outcome"] for item in answer["notifications"]] == ["purged"]
        assert_all(await every_worker(server, THUMB), pictures=BLUE)
        assert_all(await every_worker(server, RAW), body=blue)
        if origin_kind == "local":
            await deleted_then_purged_by_the_command(server, tmp_path / "config.toml", entry)
    assert "Traceback" not in server.output()


async def deleted_then_purged_by_the_command(server: Server, config: Path, entry: Path) -> None:
    """entry_delete: 404 on every worker though the origin holds it; `mediaproxy purge` brings it back, changed."""
    await notify(server, "entry_delete", "502")
    assert_all(await every_worker(server, THUMB), status=404)
    green = put_original(entry, GREEN, later=20)
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "mediaproxy", "purge", "--partner", "100",
                                                    "--entry", "0_swap", "--config", str(config)],
                                   cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "purged partner 100 entry 0_swap" in done.stdout and "served again (it had been deleted)" in done.stdout
    assert_all(await every_worker(server, THUMB), pictures=GREEN)
    assert_all(await every_worker(server, RAW), body=green)
