"""Handlers of the catalog project's channels: they only need to exist for `listen`."""

from eventbus import Event
from tests.catalog.models import group_changed, product_tagged


@group_changed.on
def note_group(event: Event) -> None:
    """Nothing to do: the specs look at the events, not at their handling."""


@product_tagged.on
def note_tagging(event: Event) -> None:
    """Nothing to do: the specs look at the events, not at their handling."""
