"""End to end in a real browser (Debian's chromium, headless, driven by Playwright): the console at `/`, and a plain
page on another origin embedding mediaproxy's thumbnails, a strip, a clip and a raw video.

What a person would check by hand: the console lists every fixture entry with a loaded thumbnail, its controls
change the URL, the preview and the response table, errors are shown, the clip and the raw video play, and the page
fits a phone; a media link of any host pasted into the URL field fills the controls and the preview and says how it
is read (SPEC §9); on the other origin, images render at the requested sizes and the videos load, seek (Range) and
play, cross-origin. No script errors on either page. Console screenshots are kept under the tests' tmp dirs (and the
paste flow's is written to docs/console.png, the README's picture, when MEDIAPROXY_UPDATE_SCREENSHOT=1).

The video fixture's frames are solid colours, one per second (fixtures/generate.py), so a screenshot of a `<video>`
after a seek says which second is shown.
"""

from __future__ import annotations

import io
import json
import os

import pytest
from aiohttp import web
from PIL import Image

from fixtures.generate import nearest_second_colour
from mediaproxy.access import make_ks
from mediaproxy.app import make_app
from mediaproxy.config import load

from .conftest import FIXTURE_MEDIA, REPO, require_tool

try:
    from playwright.async_api import async_playwright
except ImportError:  # pragma: no cover - depends on the environment
    async_playwright = None

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--autoplay-policy=no-user-gesture-required"]
WAIT_MS = 15_000  # the longest any single condition may take (a cold clip remux is under a second)
PHOTO = (1280, 853)
VIDEO_SECONDS = 6.0

# every "partner/entry" folder of the fixtures: what the console must list
FIXTURE_ENTRIES = sorted(f"{partner.name}/{entry.name}" for partner in FIXTURE_MEDIA.iterdir() if partner.is_dir()
                         for entry in partner.iterdir() if entry.is_dir())


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
async def mediaproxy(aiohttp_server, tmp_path) -> str:
    """A mediaproxy server with the console on, like the bundled config (partner 200's raw needs a KS)."""
    config = tmp_path / "config.toml"
    config.write_text(f'[origin]\nkind = "local"\nroot = "{FIXTURE_MEDIA}"\n\n[cache]\ndir = "{tmp_path / "cache"}"\n\n'
                      '[console]\nenabled = true\n\n[partners.200]\nadmin_secrets = ["browser-test-secret"]\n'
                      'ks_required_for = ["raw"]\n')
    server = await aiohttp_server(make_app(load(config, environ={})))
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def browser(mediaproxy):
    """Debian's chromium, headless (closed before the servers stop)."""
    executable = require_tool("chromium")
    if async_playwright is None:
        message = "the playwright Python package is not installed"
        if os.environ.get("MEDIAPROXY_REQUIRE_TOOLS"):
            pytest.fail(message)
        pytest.skip(message)
    playwright = await async_playwright().start()
    try:
        browser = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield browser
        await browser.close()
    finally:
        await playwright.stop()


class Watch:
    """What a page reported: uncaught exceptions, console errors, and every response (for the Range checks)."""

    def __init__(self, page) -> None:
        self.page_errors: list[str] = []
        self.console_errors: list[tuple[str, str]] = []  # (text, url of the failing resource or script)
        self.responses = []
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("console", self._console)
        page.on("response", lambda response: self.responses.append(response))

    def _console(self, message) -> None:
        if message.type == "error":
            self.console_errors.append((message.text, message.location.get("url", "")))

    def assert_no_script_errors(self, expected_failures: tuple[str, ...] = ()) -> None:
        """No uncaught exception, no console error except "Failed to load resource" for a URL meant to fail."""
        assert self.page_errors == []
        unexpected = [(text, url) for text, url in self.console_errors
                      if not (text.startswith("Failed to load resource") and any(part in url for part in
                                                                               expected_failures))]
        assert unexpected == []


async def open_console(browser, base: str, viewport=(1280, 900), **options):
    page = await browser.new_page(viewport={"width": viewport[0], "height": viewport[1]}, **options)
    watch = Watch(page)
    await page.goto(base + "/")
    await page.wait_for_function(f"document.querySelectorAll('[data-entry]').length === {len(FIXTURE_ENTRIES)}",
                                 timeout=WAIT_MS)
    return page, watch


HEADER_JS = """(name) => {
  const row = Array.from(document.querySelectorAll('#headers tbody tr'))
    .find((tr) => tr.querySelector('th').textContent === name);
  return row ? row.querySelector('td').textContent : null;
}"""


async def wait_header(page, name: str, value: str) -> None:
    await page.wait_for_function(f"({HEADER_JS})({json.dumps(name)}) === {json.dumps(value)}", timeout=WAIT_MS)


async def wait_preview_image(page, url_part: str) -> dict:
    """Waits for the preview `<img>` of the current URL to be decoded; its natural size."""
    await page.wait_for_function(f"""(() => {{
      const img = document.querySelector('#preview-media');
      return img && img.tagName === 'IMG' && img.src.includes({json.dumps(url_part)}) && img.complete
        && img.naturalWidth > 0 && document.querySelector('#url').value.includes({json.dumps(url_part)});
    }})()""", timeout=WAIT_MS)
    return await page.evaluate("(() => { const i = document.querySelector('#preview-media');"
                               " return {width: i.naturalWidth, height: i.naturalHeight}; })()")


async def assert_plays(page, selector: str) -> None:
    """play() resolves and currentTime advances."""
    start = await page.evaluate(f"""(async () => {{
      const video = document.querySelector({json.dumps(selector)});
      await video.play();
      return video.currentTime;
    }})()""")
    await page.wait_for_function(f"document.querySelector({json.dumps(selector)}).currentTime > {start} + 0.25",
                                 timeout=WAIT_MS)
    await page.evaluate(f"document.querySelector({json.dumps(selector)}).pause()")


async def shown_second(page, selector: str) -> int:
    """Which second of the colour-per-second fixture video the element shows now (by its centre pixel)."""
    picture = Image.open(io.BytesIO(await page.locator(selector).screenshot())).convert("RGB")
    return nearest_second_colour(picture.getpixel((picture.width // 2, picture.height // 2)))


# ------------------------------------------------------------------------------------------------ the console


async def test_console_lists_every_entry_with_its_thumbnail_and_is_screenshot(browser, mediaproxy, tmp_path):
    page, watch = await open_console(browser, mediaproxy)
    listed = await page.eval_on_selector_all("[data-entry]", "buttons => buttons.map(b => b.dataset.entry)")
    assert sorted(listed) == FIXTURE_ENTRIES
    # every card asks for a thumbnail (console.js leaves it out only for entries in error or partners needing a
    # KS for thumbnails: none here); cards are lazy-loaded, so each is brought into view
    for entry in FIXTURE_ENTRIES:
        await page.locator(f'[data-entry="{entry}"]').scroll_into_view_if_needed()
    await page.wait_for_function("""Array.from(document.querySelectorAll('[data-entry] img'))
        .every(img => img.src && img.complete && img.naturalWidth > 0)""", timeout=WAIT_MS)
    sizes = await page.eval_on_selector_all("[data-entry] img", """images => images.map(img =>
        [img.closest('[data-entry]').dataset.entry, img.naturalWidth, img.naturalHeight])""")
    assert sizes == [[entry, 96, 72] for entry in listed]  # width 96 height 72 type 2: exactly that size

    # the first entry is selected and fully shown: title, preview, response headers
    await page.evaluate("window.scrollTo(0, 0)")
    assert await page.text_content("#entry-title") == "0_alpha"
    assert await page.get_attribute('[data-entry="100/0_alpha"]', "aria-current") == "true"
    assert await wait_preview_image(page, "/thumbnail/entry_id/0_alpha/width/320/height/240") == \
        {"width": 320, "height": 240}
    await wait_header(page, "Status", "200 OK")
    await wait_header(page, "Content-Type", "image/jpeg")
    await page.wait_for_function("document.querySelectorAll('#snippets pre').length === 2", timeout=WAIT_MS)
    await page.screenshot(path=tmp_path / "console.png")  # the test run's artifact
    assert Image.open(tmp_path / "console.png").size == (1280, 900)
    watch.assert_no_script_errors()


async def test_console_controls_change_the_url_the_preview_and_the_response(browser, mediaproxy):
    page, watch = await open_console(browser, mediaproxy)
    await page.click('[data-entry="100/0_photo"]')
    assert await page.text_content("#entry-title") == "Harbour photo"
    await page.click('[data-entry="100/0_named"]')  # a name with quotes and a slash is shown as text
    name = json.loads((FIXTURE_MEDIA / "100" / "0_named" / "entry.json").read_text())["name"]
    assert await page.text_content("#entry-title") == name
    await page.click('[data-entry="100/0_photo"]')
    assert await page.text_content("#entry-title") == "Harbour photo"

    await page.fill('#controls [name="width"]', "200")
    await page.select_option('#controls [name="type"]', "3")
    size = await wait_preview_image(page, "/thumbnail/entry_id/0_photo/width/200/height/240/type/3")
    assert size == {"width": 200, "height": 240}
    url = await page.input_value("#url")
    assert url == f"{mediaproxy}/p/100/sp/10000/thumbnail/entry_id/0_photo/width/200/height/240/type/3"
    await wait_header(page, "Status", "200 OK")
    await wait_header(page, "Content-Type", "image/jpeg")
    assert await page.is_hidden("#problem")

    await page.select_option('#controls [name="format"]', "png")
    assert await wait_preview_image(page, "/type/3/format/png") == {"width": 200, "height": 240}
    await wait_header(page, "Content-Type", "image/png")
    assert (await page.input_value("#url")).endswith("/width/200/height/240/type/3/format/png")

    # an invalid value: the input flags it, the request is still made, and the answer is explained
    await page.fill('#controls [name="bgcolor"]', "xyz")
    await page.wait_for_function("!document.querySelector('#problem').hidden", timeout=WAIT_MS)
    assert await page.evaluate("document.querySelector('#controls [name=bgcolor]').validity.valid") is False
    assert "/bgcolor/xyz" in await page.input_value("#url")
    problem = await page.text_content("#problem")
    assert problem.startswith("HTTP 400: ") and "bgcolor" in problem and "xyz" in problem, problem
    assert "(Kaltura error-" in problem, problem
    await wait_header(page, "Status", "400 Bad Request")
    # fixing it clears the problem
    await page.fill('#controls [name="bgcolor"]', "00ff00")
    assert await wait_preview_image(page, "/bgcolor/00ff00") == {"width": 200, "height": 240}
    await page.wait_for_function("document.querySelector('#problem').hidden", timeout=WAIT_MS)
    await wait_header(page, "Status", "200 OK")
    watch.assert_no_script_errors(expected_failures=("/bgcolor/xyz",))


async def test_console_plays_the_clip_and_the_raw_video(browser, mediaproxy):
    page, watch = await open_console(browser, mediaproxy)
    await page.click('[data-entry="100/0_video"]')
    assert await page.text_content("#entry-title") == "Colour seconds"
    await page.click('#services [data-service="flvclipper"]')
    await page.wait_for_function("document.querySelector('#preview-media')?.tagName === 'VIDEO'"
                                 " && document.querySelector('#preview-media').readyState >= 2", timeout=WAIT_MS)
    url = await page.input_value("#url")
    assert url == f"{mediaproxy}/p/100/sp/10000/flvclipper/entry_id/0_video/clip_from/1000/clip_to/4000"
    assert await page.evaluate("document.querySelector('#preview-media').src") == url
    assert await page.evaluate("document.querySelector('#preview-media').duration") == pytest.approx(3.0, abs=0.2)
    await wait_header(page, "Content-Type", "video/mp4")
    await wait_header(page, "X-Clip-Start-Ms", "1000")
    await assert_plays(page, "#preview-media")

    await page.click('#services [data-service="raw"]')
    await page.wait_for_function("document.querySelector('#preview-media')?.tagName === 'VIDEO'"
                                 " && document.querySelector('#preview-media').src.includes('/raw/')"
                                 " && document.querySelector('#preview-media').readyState >= 2", timeout=WAIT_MS)
    assert await page.input_value("#url") == f"{mediaproxy}/p/100/sp/10000/raw/entry_id/0_video"
    duration = await page.evaluate("document.querySelector('#preview-media').duration")
    assert duration == pytest.approx(VIDEO_SECONDS, abs=0.2)
    await wait_header(page, "Status", "200 OK")
    await wait_header(page, "Content-Type", "video/mp4")
    await assert_plays(page, "#preview-media")
    watch.assert_no_script_errors()


# ------------------------------------------------------------------------------------------------ pasting a link


async def paste(page, link: str) -> None:
    """Puts `link` on the clipboard and pastes it over the URL field's text, as a person does."""
    await page.evaluate("(text) => navigator.clipboard.writeText(text)", link)
    await page.click("#url")
    await page.keyboard.press("Control+A")
    await page.keyboard.press("Control+V")


CLIPBOARD = {"permissions": ["clipboard-read", "clipboard-write"]}


async def note_texts(page) -> list[str]:
    return await page.eval_on_selector_all("#notes li", "items => items.map(item => item.textContent)")


async def test_a_pasted_link_of_any_host_fills_the_controls_the_preview_and_says_how_it_is_read(
        browser, mediaproxy, tmp_path):
    page, watch = await open_console(browser, mediaproxy, **CLIPBOARD)
    await wait_header(page, "Status", "200 OK")
    link = ("https://cdnapisec.kaltura.com/p/100/sp/10000/thumbnail/entryId/0_photo/width/200/height/20000"
            "/clientTag/kdp%3Av3.9")
    await paste(page, link)
    # the photo's card is chosen, the controls hold the values used, the preview is the pasted link served here
    await page.wait_for_function("document.querySelector('[data-entry=\"100/0_photo\"]')"
                                 ".getAttribute('aria-current') === 'true'", timeout=WAIT_MS)
    assert await wait_preview_image(page, "/thumbnail/entryId/0_photo/width/200/height/20000") == \
        {"width": 200, "height": round(200 * PHOTO[1] / PHOTO[0])}
    assert await page.input_value("#url") == link  # the field keeps what was pasted
    assert await page.text_content("#entry-title") == "Harbour photo"
    assert await page.input_value('#controls [name="width"]') == "200"
    assert await page.input_value('#controls [name="height"]') == "10000"
    assert await page.input_value('#controls [name="type"]') == "1"
    await page.wait_for_function("document.querySelectorAll('#notes li').length === 3", timeout=WAIT_MS)
    assert await note_texts(page) == ["entryId read as entry_id", "height clamped to 10000", "clientTag ignored"]
    local = f"{mediaproxy}/p/100/sp/10000/thumbnail/entry_id/0_photo/width/200/height/10000"
    assert await page.text_content("#local-url") == local
    reading = await page.text_content("#reading")
    assert reading.startswith("Read as thumbnail 200×10000 jpg of entry 0_photo, partner 100 (the link names "
                              "cdnapisec.kaltura.com); served here as "), reading
    await wait_header(page, "Status", "200 OK")
    await wait_header(page, "Content-Type", "image/jpeg")
    assert await page.is_hidden("#problem") and await page.is_hidden("#link-error")
    await page.evaluate("document.querySelector('#url').scrollLeft = 0")  # the picture shows the link's host
    await page.screenshot(path=tmp_path / "console-paste.png")  # the test run's artifact
    if os.environ.get("MEDIAPROXY_UPDATE_SCREENSHOT"):  # the README's picture, refreshed on request
        (REPO / "docs").mkdir(exist_ok=True)
        await page.screenshot(path=REPO / "docs" / "console.png")

    # a control changed afterwards: the URL is built from the controls again, as the local URL, and explained
    await page.fill('#controls [name="width"]', "150")
    assert await wait_preview_image(page, "/entry_id/0_photo/width/150/height/10000") == \
        {"width": 150, "height": round(150 * PHOTO[1] / PHOTO[0])}
    assert await page.input_value("#url") == local.replace("/width/200/", "/width/150/")
    await page.wait_for_function("document.querySelectorAll('#notes li').length === 0"
                                 " && document.querySelector('#local-url').textContent.includes('/width/150/')",
                                 timeout=WAIT_MS)
    watch.assert_no_script_errors()


async def test_pasted_clip_and_ks_links_fill_their_service_and_the_ks(browser, mediaproxy):
    page, watch = await open_console(browser, mediaproxy, **CLIPBOARD)
    await paste(page, "https://cdn.example.com/s/p/100/flvclipper/entry_id/0_video/seek_from/1000/clip_to/3000/a.mp4")
    await page.wait_for_function("document.querySelector('#preview-media')?.tagName === 'VIDEO'"
                                 " && document.querySelector('#preview-media').src.includes('/s/p/100/flvclipper/')"
                                 " && document.querySelector('#preview-media').readyState >= 2", timeout=WAIT_MS)
    assert await page.get_attribute('#services [data-service="flvclipper"]', "aria-selected") == "true"
    assert await page.text_content("#entry-title") == "Colour seconds"
    assert [await page.input_value(f'#controls [name="{name}"]') for name in ("clip_from", "clip_to", "container")] \
        == ["1000", "3000", "mp4"]
    assert await page.evaluate("document.querySelector('#preview-media').duration") == pytest.approx(2.0, abs=0.2)
    await wait_header(page, "X-Clip-Start-Ms", "1000")
    notes = await note_texts(page)
    assert "seek_from read as clip_from" in notes and "a.mp4 read as the output container: mp4" in notes
    assert '/s/ ignored (a CDN\'s "secured" prefix)' in notes
    assert await page.text_content("#local-url") == \
        f"{mediaproxy}/p/100/sp/10000/flvclipper/entry_id/0_video/clip_from/1000/clip_to/3000/a.mp4"

    ks = make_ks(200, "browser-test-secret", privileges="download:*")
    await paste(page, f"https://cdn.example.com/p/200/sp/20000/raw/entry_id/0_private?ks={ks}")
    await page.wait_for_function("document.querySelector('#preview-media')?.tagName === 'IMG'"
                                 " && document.querySelector('#preview-media').src.includes('/raw/entry_id/0_private')"
                                 " && document.querySelector('#preview-media').naturalWidth > 0", timeout=WAIT_MS)
    assert await page.input_value('#controls [name="ks"]') == ks  # taken from the link itself, never from /explain
    assert await page.get_attribute('#services [data-service="raw"]', "aria-selected") == "true"
    await wait_header(page, "Status", "200 OK")
    assert "KS: present, well-formed v1, partner 200, verified." in await page.text_content("#reading")
    explained = [response for response in watch.responses if "/explain?" in response.url]
    assert explained and not [response for response in explained if ks in await response.text()]
    watch.assert_no_script_errors()


async def test_a_pasted_malformed_or_unknown_link_says_why_in_words(browser, mediaproxy):
    page, watch = await open_console(browser, mediaproxy, **CLIPBOARD)
    await wait_header(page, "Status", "200 OK")
    await paste(page, "https://cdnapisec.kaltura.com/p/100/sp/10000/thumbnail/entry_id/0_photo/width/abc")
    await page.wait_for_function("!document.querySelector('#link-error').hidden", timeout=WAIT_MS)
    expected = "HTTP 400: width: 'abc' is not an integer (Kaltura error-25)"
    assert await page.text_content("#link-error") == expected
    assert await page.text_content("#problem") == expected
    assert await page.text_content("#reading") == "This link is not read as a media request (thumbnail, partner 100)."
    assert await page.evaluate("document.querySelector('#preview').children.length") == 0

    # not a media link at all, typed and confirmed with Enter
    await page.fill("#url", "https://www.example.com/about/team.html")
    await page.press("#url", "Enter")
    await page.wait_for_function("document.querySelector('#link-error').textContent.startsWith('HTTP 404: ')",
                                 timeout=WAIT_MS)
    assert "no such service" in await page.text_content("#link-error")

    # a well-formed link to an entry this origin does not hold: read, then answered 404 here
    await paste(page, "https://cdnapisec.kaltura.com/p/123/sp/12300/thumbnail/entry_id/0_abc/width/320/vid_slices/4")
    await page.wait_for_function("document.querySelector('#problem').textContent.includes('0_abc')", timeout=WAIT_MS)
    assert await page.text_content("#problem") == "HTTP 404: no entry 0_abc for partner 123 (Kaltura error-1)"
    assert await page.text_content("#entry-title") == "0_abc"
    assert await page.is_hidden("#link-error")
    assert await page.input_value('#controls [name="vid_slices"]') == "4"
    assert await page.is_visible('#controls [name="vid_slices"]')  # an unknown entry may be a video
    assert "height absent: follows the source's aspect ratio" in await note_texts(page)
    assert await page.eval_on_selector_all("[data-entry][aria-current]", "cards => cards.length") == 0
    watch.assert_no_script_errors(expected_failures=("/width/abc", "/entry_id/0_abc/"))


PHONE = (390, 844)
PHONE_OPTIONS = {"is_mobile": True, "has_touch": True, "device_scale_factor": 1}


async def test_console_on_a_phone_shows_the_entries_and_the_controls(browser, mediaproxy):
    page, watch = await open_console(browser, mediaproxy, viewport=PHONE, **PHONE_OPTIONS)
    await page.wait_for_function("document.querySelector('#headers tbody tr')", timeout=WAIT_MS)
    for selector in ('[data-entry="100/0_alpha"]', "#entry-title", '#controls [name="width"]', "#url"):
        assert await page.is_visible(selector), selector
        box = await page.locator(selector).bounding_box()
        assert box["x"] >= 0 and box["x"] < PHONE[0], (selector, box)
    await page.fill('#controls [name="width"]', "120")
    assert (await wait_preview_image(page, "/0_alpha/width/120/height/240"))["width"] == 120
    watch.assert_no_script_errors()


@pytest.mark.parametrize("viewport, options", [
    pytest.param(PHONE, PHONE_OPTIONS, id="phone-390x844"),
    pytest.param((1024, 768), {}, id="desktop-1024x768"),
])
async def test_console_page_does_not_overflow_horizontally(browser, mediaproxy, viewport, options):
    page, watch = await open_console(browser, mediaproxy, viewport=viewport, **options, **CLIPBOARD)
    await page.wait_for_function("document.querySelector('#headers tbody tr')", timeout=WAIT_MS)
    widths = await page.evaluate("({scroll: document.documentElement.scrollWidth, inner: window.innerWidth})")
    assert widths["scroll"] <= viewport[0] + 1, widths
    assert widths["inner"] == viewport[0], widths  # a phone zooms out to fit wider content: the layout widens
    box = await page.locator("#preview-media").bounding_box()  # the preview is centred in the visible width
    assert box["x"] >= 0 and box["x"] + box["width"] <= viewport[0], box
    # nor once a long link is pasted and explained (its notes and local URL wrap)
    await paste(page, "https://cdnapisec.kaltura.com/p/100/sp/10000/thumbnail/entryId/0_photo/width/90/height/20000"
                      "/clientTag/kdp%3Av3.9.16%3AsomeVeryLongPlayerVersionString/playSessionId/" + "a" * 80)
    await page.wait_for_function("document.querySelectorAll('#notes li').length === 4", timeout=WAIT_MS)
    await wait_preview_image(page, "/entryId/0_photo/width/90/")
    widths = await page.evaluate("({scroll: document.documentElement.scrollWidth, inner: window.innerWidth})")
    assert widths["scroll"] <= viewport[0] + 1 and widths["inner"] == viewport[0], widths
    watch.assert_no_script_errors()


# ------------------------------------------------------------------------------------------------ another origin


PLAIN_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>a plain page embedding mediaproxy</title><link rel="icon" href="data:,"></head>
<body>
  <img id="fill" src="{m}/thumbnail/entry_id/0_photo/width/160/height/120/type/3" alt="">
  <img id="fit" src="{m}/thumbnail/entry_id/0_photo/width/200/type/1" alt="" crossorigin="anonymous">
  <img id="strip" src="{m}/thumbnail/entry_id/0_video/vid_slices/4/width/80" alt="">
  <video id="clip" controls muted playsinline preload="metadata" crossorigin="anonymous"
         poster="{m}/thumbnail/entry_id/0_video/width/320/height/240"
         src="{m}/flvclipper/entry_id/0_video/clip_from/1000/clip_to/5000"></video>
  <video id="raw" controls muted playsinline preload="metadata" src="{m}/raw/entry_id/0_video"></video>
</body>
</html>
"""


@pytest.fixture
async def plain_page(aiohttp_server, mediaproxy) -> str:
    """A tiny server on another port (another origin) serving one page that embeds mediaproxy's URLs."""
    html = PLAIN_PAGE.format(m=f"{mediaproxy}/p/100/sp/10000")

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    server = await aiohttp_server(app)
    url = str(server.make_url("/"))
    assert url.split("/")[2] != mediaproxy.split("/")[2]
    return url


async def test_a_page_on_another_origin_shows_thumbnails_and_plays_seeks_clip_and_raw(browser, mediaproxy,
                                                                                    plain_page):
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    watch = Watch(page)
    await page.goto(plain_page)
    await page.wait_for_function("Array.from(document.images).every(img => img.complete)"
                                 " && Array.from(document.querySelectorAll('video')).every(v => v.readyState >= 1)",
                                 timeout=WAIT_MS)

    sizes = await page.evaluate("Object.fromEntries(Array.from(document.images).map(img =>"
                                " [img.id, [img.naturalWidth, img.naturalHeight]]))")
    assert sizes == {"fill": [160, 120], "fit": [200, round(200 * PHOTO[1] / PHOTO[0])], "strip": [4 * 80, 60]}

    durations = await page.evaluate("Object.fromEntries(Array.from(document.querySelectorAll('video')).map(v =>"
                                    " [v.id, [v.duration, v.videoWidth, v.videoHeight]]))")
    assert durations["clip"][0] == pytest.approx(4.0, abs=0.2)
    assert durations["raw"][0] == pytest.approx(VIDEO_SECONDS, abs=0.2)
    assert durations["clip"][1:] == durations["raw"][1:] == [320, 240]

    for video, shown in (("clip", 3), ("raw", 2)):  # the clip starts at 1 s of the source: its 2.5 s is second 3
        time = await page.evaluate("""async (id) => {
          const video = document.getElementById(id);
          const seeked = new Promise((resolve) => video.addEventListener('seeked', resolve, { once: true }));
          video.currentTime = 2.5;
          await seeked;
          return video.currentTime;
        }""", video)
        assert time == pytest.approx(2.5, abs=0.05)
        await page.wait_for_function(f"document.getElementById('{video}').readyState >= 2", timeout=WAIT_MS)
        assert await shown_second(page, f"#{video}") == shown, video
        await assert_plays(page, f"#{video}")

    # the videos were fetched with Range requests, answered 206 with a Content-Range, by mediaproxy
    for path in ("/flvclipper/entry_id/0_video/clip_from/1000/clip_to/5000", "/raw/entry_id/0_video"):
        ranged = [response for response in watch.responses
                  if response.url == f"{mediaproxy}/p/100/sp/10000{path}" and response.status == 206]
        assert ranged, path
        for response in ranged:
            assert response.request.headers.get("range", "").startswith("bytes="), path
            assert response.headers.get("content-range", "").startswith("bytes "), path

    # CORS: a script on this origin reads mediaproxy's answers, exposed headers, a Range, and pixels
    answers = await page.evaluate("""async (m) => {
      const thumb = await fetch(`${m}/thumbnail/entry_id/0_photo/width/160/height/120/type/3`);
      const body = await thumb.blob();
      const part = await fetch(`${m}/raw/entry_id/0_video`, { headers: { Range: 'bytes=100-199' } });
      const partBody = await part.arrayBuffer();
      const canvas = document.createElement('canvas');
      const image = document.getElementById('fit');
      canvas.width = image.naturalWidth;
      canvas.height = image.naturalHeight;
      const context = canvas.getContext('2d');
      context.drawImage(image, 0, 0);
      const pixel = Array.from(context.getImageData(100, 60, 1, 1).data);  // throws if the canvas were tainted
      return {
        status: thumb.status, type: thumb.headers.get('Content-Type'), length: thumb.headers.get('Content-Length'),
        etag: thumb.headers.get('ETag'), size: body.size, partStatus: part.status,
        range: part.headers.get('Content-Range'), partSize: partBody.byteLength, pixel,
      };
    }""", f"{mediaproxy}/p/100/sp/10000")
    raw_size = (FIXTURE_MEDIA / "100" / "0_video" / "original.mp4").stat().st_size
    assert answers["status"] == 200 and answers["type"] == "image/jpeg"
    assert answers["length"] == str(answers["size"]) and answers["etag"]
    assert answers["partStatus"] == 206 and answers["range"] == f"bytes 100-199/{raw_size}"
    assert answers["partSize"] == 100
    assert answers["pixel"][3] == 255
    watch.assert_no_script_errors()


async def test_a_clip_cut_by_index_plays_to_its_end_in_chromium(browser, mediaproxy, plain_page):
    """The clip (MP4 by index rewrite: a new moov, then the original's bytes) plays through: `ended` fires and
    currentTime is then its duration, which is the asked window snapped to the keyframe before it."""
    page = await browser.new_page()
    watch = Watch(page)
    await page.goto(plain_page)
    await page.wait_for_function("document.getElementById('clip').readyState >= 1", timeout=WAIT_MS)
    ended = await page.evaluate("""async () => {
      const video = document.getElementById('clip');
      video.playbackRate = 4;
      const done = new Promise((resolve) => video.addEventListener('ended', resolve, { once: true }));
      await video.play();
      await done;
      return [video.currentTime, video.duration, video.ended];
    }""")
    assert ended[2] is True
    assert ended[0] == pytest.approx(ended[1], abs=0.05) and ended[1] == pytest.approx(4.0, abs=0.1)
    clip = [response for response in watch.responses if "/flvclipper/" in response.url]
    assert clip and all(response.status in (200, 206) for response in clip)
    watch.assert_no_script_errors()
