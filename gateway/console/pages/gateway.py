"""Gateway: what the Pi administrator checks: the sync (backlog, last success, the day's byte
budget), the storage (database, free disk, retention), uptime, version and the clock."""

from typing import Any

from aiohttp import web

from gateway import __version__
from gateway.console import views
from gateway.console.web import N_, Page


async def gateway_page(request: web.Request, console: Any) -> dict[str, Any]:
    s, now = console.settings, console.now()

    def read(db: Any) -> tuple[dict, dict | None]:
        sync = s.sync_status(db) if s.sync_status is not None else None
        return views.storage(db, s.database), sync

    storage, sync = await console.store.run(read)
    return {
        "storage": storage,
        "sync": sync,
        "retention_days": s.retention_days,
        "uptime": now - s.started,
        "started": s.started,
        "version": __version__,
        "clock": s.clock_state() if s.clock_state is not None else None,
    }


async def gateway_api(request: web.Request, console: Any) -> dict[str, Any]:
    context = await gateway_page(request, console)
    return context


PAGES = [Page("/gateway", "gateway", "gateway.html", gateway_page, N_("Gateway"), api=gateway_api)]
ACTIONS: list = []
