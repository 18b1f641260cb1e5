"""The reference site: posts with tags and categories, and comments on them.

The M2M through tables are declared explicitly so that their channel triggers can sit in
``Meta.triggers`` and be installed by migrations like everything else.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models.functions import Now

import channels
from eventbus.compat import db_default


class Tag(models.Model):
    name = models.CharField(max_length=100, unique=True)
    post_count = models.IntegerField(**db_default(0, default=0))

    def __str__(self) -> str:
        return self.name


class Category(models.Model):
    name = models.CharField(max_length=100, unique=True)
    post_count = models.IntegerField(**db_default(0, default=0))

    class Meta:
        verbose_name_plural = "categories"

    def __str__(self) -> str:
        return self.name


class Post(models.Model):
    title = models.CharField(max_length=200)
    body = models.TextField()
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="posts"
    )
    tags = models.ManyToManyField(Tag, through="PostTag", related_name="posts", blank=True)
    categories = models.ManyToManyField(
        Category, through="PostCategory", related_name="posts", blank=True
    )
    created_at = models.DateTimeField(**db_default(Now()))
    # Filled by post-processing (listeners/posts.py).
    word_count = models.IntegerField(null=True, blank=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    # Where to POST the outcome of post-processing (set by the webhook API).
    callback_url = models.URLField(max_length=500, null=True, blank=True)

    class Meta:
        triggers = [*channels.post_created.triggers(), *channels.post_edited.triggers()]

    def __str__(self) -> str:
        return self.title


class PostTag(models.Model):
    post = models.ForeignKey(Post, on_delete=models.CASCADE)
    tag = models.ForeignKey(Tag, on_delete=models.CASCADE)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["post", "tag"], name="unique_post_tag")]
        triggers = channels.post_tags_changed.triggers()


class PostCategory(models.Model):
    post = models.ForeignKey(Post, on_delete=models.CASCADE)
    category = models.ForeignKey(Category, on_delete=models.CASCADE)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["post", "category"], name="unique_post_category")
        ]
        triggers = channels.post_categories_changed.triggers()


class Comment(models.Model):
    post = models.ForeignKey(Post, on_delete=models.CASCADE, related_name="comments")
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="comments"
    )
    body = models.TextField()
    created_at = models.DateTimeField(**db_default(Now()))

    class Meta:
        triggers = channels.comment_created.triggers()

    def __str__(self) -> str:
        return f"comment {self.pk} on {self.post_id}"


class SeenSignature(models.Model):
    """Signed API requests already accepted, kept for the signature tolerance: a replay
    of one is refused (``blog.signing``)."""

    signature = models.CharField(max_length=64, primary_key=True)  # sha256 of the request
    seen_at = models.DateTimeField(db_index=True)


class IdempotencyKey(models.Model):
    """A sender's `Idempotency-Key` and the first response to it: a retry with the same
    key and body gets that response again and writes nothing (``blog.api``)."""

    key = models.CharField(max_length=255, primary_key=True)
    request_hash = models.CharField(max_length=64)  # sha256 of the body
    status = models.IntegerField(null=True)
    response = models.JSONField(null=True)
    created_at = models.DateTimeField(db_index=True)
