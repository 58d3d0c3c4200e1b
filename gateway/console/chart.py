"""Small line charts as SVG, drawn on the gateway: no script, no font, nothing from elsewhere.

The console's pages put the SVG straight into the HTML (the Content-Security-Policy allows no
inline style, so colours are presentation attributes and classes of console.css). A gap in
the data (an hour with no summary, a node silent) breaks the line instead of bridging it: a
straight line over a missing night would say the lamp burned all along.
"""

import html
from collections.abc import Callable, Sequence

WIDTH, HEIGHT = 640, 160
LEFT, RIGHT, TOP, BOTTOM = 48, 8, 8, 22  # margins for the axes' labels


def line_chart(
    points: Sequence[tuple[float, float]],
    start: float,
    end: float,
    gap: float,
    label: Callable[[float], str],
    value_label: Callable[[float], str],
    title: str,
    ticks: int = 4,
) -> str:
    """An SVG line of ``points`` (Unix time, value) over ``[start, end]``; two points further
    apart than ``gap`` seconds are not joined. ``label`` writes a time on the x axis (the
    town's), ``value_label`` a value on the y axis; ``title`` is read by screen readers."""
    w, h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    values = [v for _, v in points]
    low = min([0.0, *values])
    high = max([*values, low + 1e-9])
    span_t = max(end - start, 1.0)

    def x(t: float) -> float:
        return LEFT + (t - start) / span_t * w

    def y(v: float) -> float:
        return TOP + h - (v - low) / (high - low) * h

    runs: list[list[str]] = []
    last: float | None = None
    for t, v in sorted(points):
        if last is None or t - last > gap:
            runs.append([])
        runs[-1].append(f"{x(t):.1f},{y(v):.1f}")
        last = t
    out = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}"'
        f' role="img" aria-label="{html.escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{html.escape(title)}</title>",
        f'<rect x="{LEFT}" y="{TOP}" width="{w}" height="{h}" fill="#fff" stroke="#ccc"/>',
    ]
    for v in (low, (low + high) / 2, high):
        out.append(
            f'<text x="{LEFT - 4}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="10"'
            f' fill="#555">{html.escape(value_label(v))}</text>'
        )
    for i in range(ticks + 1):
        t = start + span_t * i / ticks
        anchor = "start" if i == 0 else "end" if i == ticks else "middle"
        out.append(
            f'<text x="{x(t):.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}" font-size="10"'
            f' fill="#555">{html.escape(label(t))}</text>'
        )
    for run in runs:
        if len(run) == 1:
            cx, cy = run[0].split(",")
            out.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="#0072B2"/>')
        else:
            out.append(
                f'<polyline points="{" ".join(run)}" fill="none" stroke="#0072B2"'
                ' stroke-width="1.5"/>'
            )
    out.append("</svg>")
    return "".join(out)
