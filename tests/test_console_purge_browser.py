"""The console's notification state and purge button, in a real browser (chromium via Playwright, as in
test_console_browser.py): the selected entry shows the last notification received for it, and, for a partner whose
admin secret the server holds, a purge button that makes a changed original show at once."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from urllib.parse import urlencode

import aiohttp
import pytest
from PIL import Image

from mediaproxy.app import make_app
from mediaproxy.config import load

from .conftest import FIXTURE_MEDIA
from .test_console_browser import WAIT_MS, Watch, browser  # noqa: F401 - browser is a fixture

SECRET = "console-purge-secret-19ab"
PIXEL_JS = """() => {  // the centre pixel of the preview, once it is 0_swap's and loaded
  const image = document.querySelector('#preview-media');
  if (!image || !image.src.includes('/0_swap/') || !image.complete || !image.naturalWidth) return null;
  const canvas = document.createElement('canvas');
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const context = canvas.getContext('2d');
  context.drawImage(image, 0, 0);
  return Array.from(context.getImageData(canvas.width >> 1, canvas.height >> 1, 1, 1).data.slice(0, 3));
}"""


def solid_jpeg(color) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (320, 240), color).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture
async def mediaproxy(aiohttp_server, tmp_path) -> str:
    """The console on a changeable copy of the fixtures; partner 100's admin secret is configured, 200's is not."""
    root = tmp_path / "media"
    shutil.copytree(FIXTURE_MEDIA, root)
    (root / "100" / "0_swap").mkdir()
    (root / "100" / "0_swap" / "original.jpg").write_bytes(solid_jpeg((220, 30, 30)))
    config = tmp_path / "config.toml"
    config.write_text(f'[origin]\nroot = "{root}"\nrevalidate_seconds = 3600\n[cache]\ndir = "{tmp_path / "cache"}"\n'
                      f'[console]\nenabled = true\n[partners.100]\nadmin_secrets = ["{SECRET}"]\n')
    server = await aiohttp_server(make_app(load(config, environ={})))
    return str(server.make_url("")).rstrip("/")


async def notify(base: str, kind: str) -> None:
    fields = {"notification_id": "42", "notification_type": kind, "partner_id": "100", "entry_id": "0_swap"}
    fields["sig"] = hashlib.md5((SECRET + "".join(k + fields[k] for k in sorted(fields))).encode()).hexdigest()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/notifications", data=urlencode(fields),
                                headers={"Content-Type": "application/x-www-form-urlencoded"}) as response:
            assert response.status == 200


async def choose(page, entry: str) -> None:
    await page.click(f'[data-entry="{entry}"]')
    await page.wait_for_function(f"document.querySelector('#entry-facts').textContent.includes('{entry[4:]}')",
                                 timeout=WAIT_MS)


def near(pixel, color) -> bool:
    return pixel is not None and all(abs(a - b) <= 16 for a, b in zip(pixel, color))


async def test_the_console_shows_the_last_notification_and_purges(browser, mediaproxy, tmp_path):  # noqa: F811
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    watch = Watch(page)
    await page.goto(mediaproxy + "/")
    await page.wait_for_selector('[data-entry="100/0_swap"]', timeout=WAIT_MS)

    await choose(page, "200/0_private")  # no admin secret of partner 200 here: no purge button
    await page.wait_for_function("document.querySelector('#last-notification').textContent !== ''", timeout=WAIT_MS)
    assert await page.is_hidden("#purge")

    await notify(mediaproxy, "entry_update_thumbnail")
    await choose(page, "100/0_swap")
    await page.wait_for_function(
        "document.querySelector('#last-notification').textContent.includes('entry_update_thumbnail')",
        timeout=WAIT_MS)
    assert await page.is_visible("#purge")
    await page.wait_for_function(f"({PIXEL_JS})() !== null", timeout=WAIT_MS)
    assert near(await page.evaluate(PIXEL_JS), (220, 30, 30))

    original = tmp_path / "media" / "100" / "0_swap" / "original.jpg"
    (original.parent / "new.tmp").write_bytes(solid_jpeg((30, 30, 220)))
    os.replace(original.parent / "new.tmp", original)
    await page.click("#purge")
    await page.wait_for_function("document.querySelector('#purge-result').textContent.startsWith('purged: ')",
                                 timeout=WAIT_MS)
    assert "cached file" in await page.text_content("#purge-result")
    await page.wait_for_function(f"(() => {{ const p = ({PIXEL_JS})(); return p && p[2] > 180 && p[0] < 80; }})()",
                                 timeout=WAIT_MS)
    watch.assert_no_script_errors()
    await page.screenshot(path=str(tmp_path / "console-purge.png"), full_page=True)
