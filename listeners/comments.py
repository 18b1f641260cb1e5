"""Comment created: email the post's author."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Subquery

import channels
from blog import mail
from blog.models import Post
from eventbus import Event, RowGone


def message_id(event: Event) -> str:
    """The same on every attempt for the same event, so receivers can drop a duplicate."""
    domain = settings.DEFAULT_FROM_EMAIL.rpartition("@")[2] or "localhost"
    return f"<eventbus.{event.channel}.{event.id}@{domain}>"


@channels.comment_created.on
def email_post_author(event: Event) -> None:
    comment_id, post_id, author_id, body = event.require("id", "post_id", "author_id", "body")
    commenter = get_user_model().objects.filter(pk=author_id)
    post = (
        Post.objects.select_related("author")
        .annotate(commenter_name=Subquery(commenter.values("username")[:1]))
        .filter(pk=post_id)
        .first()
    )  # one round trip: the post, its author and the commenter's name
    if post is None:
        raise RowGone(f"post {post_id} of comment {comment_id} no longer exists")
    if post.author_id == author_id or not post.author.email:
        return  # nobody needs an email about their own comment
    who = post.commenter_name or "someone"
    quoted = "\n".join(f"> {line}" for line in body.splitlines())
    message = mail.EmailMessage(
        subject=f'New comment on "{post.title}"',
        body=f'{who} commented on your post "{post.title}":\n\n{quoted}\n',
        to=[post.author.email],
        headers={"Message-ID": message_id(event), "X-Eventbus-Event": str(event.id)},
    )
    mail.send(message)
