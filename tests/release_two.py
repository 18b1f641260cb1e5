"""A channel that only a newer release knows: its declaration and handler.

Listener processes import it through EVENTBUS_LISTENER_MODULES to play the new release of
a rolling deploy; the test process never imports it, as an older release would not.
"""

from __future__ import annotations

from blog.models import Tag
from eventbus import Channel, Event

NAME = "release_two_shipped"

release_two_shipped = Channel(NAME, operations=())


@release_two_shipped.on
def record(event: Event) -> None:
    Tag.objects.create(name=f"release-two-{event.id}")
