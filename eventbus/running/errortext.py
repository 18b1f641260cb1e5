"""Error text that can always be stored: whatever an exception holds, this never raises.

PostgreSQL ``text`` and ``jsonb`` refuse NUL bytes, and exception messages can hold them
(``http.client`` puts a server's status line, bytes and all, into ``BadStatusLine``).
One such message used to fail the whole batch's ``UPDATE`` and crash-loop the worker.
"""

from __future__ import annotations

import traceback

MAX_ERROR_CHARS = 8000
REPLACEMENT = "\ufffd"


def clean(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` with NULs and unencodable characters (lone surrogates) replaced, capped."""
    text = text[:limit].replace("\x00", REPLACEMENT)
    return text.encode("utf-8", "replace").decode("utf-8")


def describe(exc: BaseException) -> str:
    """The error text stored on a failed event: the message first, then where it came from."""
    try:
        summary = f"{type(exc).__name__}: {exc}".strip()
    except Exception:  # a __str__ that raises must not take the worker with it
        summary = f"{type(exc).__name__}: <message could not be rendered>"
    try:
        frames = "".join(traceback.format_tb(exc.__traceback__, limit=-5))
    except Exception:
        frames = ""
    return clean(f"{summary}\n{frames}")


def first_line(text: str | None) -> str:
    return (text or "").splitlines()[0] if text else ""
