"""The test console: a page for trying media links (served at `/` when `[console] enabled = true`).

Plain HTML, CSS and JavaScript from the package (no build step, nothing from the network), plus two JSON endpoints:
the entries the page can show, and `/explain?url=...` (SPEC §9), how any media link is read.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from ..access import AccessPolicy
from ..config import Config
from ..errors import MediaProxyError
from ..explain import explain
from ..media.probe import MediaKind
from ..refs import ID_PATTERN, EntryRef
from ..services.sources import Sources

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"


def add_console(app: web.Application, config: Config, sources: Sources) -> None:
    catalogue = Catalogue(config, sources)

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def entries(request: web.Request) -> web.Response:
        return web.json_response(await catalogue.describe(), headers={"Cache-Control": "no-store"})

    policy = AccessPolicy(config)

    async def explain_link(request: web.Request) -> web.Response:
        link = request.query.get("url", "").strip()
        if not link:
            return web.json_response({"error": "give the link to explain: /explain?url=..."}, status=400,
                                     headers={"Cache-Control": "no-store"})
        explanation = explain(link, config, policy, base_url=f"{request.scheme}://{request.host}",
                              client=request.remote, forwarded_for=request.headers.get("X-Forwarded-For"))
        return web.json_response(explanation.as_json(), headers={"Cache-Control": "no-store"})

    app.router.add_get("/", index)
    app.router.add_get("/console/api/entries", entries)
    app.router.add_get("/explain", explain_link)
    app.router.add_static("/console/static/", STATIC, append_version=False)


class Catalogue:
    """The entries of the origin: a local root is listed; an http origin's come from `[console] entries_file`."""

    def __init__(self, config: Config, sources: Sources) -> None:
        self.config = config
        self.sources = sources

    def refs(self) -> list[EntryRef]:
        if self.config.origin.kind == "local":
            root = self.config.origin.root
            found = []
            for partner in sorted(root.iterdir(), key=lambda path: path.name):
                if partner.is_dir() and partner.name.lstrip("-").isdigit():
                    found += [EntryRef(int(partner.name), entry.name) for entry in sorted(partner.iterdir())
                              if entry.is_dir() and ID_PATTERN.match(entry.name)]
            return found
        listing = self.config.console.entries_file
        if listing is None:
            return []
        found = []
        for line in listing.read_text(encoding="utf-8").splitlines():
            partner, _, entry = line.strip().partition("/")
            if partner.lstrip("-").isdigit() and ID_PATTERN.match(entry):
                found.append(EntryRef(int(partner), entry))
        return found

    async def describe(self) -> dict:
        refs = await asyncio.to_thread(self.refs)
        described = await asyncio.gather(*(self._entry(ref) for ref in refs))
        partners: dict[int, list[dict]] = {}
        for ref, entry in zip(refs, described):
            partners.setdefault(ref.partner_id, []).append(entry)
        return {"partners": [{"partner_id": partner, "requires_ks": self.config.partner(partner).ks_required_for,
                              "entries": entries} for partner, entries in partners.items()]}

    async def _entry(self, ref: EntryRef) -> dict:
        entry = {"partner_id": ref.partner_id, "entry_id": ref.entry_id}
        try:
            source = await self.sources.get(ref)
        except MediaProxyError as error:
            return {**entry, "kind": "error", "error": error.message}
        media, original = source.media, source.original
        entry.update(name=original.manifest.name or ref.entry_id, kind=str(media.kind), mime=media.mime_type,
                     bytes=original.size, width=media.width, height=media.height,
                     duration=round(media.duration, 3), flavors=self._flavors(ref, original.manifest.flavors))
        if media.kind is MediaKind.VIDEO:
            try:
                info = await self.sources.video_info(source)
                entry.update(width=info.width, height=info.height, duration=round(info.duration, 3))
            except MediaProxyError as error:
                entry["error"] = error.message
        return entry

    def _flavors(self, ref: EntryRef, listed) -> list[str]:
        flavors = set(listed)
        if self.config.origin.kind == "local":
            folder = self.config.origin.root / str(ref.partner_id) / ref.entry_id
            for path in folder.glob("flavor_*.*"):
                flavor = path.stem.removeprefix("flavor_")
                if ID_PATTERN.match(flavor):
                    flavors.add(flavor)
        return sorted(flavors)
