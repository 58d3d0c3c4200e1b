"""Fleet: every node with its state, last reading, battery, signal, firmware, key age and
open events, and its update while a rollout exists; filters by group, kind, state and update
state; a technician retires a node here."""

import dataclasses
from typing import Any

from aiohttp import web

from gateway.console import store, updates
from gateway.console.web import N_, Action, Page
from gateway.ingest import registry
from gateway.ingest.registry import NodeNotFound


def _filter(request: web.Request) -> store.FleetFilter:
    q = request.query
    return store.FleetFilter(
        group=q.get("group", ""),
        kind=q.get("kind", "") if q.get("kind", "") in store.KINDS else "",
        state=q.get("state", "") if q.get("state", "") in store.STATES else "",
        update=q.get("update", "") if q.get("update", "") in updates.UPDATE_STATES else "",
    )


def _page_number(request: web.Request) -> int:
    """``?page=N`` (from 1); anything else is the first page."""
    raw = request.query.get("page", "1")
    return max(1, int(raw)) if raw.isdigit() else 1


async def _fleet(
    request: web.Request, console: Any, offset: int = 0, limit: int | None = None
) -> store.Fleet:
    s = console.settings
    return await console.store.run(
        store.fleet,
        s.detect,
        s.node_config,
        dict(s.heard()),
        console.now(),
        _filter(request),
        offset,
        limit,
    )


async def fleet_page(request: web.Request, console: Any) -> dict[str, Any]:
    """One page of ``gateway.console.store.FLEET_PAGE`` nodes: a whole town in one table
    took a second to read and draw on the gateway (issue 16); the filters narrow it further."""
    number = _page_number(request)
    fleet = await _fleet(request, console, (number - 1) * store.FLEET_PAGE, store.FLEET_PAGE)
    pages = max(1, -(-fleet.total // store.FLEET_PAGE))
    if number > pages:  # past the end (a node retired meanwhile): the last page
        number = pages
        fleet = await _fleet(request, console, (number - 1) * store.FLEET_PAGE, store.FLEET_PAGE)
    only = _filter(request)
    query = {k: v for k, v in dataclasses.asdict(only).items() if v}
    return {
        "nodes": fleet.nodes,
        "total": fleet.total,
        "first": fleet.offset + 1,
        "page_number": number,
        "pages": pages,
        "query": query,
        "groups": fleet.groups,
        "kinds": store.KINDS,
        "states": store.STATES,
        "rollout": fleet.rollout,
        "update_states": updates.UPDATE_STATES,
        "only": _filter(request),
        "notice": request.query.get("retired", ""),
    }


async def fleet_api(request: web.Request, console: Any) -> list[dict[str, Any]]:
    return [dataclasses.asdict(n) for n in (await _fleet(request, console)).nodes]


async def retire(request: web.Request, console: Any, form: dict[str, str]) -> Any:
    """Retire a node, once asked twice: the first POST answers a page that says what it
    means (the node can no longer send) with a button that confirms."""
    node = request.match_info["node"]
    if form.get("confirm") != "yes":
        return console.render(request, "node_retire.html", {"node": node})
    try:
        await console.store.run(store.retire_node, node)
    except NodeNotFound:
        raise web.HTTPNotFound() from None
    return "/?retired=" + node


async def add(request: web.Request, console: Any, form: dict[str, str]) -> web.StreamResponse:
    """Register a node and show its key once, on this answer only (never a page that can be
    reloaded or a URL that lands in a history): what ``reverbere node add`` prints."""
    node = form.get("node", "").strip()
    try:
        key = await console.store.run(registry.add_node, node)
    except registry.RegistryError as e:
        return console.error(request, 400, str(e))
    return console.render(request, "node_added.html", {"node": node, "key": key.hex()})


PAGES = [Page("/", "nodes", "fleet.html", fleet_page, N_("Fleet"), api=fleet_api)]
ACTIONS = [
    Action("/nodes/add", "node-add", add, role="technician"),
    Action("/nodes/{node}/retire", "retire", retire, role="technician"),
]
