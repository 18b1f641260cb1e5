"""How the admin pages show times, durations and text: to the millisecond, in the site's
time zone, and errors as preformatted text rather than escaped JSON."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

EMPTY = "-"


def moment(value: datetime | None, zone: bool = False) -> str:
    """`2025-05-01 14:03:07.215` in the current time zone (with its name if `zone`)."""
    if value is None:
        return EMPTY
    local = timezone.localtime(value) if timezone.is_aware(value) else value
    text = local.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return f"{text} {local.tzname()}" if zone and local.tzname() else text


def moment_short(value: datetime | None) -> str:
    """`11-24 14:03:07.215` for a list column (no year), the whole time on hover."""
    if value is None:
        return EMPTY
    return format_html('<span title="{}">{}</span>', moment(value, zone=True), moment(value)[5:])


def breakable(name: str) -> SafeString:
    """An identifier that may wrap after its underscores (long channel names)."""
    return format_html_join(mark_safe("_<wbr>"), "{}", ((part,) for part in name.split("_")))


def parse_moment(value: Any) -> datetime | None:
    """A time from an ``errors`` entry (JSON: an ISO string), or None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def seconds(value: float) -> str:
    """A span for people: `850.2 ms`, `12.4 s`, `3 min 5 s`, `2 h 4 min`."""
    if value < 1:
        return f"{value * 1000:.1f} ms"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{int(value // 60)} min {int(value % 60)} s"
    return f"{int(value // 3600)} h {int(value % 3600 // 60)} min"


def relative(value: datetime, now: datetime) -> str:
    """`in 12.0 s` or `3 min 5 s ago`."""
    delta = (value - now).total_seconds()
    return f"in {seconds(delta)}" if delta >= 0 else f"{seconds(-delta)} ago"


def pre(text: str, css: str = "eventbus-pre") -> SafeString:
    """Text as it was written: line breaks kept, long lines wrapped, escaped once."""
    return format_html('<pre class="{}">{}</pre>', css, text)


def pretty_json(value: Any) -> SafeString:
    try:
        text = json.dumps(value, indent=2, sort_keys=True, default=str)
    except (ValueError, RecursionError) as exc:  # decoded near the recursion limit
        text = f"(not shown: Python cannot encode this payload: {exc})"
    return pre(text)


def first_line(text: str | None, limit: int) -> str:
    line = (text or "").strip().split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"
