"""Comment created: email the post's author."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Subquery

import channels
from blog import mail
from blog.models import Comment, Post
from eventbus import Event, RowGone, prefetch


def message_id(event: Event) -> str:
    """The same on every attempt for the same event, so receivers can drop a duplicate."""
    domain = settings.DEFAULT_FROM_EMAIL.rpartition("@")[2] or "localhost"
    return f"<eventbus.{event.channel}.{event.id}@{domain}>"


@prefetch
def comments(events: list[Event]) -> dict[int, Comment]:
    """The batch's comments with their posts, the posts' authors and the commenters: one
    query per claimed batch instead of one per event."""
    ids = {event.new["id"] for event in events if event.new}
    return Comment.objects.select_related("post__author", "author").in_bulk(ids)


def post_and_commenter(post_id: int, author_id: int, comment_id: int, event: Event) -> tuple:
    """(post with its author, commenter's name), from the batch's read when it has them."""
    comment = comments(event).get(comment_id)
    if comment is not None and comment.post_id == post_id:
        return comment.post, comment.author.username
    # The comment was deleted (or moved) since: read what the event names, in one query.
    commenter = get_user_model().objects.filter(pk=author_id)
    post = (
        Post.objects.select_related("author")
        .annotate(commenter_name=Subquery(commenter.values("username")[:1]))
        .filter(pk=post_id)
        .first()
    )
    return post, post.commenter_name if post is not None else None


@channels.comment_created.on
def email_post_author(event: Event) -> None:
    comment_id, post_id, author_id, body = event.require("id", "post_id", "author_id", "body")
    post, who = post_and_commenter(post_id, author_id, comment_id, event)
    if post is None:
        raise RowGone(f"post {post_id} of comment {comment_id} no longer exists")
    if post.author_id == author_id or not post.author.email:
        return  # nobody needs an email about their own comment
    quoted = "\n".join(f"> {line}" for line in body.splitlines())
    message = mail.EmailMessage(
        subject=f'New comment on "{post.title}"',
        body=f'{who or "someone"} commented on your post "{post.title}":\n\n{quoted}\n',
        to=[post.author.email],
        headers={"Message-ID": message_id(event), "X-Eventbus-Event": str(event.id)},
    )
    mail.send(message)
