"""Post processing finished: POST the outcome to the client's callback_url.

Itself an event: a receiver that is down or answers 5xx makes it fail and retry with
backoff, and its failures are visible like any event's.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

import channels
from blog import signing
from eventbus import Event, GiveUp, RetryLater


@channels.post_processing_finished.on
def post_outcome(event: Event) -> None:
    (url,) = event.require("url")
    outcome = {k: v for k, v in event.row.items() if k != "url"}
    body = json.dumps({**outcome, "event_id": event.id}).encode()
    path = urllib.parse.urlsplit(url).path or "/"
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            signing.HEADER: signing.sign("POST", path, body),
            "X-Eventbus-Event": str(event.id),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500 and exc.code not in (408, 429):
            raise GiveUp(f"callback {url} refused the outcome: HTTP {exc.code}") from exc
        raise RetryLater(f"callback {url} answered HTTP {exc.code}") from exc
