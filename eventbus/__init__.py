"""eventbus: Postgres-native event processing for Django.

Public API::

    from eventbus import Channel, Event, INSERT, UPDATE, DELETE

    comment_created = Channel("comment_created", operations=[INSERT], key="post")

    class Comment(models.Model):
        class Meta:
            triggers = comment_created.triggers()

    @comment_created.on
    def email_author(event: Event) -> None: ...

    @read_primary  # a view that must see the latest state, with reads routed to a replica
    def post_status(request, post_id): ...
"""

# The one place the version lives: pyproject.toml reads this literal (setuptools, statically).
__version__ = "0.1.0"

from eventbus.declaring.chains import Chain, ChainEnd
from eventbus.declaring.channel import DELETE, INSERT, UPDATE, Channel
from eventbus.declaring.collections import collection
from eventbus.declaring.prefetch import prefetch
from eventbus.declaring.retry import EXPONENTIAL, FIBONACCI, RetryPolicy
from eventbus.errors import GiveUp, HandlerTimeout, MalformedEvent, RetryLater, RowGone
from eventbus.event import Event
from eventbus.integrations.routing import PrimaryForHandlers, read_primary

__all__ = [
    "DELETE",
    "EXPONENTIAL",
    "FIBONACCI",
    "INSERT",
    "UPDATE",
    "Chain",
    "ChainEnd",
    "Channel",
    "Event",
    "GiveUp",
    "HandlerTimeout",
    "MalformedEvent",
    "PrimaryForHandlers",
    "RetryLater",
    "RetryPolicy",
    "RowGone",
    "__version__",
    "collection",
    "prefetch",
    "read_primary",
]
