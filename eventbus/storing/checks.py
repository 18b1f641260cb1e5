"""System checks of the storage settings: values that would make partitions by the
thousand, or a queue that rotates on every claim, are refused before a listener runs."""

from __future__ import annotations

from typing import Any

from django.core import checks

from eventbus import conf

MIN_HISTORY_PARTITION = 3600  # an hour: a day of partitions is then 24
MIN_QUEUE_SLOT_EVENTS = 100


@checks.register("eventbus")
def check_storage_settings(**kwargs: Any) -> list[checks.CheckMessage]:
    """eventbus.E050: HISTORY_PARTITION under an hour; E051: QUEUE_SLOT_EVENTS under 100."""
    settings = conf.get()
    found: list[checks.CheckMessage] = []
    if settings.HISTORY_PARTITION < MIN_HISTORY_PARTITION:
        found.append(
            checks.Error(
                f"HISTORY_PARTITION is {settings.HISTORY_PARTITION} s: each span is a "
                "partition, and spans this short make them by the thousand",
                hint=f"Use at least {MIN_HISTORY_PARTITION} (an hour); 86400 (a day) is "
                "the default. Done events stay up to one span past DONE_RETENTION.",
                id="eventbus.E050",
            )
        )
    if settings.QUEUE_SLOT_EVENTS < MIN_QUEUE_SLOT_EVENTS:
        found.append(
            checks.Error(
                f"QUEUE_SLOT_EVENTS is {settings.QUEUE_SLOT_EVENTS}: the queue would rotate "
                "on nearly every claim",
                hint=f"Use at least {MIN_QUEUE_SLOT_EVENTS}; 10000 is the default.",
                id="eventbus.E051",
            )
        )
    return found
