"""Requests aiohttp cannot parse (bad HTTP version, control characters in the target or a header) are answered
in SPEC §6 form, logged as one access line each, without a traceback and without the KS they carried."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from urllib.parse import quote

import pytest
from aiohttp import web

from mediaproxy.access import make_ks
from mediaproxy.app import AccessLogger, make_app

from .conftest import make_config, send_raw, until
from .test_hostile import Answer, assert_spec_error

SECRET = "protocol-secret-4e1f"
PARTNER = f"""
[partners.100]
admin_secrets = ["{SECRET}"]
ks_required_for = ["raw"]
"""
PHOTO_RAW = "/p/100/sp/10000/raw/entry_id/0_photo"

BAD_REQUESTS = [
    b"GET /p/100/raw/entry_id/0_photo HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /p/100/raw/entry_id/0_photo HTTP/1.x\r\nHost: x\r\n\r\n",
    b"GET /p/100/raw/entry_id/0_photo HTTP/2\r\nHost: x\r\n\r\n",
    b"GET /p/100/raw/entry_id/0_photo FTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /p/100/raw/entry_id/0_photo\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /p/100/raw/entry_id/0_ph\x7foto HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /p/100/raw/entry_id/0_photo\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /p/100/raw/entry_id/0_\x1bphoto HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /p/100/raw/entry_id/0_photo\tx HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /p/100/raw/entry_id/0_photo HTTP/1.1\r\nHost: x\r\nX-Thing: a\x00b\r\n\r\n",
]


@pytest.fixture
async def logged_server(tmp_path):
    """The server as `mediaproxy serve` runs it (mediaproxy's AccessLogger on "mediaproxy.access")."""
    runners = []

    async def start(log_format: str = "text"):
        config = make_config(tmp_path, extra=PARTNER + f'\n[server]\nlog_format = "{log_format}"\n')
        runner = web.AppRunner(make_app(config), access_log_class=AccessLogger,
                               access_log=logging.getLogger("mediaproxy.access"))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)

        class Address:
            host = "127.0.0.1"
            port = site._server.sockets[0].getsockname()[1]

        return Address()

    yield start
    for runner in runners:
        await runner.cleanup()


async def send_bytes(server, data: bytes) -> Answer:
    """Send `data` as it is and read the answer until the server closes the connection."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(data)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip()
               for name, _, value in (line.partition(":") for line in header_lines)}
    return Answer(int(status_line.split()[1]), headers, body, time.monotonic() - started)


def access_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "mediaproxy.access"]


def everything_logged(caplog) -> str:
    """Every record of every logger (aiohttp's too), with its traceback text, as an operator's log would hold it."""
    formatter = logging.Formatter()
    return "\n".join(f"{record.name} {record.levelname} {formatter.format(record)}" for record in caplog.records)


async def test_unparsable_requests_get_a_spec_answer_and_one_access_line_each(logged_server, caplog):
    caplog.set_level(logging.DEBUG)
    server = await logged_server()
    for data in BAD_REQUESTS:
        answer = await send_bytes(server, data)
        assert answer.status == 400, (data, answer.status, answer.text)
        assert_spec_error(answer)
        assert answer.text.startswith("bad request: "), answer.text
        assert answer.headers["x-kaltura"] == "error-25"
        assert answer.headers["server"].startswith("mediaproxy/")
        assert answer.headers["access-control-allow-origin"] == "*"
        assert b"0_photo" not in answer.body  # the raw line is never quoted back
    await until(lambda: len(access_lines(caplog)) >= len(BAD_REQUESTS))
    good = await send_raw(server, PHOTO_RAW + "/ks/" + make_ks(100, SECRET, privileges="download:*"))
    assert good[0] == 200  # the server is fine afterwards
    await until(lambda: len(access_lines(caplog)) == len(BAD_REQUESTS) + 1)
    lines = access_lines(caplog)
    assert all(" 400 " in line for line in lines[:-1]), lines
    assert not [record for record in caplog.records if record.exc_info or record.levelno >= logging.WARNING], \
        everything_logged(caplog)
    assert len(caplog.records) == len(BAD_REQUESTS) + 1, everything_logged(caplog)  # no amplification


@pytest.mark.parametrize("data, reason", [
    (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", "HTTP version"),
    (b"GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", "request target"),
    (b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n", "method"),
    (b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", "METHOD TARGET HTTP/1.x"),  # a space in the target
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", "header"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n", "Content-Length"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "Host"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", "too long"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "HTTPS"),
])
async def test_the_one_line_body_says_what_was_wrong(logged_server, data, reason):
    answer = await send_bytes(await logged_server(), data)
    assert answer.status == 400
    assert_spec_error(answer)
    assert reason in answer.text, answer.text


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_a_ks_in_an_unparsable_request_is_never_logged(logged_server, caplog, log_format):
    caplog.set_level(logging.DEBUG)
    server = await logged_server(log_format)
    ks = make_ks(100, SECRET, privileges="download:*")
    requests = [
        f"GET {PHOTO_RAW}/ks/{ks} HTTP/9.9\r\nHost: x\r\n\r\n".encode(),
        f"GET {PHOTO_RAW}?ks={quote(ks, safe='')} HTTP/1.x\r\nHost: x\r\n\r\n".encode(),
        f"GET {PHOTO_RAW}/ks/{ks}\x01 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"GET {PHOTO_RAW}/ks/\x7f{ks} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"GET {PHOTO_RAW} HTTP/1.1\r\nHost: x\r\nX-Kaltura-Ks: {ks}\x00\r\n\r\n".encode(),
        f"GET {PHOTO_RAW} HTTP/1.1\r\nHost: x\r\nX-Kaltura-Ks: {ks[:20]}\x00{ks[20:]}\r\n\r\n".encode(),
        f"GET {PHOTO_RAW}/ks/{ks}/{'x' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"GET {PHOTO_RAW} HTTP/1.1\r\nHost: x\r\nX-Kaltura-Ks: {ks}{'x' * 9000}\r\n\r\n".encode(),
    ]
    for data in requests:
        answer = await send_bytes(server, data)
        assert answer.status == 400, (answer.status, answer.text)
        assert_spec_error(answer)
        assert ks[:16] not in answer.text
    await until(lambda: len(access_lines(caplog)) == len(requests))
    logged = everything_logged(caplog)
    for form in (ks, quote(ks, safe=""), ks[:16], ks[-16:].rstrip("=")):
        assert form not in logged, logged
    if log_format == "json":
        fields = [json.loads(line) for line in access_lines(caplog)]
        assert all(field["status"] == 400 and field["service"] is None for field in fields), fields


async def test_the_test_server_answers_unparsable_requests_in_spec_form_too(serve):
    """The app sets its own access logger and error answer whatever runner serves it (here aiohttp's test server)."""
    client = await serve()
    answer = await send_bytes(client, b"GET /p/100/raw/entry_id/0_photo HTTP/9.9\r\nHost: x\r\n\r\n")
    assert answer.status == 400
    assert_spec_error(answer)
