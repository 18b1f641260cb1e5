"""eventbus: Postgres-native event processing for Django.

Public API::

    from eventbus import Channel, Event, INSERT, UPDATE, DELETE

    comment_created = Channel("comment_created", operations=[INSERT], key="post")

    class Comment(models.Model):
        class Meta:
            triggers = comment_created.triggers()

    @comment_created.on
    def email_author(event: Event) -> None: ...
"""

from eventbus.channel import DELETE, INSERT, UPDATE, Channel
from eventbus.event import Event

__all__ = ["DELETE", "INSERT", "UPDATE", "Channel", "Event"]
