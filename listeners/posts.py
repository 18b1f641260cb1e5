"""Post created or its body edited: compute the fields that post-processing fills."""

from __future__ import annotations

from django.utils import timezone

import channels
from blog.models import Post
from eventbus import Event
from listeners.errors import RowGone

PRIMARY = "default"


def word_count(text: str) -> int:
    return len(text.split())


@channels.post_created.on
@channels.post_edited.on
def process_post(event: Event) -> None:
    post_id = event.row["id"]
    # Read the body as it is now (the edit may have been followed by another).
    body = Post.objects.using(PRIMARY).filter(pk=post_id).values_list("body", flat=True).first()
    if body is None:
        raise RowGone(f"post {post_id} no longer exists")
    Post.objects.using(PRIMARY).filter(pk=post_id).update(
        word_count=word_count(body), processed_at=timezone.now()
    )
