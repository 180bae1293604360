"""The ceiling for hot responses: aiohttp answering fixed bytes with no logic at all (a benchmark baseline).

    python bench/bare_aiohttp.py FILE PORT
"""

import sys
from pathlib import Path

from aiohttp import web

body = Path(sys.argv[1]).read_bytes()


async def answer(request: web.Request) -> web.Response:
    return web.Response(body=body, content_type="image/jpeg")


app = web.Application()
app.router.add_route("GET", "/{path:.*}", answer)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), access_log=None, print=None, reuse_port=True)
