"""Signatures for the webhook API and for the callbacks it sends: timestamped, replay-proof.

The header (the Stripe/Svix style)::

    X-Eventbus-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>

The HMAC is over ``"<t>\\n<METHOD>\\n<path>\\n"`` followed by the body, with a secret
both sides hold. A request is refused (401, with the reason) when the header is missing
or malformed, when ``t`` is more than ``WEBHOOK_TOLERANCE`` seconds (300) from now, when
no ``v1`` matches any accepted secret, or when the same signed write (a POST) was
already accepted within the tolerance (a replay). Several ``v1`` values may be sent,
and several secrets accepted (``WEBHOOK_SECRET``, then ``WEBHOOK_PREVIOUS_SECRETS``),
which is how a secret is rotated without a moment of refusals.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

HEADER = "X-Eventbus-Signature"
_PART = re.compile(r"^(t|v1)=([0-9a-f]+)$")


class SignatureError(ValueError):
    """Why a request's signature is refused (the 401's message)."""


def secrets() -> list[str]:
    """The accepted secrets, the current one first; empty ones left out."""
    previous = getattr(settings, "WEBHOOK_PREVIOUS_SECRETS", ())
    return [s for s in (settings.WEBHOOK_SECRET, *previous) if s]


def _mac(secret: str, timestamp: int, method: str, path: str, body: bytes) -> str:
    message = f"{timestamp}\n{method.upper()}\n{path}\n".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(
    method: str,
    path: str,
    body: bytes,
    secret: str | None = None,
    timestamp: int | None = None,
) -> str:
    """The header value for a request, signed now with the current secret."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_mac(secret or secrets()[0], t, method, path, body)}"


def verify(header: str | None, method: str, path: str, body: bytes, once: bool = True) -> None:
    """Raise `SignatureError` unless `header` signs this request, now, and (`once`) for
    the first time. Reads (GET) are not `once`: a status URL is polled, and the same
    signed poll within a second is the same question."""
    if not header:
        raise SignatureError(f"missing {HEADER} header")
    if not header.isascii():
        raise SignatureError(f"malformed {HEADER}: not ASCII")
    timestamp, macs = None, []
    for part in header.replace(" ", "").split(","):
        match = _PART.match(part)
        if match is None:
            raise SignatureError(f"malformed {HEADER}: expected t=<unix>,v1=<hex>")
        if match.group(1) == "t":
            timestamp = int(match.group(2))
        else:
            macs.append(match.group(2))
    if timestamp is None or not macs:
        raise SignatureError(f"malformed {HEADER}: expected t=<unix>,v1=<hex>")
    tolerance = getattr(settings, "WEBHOOK_TOLERANCE", 300)
    if abs(time.time() - timestamp) > tolerance:
        raise SignatureError(
            f"stale {HEADER}: signed at {timestamp}, more than {tolerance} s from now"
        )
    expected = [_mac(s, timestamp, method, path, body) for s in secrets()]
    if not any(hmac.compare_digest(m, e) for m in macs for e in expected):
        raise SignatureError(f"bad {HEADER}: not the HMAC of this request")
    request = f"{timestamp}\n{method.upper()}\n{path}\n".encode() + body
    if once and not _first_use(hashlib.sha256(request).hexdigest(), tolerance):
        raise SignatureError(f"replayed {HEADER}: this signature was already used")


def valid(header: str | None, method: str, path: str, body: bytes) -> bool:
    """`verify` as a boolean (for callback receivers and tests)."""
    try:
        verify(header, method, path, body)
    except SignatureError:
        return False
    return True


def _first_use(signature: str, tolerance: float) -> bool:
    """Record a signed request (its digest: whichever of its ``v1`` values a replay
    keeps, it is the same request); False if it was already recorded. The table is
    shared by every process of the site, so a replay to another one is caught."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO blog_seensignature (signature, seen_at) VALUES (%s, now()) "
            "ON CONFLICT (signature) DO NOTHING RETURNING 1",
            [signature],
        )
        first = cursor.fetchone() is not None
        if first and int(time.time()) % 10 == 0:  # now and then: forget expired ones
            cursor.execute(
                "DELETE FROM blog_seensignature WHERE seen_at < %s",
                [timezone.now() - timedelta(seconds=2 * tolerance)],
            )
    return first
