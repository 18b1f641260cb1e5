"""eventbus's side of `bench/peers.py`: comment_created inserts one row per comment.

Loaded alone (EVENTBUS_LISTENER_MODULES=bench.peer_handlers), in place of the reference
site's email handler, so the work is the same as the peers' tasks.
"""

from django.db import connection

import channels
from eventbus import Event


@channels.comment_created.on
def insert_row(event: Event) -> None:
    """One insert per comment, in the event's own savepoint (the default isolation)."""
    (comment_id,) = event.require("id")
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO bench_peer_row (comment_id) VALUES (%s)", [comment_id])
