"""HMAC signatures for the webhook API and for the callbacks it sends."""

from __future__ import annotations

import hashlib
import hmac

from django.conf import settings

HEADER = "X-Eventbus-Signature"


def sign(method: str, path: str, body: bytes, secret: str | None = None) -> str:
    """`sha256=<hex>` of HMAC-SHA256 over "METHOD\\npath\\nbody"."""
    key = (secret or settings.WEBHOOK_SECRET).encode()
    message = method.upper().encode() + b"\n" + path.encode() + b"\n" + body
    return "sha256=" + hmac.new(key, message, hashlib.sha256).hexdigest()


def valid(signature: str | None, method: str, path: str, body: bytes) -> bool:
    return bool(signature) and hmac.compare_digest(signature or "", sign(method, path, body))
