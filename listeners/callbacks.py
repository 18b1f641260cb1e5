"""Post processing finished: POST the outcome to the client's callback_url.

Itself an event: a receiver that is down or answers 5xx makes it fail and retry with
backoff, and its failures are visible like any event's. The URL is the client's, so it is
called through `eventbus.integrations.outbound`: no private address (unless
``CALLBACK_ALLOW_PRIVATE``), no redirect, a small answer, one deadline.
"""

from __future__ import annotations

import json
import urllib.parse

from django.conf import settings

import channels
from blog import signing
from eventbus import Event, GiveUp, RetryLater
from eventbus.integrations import outbound


@channels.post_processing_finished.on
def post_outcome(event: Event) -> None:
    (url,) = event.require("url")
    outcome = {k: v for k, v in event.row.items() if k != "url"}
    body = json.dumps({**outcome, "event_id": event.id}).encode()
    path = urllib.parse.urlsplit(url).path or "/"
    headers = {
        "Content-Type": "application/json",
        signing.HEADER: signing.sign("POST", path, body),
        "X-Eventbus-Event": str(event.id),
    }
    try:
        response = outbound.post(
            url,
            body,
            headers,
            allow_private=getattr(settings, "CALLBACK_ALLOW_PRIVATE", False),
            max_response=getattr(settings, "CALLBACK_MAX_RESPONSE", outbound.MAX_RESPONSE),
            deadline=getattr(settings, "CALLBACK_DEADLINE", outbound.DEADLINE),
        )
    except outbound.Refused as exc:
        raise GiveUp(f"callback {url} refused: {exc}") from exc
    except outbound.OutboundError as exc:
        raise RetryLater(f"callback {url} failed: {exc}") from exc
    code = response.status
    if response.redirect is not None:
        where = response.redirect or "nowhere"
        raise GiveUp(f"callback {url} answered HTTP {code}, a redirect to {where}: not followed")
    if 400 <= code < 500 and code not in (408, 429):
        raise GiveUp(f"callback {url} refused the outcome: HTTP {code}")
    if code >= 400:
        raise RetryLater(f"callback {url} answered HTTP {code}")
