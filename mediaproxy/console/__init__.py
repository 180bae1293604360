"""The test console: a page for trying media links (served at `/` when `[console] enabled = true`).

Plain HTML, CSS and JavaScript from the package (no build step, nothing from the network), plus JSON endpoints:
the entries the page can show, `/explain?url=...` (SPEC §9), how any media link is read, an entry's notification
state, and a purge of an entry (for a partner whose admin secret the server holds: what an operator could do with
an admin KS and POST /admin/purge).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..access import AccessPolicy
from ..config import Config
from ..errors import Forbidden, MediaProxyError
from ..explain import explain
from ..media.probe import MediaKind
from ..origins.base import ListedEntry, Origin
from ..purge import Purges
from ..refs import ID_PATTERN, EntryRef
from ..services.sources import Sources

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"


def add_console(app: web.Application, config: Config, origin: Origin, sources: Sources, purges: Purges,
                policy: AccessPolicy) -> None:
    catalogue = Catalogue(config, origin, sources, policy)

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def entries(request: web.Request) -> web.Response:
        await purges.catch_up()
        viewer = Viewer(request.query.get("ks") or request.headers.get("X-Kaltura-Ks"), request.path, request.remote,
                        request.headers.get("X-Forwarded-For"))
        return web.json_response(await catalogue.describe(viewer), headers={"Cache-Control": "no-store"})

    async def entry_state(request: web.Request) -> web.Response:
        """The entry's last notification (type, when), whether it is withheld, whether the console can purge it."""
        ref = _entry_of(request.query)
        await purges.catch_up()
        notice = await purges.notice(ref)
        return web.json_response({
            "partner_id": ref.partner_id, "entry_id": ref.entry_id,
            "last_notification": None if notice is None else {"type": notice[0], "at": notice[1]},
            "withheld": purges.withheld.get(ref), "can_purge": bool(config.partner(ref.partner_id).admin_secrets),
        }, headers={"Cache-Control": "no-store"})

    async def purge(request: web.Request) -> web.Response:
        # JSON only: a page of another site cannot post JSON here without a CORS preflight, which is not granted
        if request.content_type != "application/json" or request.headers.get("Sec-Fetch-Site") == "cross-site":
            raise web.HTTPForbidden(reason="the console's purge takes JSON from the console's own page")
        try:
            asked = await request.json()
        except ValueError:
            asked = None
        ref = _entry_of(asked if isinstance(asked, dict) else {})
        if not config.partner(ref.partner_id).admin_secrets:
            raise web.HTTPForbidden(reason=f"no admin secret of partner {ref.partner_id} is configured")
        outcome = await purges.purge(ref, withhold=None, source="console")
        assert outcome is not None
        return web.json_response({**outcome.as_json(), "words": outcome.words()}, headers={"Cache-Control": "no-store"})

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
    app.router.add_get("/console/api/entry", entry_state)
    app.router.add_post("/console/api/purge", purge)
    app.router.add_get("/explain", explain_link)
    app.router.add_static("/console/static/", STATIC, append_version=False)


def _entry_of(fields) -> EntryRef:
    partner, entry_id = str(fields.get("partner_id", "")), str(fields.get("entry_id", ""))
    if not partner.lstrip("-").isdigit() or len(partner) > 12 or not ID_PATTERN.match(entry_id):
        raise web.HTTPBadRequest(reason="give partner_id (an integer) and entry_id (an entry id)")
    return EntryRef(int(partner), entry_id)


@dataclass(frozen=True)
class Viewer:
    """Who asks for the listing: their KS (if any) and where they are, as the access check reads them."""

    ks: str | None
    path: str
    remote: str | None
    forwarded_for: str | None


class Catalogue:
    """The entries the origin can list (a local root's folders; an http origin's `[console] entries_file`), each
    shown only to who may see its thumbnail (a partner whose thumbnails need a KS: with a KS that grants it)."""

    def __init__(self, config: Config, origin: Origin, sources: Sources, policy: AccessPolicy) -> None:
        self.config = config
        self.origin = origin
        self.sources = sources
        self.policy = policy

    async def describe(self, viewer: Viewer) -> dict:
        listed = await self.origin.list_entries()
        visible = [entry for entry in listed if self._may_see(entry.ref, viewer)]
        described = await asyncio.gather(*(self._entry(entry) for entry in visible))
        partners: dict[int, list[dict]] = {entry.ref.partner_id: [] for entry in listed}
        for entry, description in zip(visible, described):
            partners[entry.ref.partner_id].append(description)
        hidden = {partner: sum(entry.ref.partner_id == partner for entry in listed) - len(entries)
                  for partner, entries in partners.items()}
        return {"partners": [{"partner_id": partner, "requires_ks": self.config.partner(partner).ks_required_for,
                              "can_purge": bool(self.config.partner(partner).admin_secrets), "entries": entries,
                              "hidden": hidden[partner]}
                             for partner, entries in partners.items()]}

    def _may_see(self, ref: EntryRef, viewer: Viewer) -> bool:
        try:
            self.policy.check("thumbnail", ref.partner_id, ref.entry_id, viewer.ks, path=viewer.path,
                              remote=viewer.remote, forwarded_for=viewer.forwarded_for)
        except Forbidden:
            return False
        return True

    async def _entry(self, listed: ListedEntry) -> dict:
        ref = listed.ref
        entry = {"partner_id": ref.partner_id, "entry_id": ref.entry_id}
        try:
            source = await self.sources.get(ref)
        except MediaProxyError as error:
            return {**entry, "kind": "error", "error": error.message}
        media, file = source.media, source.file
        entry.update(name=file.manifest.name or ref.entry_id, kind=str(media.kind), mime=media.mime_type,
                     bytes=file.size, width=media.width, height=media.height, duration=round(media.duration, 3),
                     flavors=sorted({*listed.flavors, *file.manifest.flavors}))
        if media.kind is MediaKind.VIDEO:
            try:
                info = await self.sources.video_info(source)
                entry.update(width=info.width, height=info.height, duration=round(info.duration, 3))
            except MediaProxyError as error:
                entry["error"] = error.message
        return entry
