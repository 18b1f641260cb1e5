"""Post tags or categories changed: keep each tag's and category's post_count.

Increments, not recounts: a lost or doubled event shows as a wrong count. The handler takes
a whole batch, nets the deltas per tag, and updates tags in id order: every worker locks
counter rows in the same order, so concurrent batches queue instead of deadlocking.
"""

from __future__ import annotations

from collections import Counter

from django.db.models import F, Model

import channels
from blog.models import Category, Tag
from eventbus import DELETE, INSERT, Event


def net_deltas(events: list[Event], column: str) -> Counter[int]:
    deltas: Counter[int] = Counter()
    for event in events:
        (pk,) = event.require(column)
        deltas[pk] += {INSERT: 1, DELETE: -1}[event.operation]
    return deltas


def _apply(model: type[Model], deltas: Counter[int]) -> None:
    manager = model._default_manager
    for pk in sorted(deltas):
        if deltas[pk]:
            # A tag deleted since simply has no count to keep: zero rows updated is correct.
            manager.filter(pk=pk).update(post_count=F("post_count") + deltas[pk])


@channels.post_tags_changed.on_batch
def count_tag_links(events: list[Event]) -> None:
    _apply(Tag, net_deltas(events, "tag_id"))


@channels.post_categories_changed.on_batch
def count_category_links(events: list[Event]) -> None:
    _apply(Category, net_deltas(events, "category_id"))
