"""Small server-rendered SVG charts for the dashboard: no JavaScript, no dependency.

A page of three series over an hour or a day needs bars and a line, a scale and a time
on each point's tooltip; a charting library would add a bundle, a build step or a CDN
for that. Colours are the admin's own CSS variables, so dark mode follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 600, 130
TOP, BOTTOM = 18, 16  # room for the scale above, the times below


@dataclass(frozen=True)
class Chart:
    title: str
    svg: SafeString


def bars(
    title: str, values: Sequence[int], start: datetime, step: int, css: str = "eb-bar"
) -> Chart:
    """One bar per point (`step` minutes each, from `start`)."""
    top = max(values, default=0)
    width = WIDTH / max(len(values), 1)
    gap = 1.0 if width > 3 else 0.0
    shapes = []
    for index, value in enumerate(values):
        if not value:
            continue
        height = (HEIGHT - TOP - BOTTOM) * value / top
        shapes.append(
            f'<rect class="{css}" x="{index * width:.1f}" y="{HEIGHT - BOTTOM - height:.1f}" '
            f'width="{max(width - gap, 0.5):.1f}" height="{height:.1f}">'
            f"<title>{_when(start, index, step)}: {value:,}</title></rect>"
        )
    return Chart(title, _svg(title, top, start, step, len(values), shapes))


def line(title: str, values: Sequence[int | None], start: datetime, step: int) -> Chart:
    """A line through the points that have a value; a gap where none was sampled."""
    top = max((v for v in values if v is not None), default=0)
    width = WIDTH / max(len(values), 1)
    runs: list[list[str]] = [[]]
    shapes = []
    for index, value in enumerate(values):
        if value is None:
            runs.append([])
            continue
        x = index * width + width / 2
        y = HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * (value / top if top else 0)
        runs[-1].append(f"{x:.1f},{y:.1f}")
        shapes.append(
            f'<circle class="eb-point" cx="{x:.1f}" cy="{y:.1f}" r="{min(width / 2, 2.5):.1f}">'
            f"<title>{_when(start, index, step)}: {value:,}</title></circle>"
        )
    lines = [f'<polyline class="eb-line" points="{" ".join(run)}"/>' for run in runs if run]
    return Chart(title, _svg(title, top, start, step, len(values), lines + shapes))


def _svg(title: str, top: int, start: datetime, step: int, points: int, shapes: list[str]) -> str:
    end = _when(start, points - 1, step) if points else ""
    label = escape(title)
    # Safe: every piece is a number, a formatted time, or escaped.
    return mark_safe(
        f'<svg class="eb-chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{label}" xmlns="http://www.w3.org/2000/svg">'
        f'<line class="eb-axis" x1="0" y1="{HEIGHT - BOTTOM}" x2="{WIDTH}" '
        f'y2="{HEIGHT - BOTTOM}"/>'
        f'<text class="eb-scale" x="2" y="12">max {top:,}</text>'
        f'<text class="eb-time" x="2" y="{HEIGHT - 3}">{_when(start, 0, step)}</text>'
        f'<text class="eb-time" x="{WIDTH - 2}" y="{HEIGHT - 3}" text-anchor="end">{end}</text>'
        + "".join(shapes)
        + "</svg>"
    )


def _when(start: datetime, index: int, step: int) -> str:
    """A point's start in the current time zone: 14:05 (a day's points: with the date)."""
    moment = start + timedelta(minutes=index * step)
    if timezone.is_aware(moment):
        moment = timezone.localtime(moment)
    return moment.strftime("%H:%M" if step == 1 else "%d %b %H:%M")
