"""Energy: each building and lighting group today, over the last 7 and 31 days, against the
same days a year before when the gateway has them; the waste ledger of the last 31 days; the
month's report (``reverbere report --month``) to download."""

import datetime as dt
from typing import Any

from aiohttp import web

from gateway import reports
from gateway.console import views
from gateway.console.web import N_, Page


async def energy_page(request: web.Request, console: Any) -> dict[str, Any]:
    s, now = console.settings, console.now()

    computed, assets = await console.energy.figures()
    ledger = await console.store.run(views.waste_ledger, s.detect, now - 31 * 86400)
    local = dt.datetime.fromtimestamp(now, console.tz)
    last = (local.replace(day=1) - dt.timedelta(days=1)).strftime("%Y-%m")
    return {
        "assets": assets,
        "computed": computed,
        "periods": views.PERIODS,
        "ledger": ledger,
        "waste_kwh": sum(e["waste_kwh"] or 0.0 for e in ledger),
        "waste_eur": sum(e["waste_eur"] or 0.0 for e in ledger)
        if any(e["waste_eur"] is not None for e in ledger)
        else None,
        "months": [local.strftime("%Y-%m"), last],
    }


async def energy_api(request: web.Request, console: Any) -> list[dict[str, Any]]:
    _, assets = await console.energy.figures()
    return [
        {
            "asset": a.asset,
            "kind": a.kind,
            "nodes": a.nodes,
            "kwh": a.kwh,
            "reference_kwh": a.reference,
        }
        for a in assets
    ]


async def report_download(request: web.Request, console: Any) -> dict[str, Any]:
    """GET /energy/report?month=2026-11[&format=csv]: the month's report, as the CLI writes it."""
    month = request.query.get("month", "")
    as_csv = request.query.get("format") == "csv"
    detect = console.settings.detect
    try:
        period = reports.Period.month(month, detect.timezone)
    except reports.ReportError as e:
        raise web.HTTPBadRequest(text=str(e)) from None

    def build(db: Any) -> str:
        report = reports.build(db, period, reports.Town.from_detect(detect))
        return reports.energy_csv(report) if as_csv else reports.to_html(report)

    body = await console.downloads.run(build)  # not the pages' thread: it takes seconds
    ext, ctype = ("csv", "text/csv") if as_csv else ("html", "text/html")
    raise web.HTTPOk(
        text=body,
        content_type=ctype,
        headers={"Content-Disposition": f'attachment; filename="rapport-{period.name}.{ext}"'},
    )


PAGES = [
    Page("/energy", "energy", "energy.html", energy_page, N_("Energy"), api=energy_api),
    Page("/energy/report", "energy-report", "error.html", report_download, ""),
]
ACTIONS: list = []
