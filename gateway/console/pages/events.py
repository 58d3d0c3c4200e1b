"""Events: the open and recent anomalies, newest first, with their reason, score and waste
(kWh, euros: when the detector gave them); a technician acknowledges one with a note, which
is kept with the event and synced with it."""

from typing import Any

from aiohttp import web

from gateway.console import store
from gateway.console.web import N_, USER, Action, Page

NOTE_MAX = 500  # characters of an acknowledgement's note


async def events_page(request: web.Request, console: Any) -> dict[str, Any]:
    return {"events": await console.store.run(store.events)}


async def events_api(request: web.Request, console: Any) -> list[dict[str, Any]]:
    return await console.store.run(store.events)


async def acknowledge(request: web.Request, console: Any, form: dict[str, str]) -> str:
    try:
        event_id = int(request.match_info["event"])
    except ValueError:
        raise web.HTTPNotFound() from None
    note = form.get("note", "").strip()[:NOTE_MAX]
    try:
        await console.store.run(store.acknowledge, event_id, request[USER], note, console.now())
    except store.EventNotFound:
        raise web.HTTPNotFound() from None
    return f"/events#event-{event_id}"


async def summaries_api(request: web.Request, console: Any) -> list[dict[str, Any]]:
    """GET /api/summaries?node=ID&hours=24: hourly summaries of the last hours (at most a
    year), one node or all."""
    try:
        hours = min(max(int(request.query.get("hours", "24")), 1), 24 * 366)
    except ValueError:
        raise web.HTTPBadRequest(text="hours: a whole number of hours") from None
    now = console.now()
    node = request.query.get("node") or None
    return await console.store.run(store.summaries, node, now - hours * 3600, now + 3600)


async def _no_page(request: web.Request, console: Any) -> dict[str, Any]:
    raise web.HTTPNotFound()


PAGES = [
    Page("/events", "events", "events.html", events_page, N_("Events"), api=events_api),
    # /api/summaries only, until the Energy page shows them
    Page("/summaries", "summaries", "error.html", _no_page, "", api=summaries_api),
]
ACTIONS = [Action("/events/{event}/acknowledge", "acknowledge", acknowledge, role="technician")]
