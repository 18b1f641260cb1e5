"""What a handler receives: one event, decoded from its row in the event table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from eventbus.declaring import registry
from eventbus.errors import MalformedEvent

PENDING = "pending"
DONE = "done"
FAILED = "failed"  # the last attempt failed; runs again at run_after
DEAD = "dead"  # gave up: no attempts left, or the handler raised GiveUp
STATES = (PENDING, DONE, FAILED, DEAD)
RUNNABLE = (PENDING, FAILED)


_raw_decode = json.JSONDecoder().raw_decode


def decode_payload(value: Any) -> Any:
    """A payload column as Python: psycopg decodes ``json`` itself; text is decoded here.

    The claim sends payloads as text (see ``eventbus.sql.claim``). PostgreSQL has already
    validated it, so the common case, with no whitespace around the value, skips
    ``json.loads``'s whitespace scans (a third of its cost for a small object); anything
    else goes through ``json.loads`` whole.

    Raises ``MalformedEvent`` for what PostgreSQL stores and Python cannot decode: JSON
    nested deeper than Python's recursion limit (PostgreSQL takes thousands of levels)."""
    try:
        if type(value) is str:
            try:
                decoded, end = _raw_decode(value)
            except ValueError:
                return json.loads(value)
            return decoded if end == len(value) else json.loads(value)
        return json.loads(value) if isinstance(value, bytes) else value
    except (ValueError, RecursionError) as exc:
        raise MalformedEvent(f"its payload cannot be decoded: {exc}") from None


def decode_payloads(event_id: int, queue: str, old: Any, new: Any) -> tuple[Any, Any]:
    """An event's two payload columns as Python; ``MalformedEvent`` naming the event if
    either cannot be decoded."""
    try:
        return (
            None if old is None else decode_payload(old),
            None if new is None else decode_payload(new),
        )
    except MalformedEvent as exc:
        raise MalformedEvent(f"event {event_id} ({queue}): {exc}") from None


@dataclass(frozen=True, slots=True)
class Event:
    """One change to one row.

    ``old`` and ``new`` are the row as it was and as it became (``None`` for INSERT and
    DELETE respectively), as JSON objects keyed by column name (``post_id``, not ``post``).
    ``attempt`` counts from 1. ``queue`` is the name the event is stored and claimed
    under: the channel's name, or ``<channel>:<subscription>`` for a channel with
    subscriptions (each subscription gets its own event of the same change).

    ``caused_by`` is the event whose handler wrote this one (``None`` for a root), and
    ``collection`` the id its whole tree shares: its root's id, or the id that
    ``eventbus.collection()`` reserved for the transaction that wrote it.
    """

    id: int
    queue: str
    operation: str
    table: str
    key: str | None
    old: dict[str, Any] | None
    new: dict[str, Any] | None
    created_at: datetime
    attempt: int
    caused_by: int | None = None
    collection: int | None = None

    @property
    def channel(self) -> str:
        """The channel's name (without the subscription)."""
        return registry.base_name(self.queue)

    @property
    def subscription(self) -> str | None:
        """The subscription this event is for, or None on a channel without them."""
        return registry.subscription_name(self.queue)

    @property
    def row(self) -> dict[str, Any]:
        """The row the event is about: ``new`` if there is one, else ``old``."""
        row = self.new if self.new is not None else self.old
        return row if isinstance(row, dict) else {}

    def require(self, *names: str) -> tuple[Any, ...]:
        """The row's values for `names`; a missing one makes the event dead, not retried."""
        row = self.row
        missing = [name for name in names if name not in row]
        if missing:
            raise MalformedEvent(
                f"event {self.id} ({self.queue}) lacks {', '.join(missing)} in its row"
            )
        return tuple(row[name] for name in names)

    @classmethod
    def from_row(cls, row: tuple[Any, ...], decode: bool = True) -> Event:
        """Build from a claim query row (see ``eventbus.sql.claim``); later columns of
        the row are the executor's. `decode` False: without its payload (``old`` and
        ``new`` None), for an event whose payload cannot be decoded."""
        old, new, created_at = row[5:8]
        if not isinstance(created_at, datetime):  # epoch seconds, as the claim selects it
            created_at = datetime.fromtimestamp(created_at, UTC)
        old, new = decode_payloads(row[0], row[1], old, new) if decode else (None, None)
        # id, queue, operation, table, key; the payloads; attempts so far + 1; the cause
        return cls(*row[:5], old, new, created_at, row[8] + 1, row[9], row[10])
