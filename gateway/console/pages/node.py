"""Node: one node's channels over the last day, week and month (SVG drawn here), its events
with their reasons and waste, its configuration as the gateway sends it, and what its lighting
schedule expects tonight. The fleet's and the events' lines link here."""

import datetime as dt
from typing import Any

from aiohttp import web

from gateway.console import views
from gateway.console.chart import line_chart
from gateway.console.i18n import Formatter
from gateway.console.web import LANG, N_, Page
from gateway.pipeline.detect.lighting import UnknownGroup, group_named, tonight

SPAN_TITLES = {"day": N_("last 24 hours"), "week": N_("last 7 days"), "month": N_("last 31 days")}
GAPS = {"day": 3 * 3600.0, "week": 2 * 3600.0, "month": 2 * 3600.0}  # breaks in a line


def _span(request: web.Request) -> str:
    span = request.query.get("span", "day")
    return span if span in views.SPANS else "day"


async def node_page(request: web.Request, console: Any) -> dict[str, Any]:
    node, span, now = request.match_info["node"], _span(request), console.now()
    s = console.settings

    def read(db: Any) -> tuple[views.NodeView, dict[str, list[tuple[float, float]]]]:
        view = views.node_view(db, s.detect, s.node_config, node)
        return view, {ch: views.series(db, node, ch, span, now) for ch in view.channels}

    try:
        view, data = await console.store.run(read)
    except views.UnknownNode:
        raise web.HTTPNotFound() from None
    fmt = Formatter(request[LANG], console.tz)
    start = now - views.SPANS[span]
    tick = "HH:mm" if span == "day" else "dd/MM"
    charts = [
        (
            ch,
            line_chart(
                points,
                start,
                now,
                GAPS[span],
                lambda t: fmt.local(t, tick),
                lambda v: fmt.number(v, 1),
                f"{node} {ch}",
            ),
            len(points),
        )
        for ch, points in data.items()
    ]
    try:
        plan = tonight(group_named(s.detect, node=node), s.detect, now)
    except UnknownGroup:
        plan = None
    return {
        "node": view,
        "span": span,
        "spans": list(views.SPANS),
        "span_titles": SPAN_TITLES,
        "charts": charts,
        "plan": [(p.start.timestamp(), p.end.timestamp(), p.level, p.reason) for p in plan]
        if plan
        else None,
        "config": sorted(view.config.items()),
        "today": dt.datetime.fromtimestamp(now, console.tz).date(),
    }


PAGES = [Page("/nodes/{node}", "node", "node.html", node_page, "")]
ACTIONS: list = []
