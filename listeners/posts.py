"""Post created or its body edited: compute the fields that post-processing fills."""

from __future__ import annotations

from django.utils import timezone

import channels
from blog.models import Post
from eventbus import Event, RowGone


def word_count(text: str) -> int:
    return len(text.split())


@channels.post_created.on
def process_new_post(event: Event) -> None:
    (post_id,) = event.require("id")
    # A 1 MB body need not travel in the event as well. Handlers read the primary
    # (eventbus.integrations.routing), so the row is there, as the writer committed it.
    body = Post.objects.filter(pk=post_id).values_list("body", flat=True).first()
    if body is None:
        raise RowGone(f"post {post_id} no longer exists")
    _store(post_id, body)
    if url := event.row.get("callback_url"):
        channels.post_processing_finished.publish(
            {"post_id": post_id, "state": "done", "url": url, "word_count": word_count(body)},
            key=post_id,
        )


@channels.post_created.on_dead
def report_dead_processing(event: Event, error: str) -> None:
    """Processing gave up: the client still hears about it, with the reason."""
    if url := event.row.get("callback_url"):
        channels.post_processing_finished.publish(
            {
                "post_id": event.row.get("id"),
                "state": "dead",
                "url": url,
                "error": error.splitlines()[0],
            },
            key=event.row.get("id"),
        )


@channels.post_edited.on
def process_edit(event: Event) -> None:
    """post_edited is ordered by post: edits apply one at a time, in commit order, so the
    count taken from each edit's own body ends at the last edit's."""
    post_id, body = event.require("id", "body")
    if not _store(post_id, body):
        raise RowGone(f"post {post_id} no longer exists")


def _store(post_id: int, body: str) -> int:
    return Post.objects.filter(pk=post_id).update(
        word_count=word_count(body), processed_at=timezone.now()
    )
