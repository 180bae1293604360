"""Baselines of any aiohttp server (benchmark only).

    python bench/bare_aiohttp.py FILE PORT              fixed bytes with no logic at all: the ceiling of hot answers
    python bench/bare_aiohttp.py FILE PORT THUMBNAIL    FILE rendered on every request as the thumbnail URL THUMBNAIL
                                                        asks (mediaproxy's own render_image, one thread a process),
                                                        nothing else: no parse, caches or checks — the floor of what
                                                        any aiohttp server doing that work pays per request
"""

import asyncio
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

body = Path(sys.argv[1]).read_bytes()


async def answer(request: web.Request) -> web.Response:
    return web.Response(body=body, content_type="image/jpeg")


def rendering(thumbnail: str):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from mediaproxy.media.thumbnail import RenderSettings, render_image
    from mediaproxy.urls import parse

    options, settings = parse(thumbnail, 100).options, RenderSettings(75)
    thread = ThreadPoolExecutor(1)

    async def render(request: web.Request) -> web.Response:
        rendered = await asyncio.get_running_loop().run_in_executor(thread, render_image, options, body, settings)
        return web.Response(body=rendered.body, content_type=rendered.content_type)
    return render


app = web.Application()
app.router.add_route("GET", "/{path:.*}", rendering(sys.argv[3]) if len(sys.argv) > 3 else answer)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), access_log=None, print=None, reuse_port=True)
