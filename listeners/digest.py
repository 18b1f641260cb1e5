"""A chain in the reference site: collect the latest posts, then email them as a digest.

The steps must run in order, and the email must never go out when collecting died; a
retry must not collect again once it succeeded. The end callback reports the outcome
either way (``POST /api/digests/`` answers with the collection's status URL).
"""

from __future__ import annotations

import logging
from typing import Any

import channels
from blog import mail
from blog.models import Post
from eventbus import ChainEnd, Event, GiveUp
from listeners.comments import message_id

log = logging.getLogger("blog.digest")
MAX_POSTS = 20


@channels.post_digest.step
def collect_posts(data: dict[str, Any], event: Event) -> dict[str, Any]:
    """The newest posts, as titles: what the email will say, fixed once collected."""
    posts = Post.objects.order_by("-id").values("id", "title")[:MAX_POSTS]
    if not posts:
        raise GiveUp("no posts to send")
    return {"posts": [{"id": p["id"], "title": p["title"]} for p in posts]}


@channels.post_digest.step
def send_digest(data: dict[str, Any], event: Event) -> dict[str, Any]:
    """One email to every address (at least once: a stable Message-ID per event)."""
    lines = [f"- {p['title']}" for p in data["posts"]]
    message = mail.EmailMessage(
        subject=f"{len(lines)} new posts",
        body="\n".join(lines),
        to=data["addresses"],
        headers={"Message-ID": message_id(event), "X-Eventbus-Event": str(event.id)},
    )
    mail.send(message)
    return {"sent_to": len(data["addresses"])}


@channels.post_digest.on_end
def report_digest(end: ChainEnd) -> None:
    """Always runs: the operator's line either way (the status URL has the rest)."""
    if end.state == "done":
        posts, sent_to = len(end.data["posts"]), end.data["sent_to"]
        log.info("digest of %d posts sent to %d address(es)", posts, sent_to)
    else:
        log.warning("digest stopped at %s: %s", end.step, end.error)
