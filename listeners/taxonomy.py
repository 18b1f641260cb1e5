"""Post tags or categories changed: keep each tag's and category's post_count.

Increments, not recounts: a lost or doubled event shows as a wrong count.
"""

from __future__ import annotations

from django.db.models import F, Model

import channels
from blog.models import Category, Tag
from eventbus import DELETE, INSERT, Event

PRIMARY = "default"


def _adjust(model: type[Model], column: str, event: Event) -> None:
    delta = {INSERT: 1, DELETE: -1}[event.operation]
    # A tag deleted since simply has no count to keep: zero rows updated is correct.
    model._default_manager.using(PRIMARY).filter(pk=event.row[column]).update(
        post_count=F("post_count") + delta
    )


@channels.post_tags_changed.on
def count_tag_links(event: Event) -> None:
    _adjust(Tag, "tag_id", event)


@channels.post_categories_changed.on
def count_category_links(event: Event) -> None:
    _adjust(Category, "category_id", event)
