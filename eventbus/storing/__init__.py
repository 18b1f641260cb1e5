"""Where events are stored, and how that storage stays small and cheap at any age.

``eventbus_event`` is one partitioned table, so every reader (claims, the admin,
``events``, status, follow) reads it by one name, while each kind of row lives where it
costs least:

- ``eventbus_event_queue``: pending and failed events, in two *slots* that take turns.
  New events go to the current slot; once it holds ``QUEUE_SLOT_EVENTS`` dead rows that
  vacuum has not removed, they go to the other, and the slot left is emptied by
  ``TRUNCATE`` once it has drained (its few stragglers moved across first). ``TRUNCATE``
  frees dead rows that ``VACUUM`` may not remove while another session holds an old
  snapshot, so the runnable set stays small whatever that session does (``upkeep``).
- ``eventbus_event_done``: done events, partitioned by ``finished_at`` into spans of
  ``HISTORY_PARTITION`` seconds; retention drops whole partitions, never deletes rows
  (``upkeep``).
- ``eventbus_event_deadletter``: dead events, kept until an operator retries or purges them.

A handler's mark moves its event out of the queue (a ``DELETE`` and an ``INSERT`` of the
same id in the claim transaction), so a done event never leaves a dead index entry in
the queue that a later claim must walk past for longer than one slot's life.

``layout`` holds the DDL and the upkeep's SQL functions, ``upkeep`` calls them for the
listeners, ``report`` tells health and metrics, ``conversion`` is the online migration
from the single table.
"""
