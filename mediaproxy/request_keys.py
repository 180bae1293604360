"""What a request learns on its way through the layers (aiohttp request keys), read back by the metrics, the
access log and Server-Timing."""

from __future__ import annotations

from aiohttp import web

from .refs import EntryRef

SERVICE = web.RequestKey("service", str)  # thumbnail, flvclipper, raw, or another endpoint's name
ENTRY = web.RequestKey("entry", EntryRef)
TIER = web.RequestKey("tier", str)  # where the answer came from: memory, disk, render, index, remux, file
STARTED = web.RequestKey("started", float)  # time.perf_counter() when it arrived
PRIVATE = web.RequestKey("private", bool)  # answered for one KS holder: Cache-Control private
HOT = web.RequestKey("hot", bool)  # answered from the hot answers, before routing
DIRECT = web.RequestKey("direct", bool)  # a media request answered before routing (its middleware and signal too)
