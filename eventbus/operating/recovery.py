"""Replay events that were never handled, or that failed, through the normal claim path.

Because replay claims with ``FOR UPDATE SKIP LOCKED`` exactly as listeners do, it is safe
to run while listeners run: an event a listener holds is skipped here and finished there,
and every event is still handled once.

A replay walks ids upwards in passes and never looks past the newest id that existed when
it began. An event of an ordered channel can be held back in a pass (an older event of its
key was still pending when the pass's claim ran), so a pass that finished something is
followed by another over the ordered events it has not attempted yet. Each event gets at
most one attempt per replay and each extra pass needs a newly finished event, so a handler
that keeps failing cannot loop it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from datetime import datetime

from django.db import connections

from eventbus import sql
from eventbus.declaring import registry, wiring
from eventbus.event import DEAD, DONE, FAILED, PENDING
from eventbus.operating import status
from eventbus.running import followers
from eventbus.running.executor import Executor, Outcome
from eventbus.running.worker import worker_name

REPLAYABLE = (PENDING, FAILED)

log = logging.getLogger("eventbus.recovery")


# Outcomes that no longer hold back the later events of their key (see sql._where).
@dataclass
class Summary:
    """Outcomes per (channel, outcome) and what is left in scope afterwards."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    still_failed: int = 0  # failed or dead, in scope, at the end
    still_pending: int = 0  # pending in scope at the end: held back, or left by a transient error
    in_flight: int = 0  # pending in scope but held by a listener right now: it finishes them

    @property
    def unhandled(self) -> int:
        """Events in scope that this replay leaves unfinished (a listener's are not counted)."""
        return self.still_failed + self.still_pending


def scope_for(
    channels: tuple[str, ...] | None,
    since: datetime | None,
    *,
    dead: bool = False,
    ids: tuple[int, ...] | None = None,
    keys: tuple[str, ...] | None = None,
) -> sql.Scope:
    """Pending and failed events (failed ones without waiting for their retry), or dead ones."""
    return sql.Scope(
        states=(DEAD,) if dead else REPLAYABLE,
        channels=wiring.handled_channels(channels),  # others stay for a listener that can
        ids=ids,
        keys=keys,
        since=since,
        due_only=False,
        ordered_channels=tuple(registry.ordered_channel_names()),
    )


def without_handler(
    scope: sql.Scope, requested: tuple[str, ...] | None, alias: str = "default"
) -> dict[str, int]:
    """Events a replay of `scope` leaves alone, per channel: `requested` (default: every
    channel in the table) but without a handler in this process, so nothing here can run
    them. A removed channel's events, or a newer release's, are counted here."""
    wide = replace(scope, channels=requested, ordered_channels=())
    with connections[alias].cursor() as cursor:
        cursor.execute(*sql.count_by_channel_and_state(wide))
        rows = cursor.fetchall()
    left: Counter[str] = Counter()
    for channel, _state, count in rows:
        if not registry.has_handler(channel):
            left[channel] += count
    return dict(sorted(left.items()))


def plan(scope: sql.Scope, alias: str = "default") -> dict[tuple[str, str], int]:
    """What a replay would take now: counts per (channel, state). Touches nothing.

    Held-back events of ordered channels count too: the replay comes back for them.
    """
    with connections[alias].cursor() as cursor:
        cursor.execute(*sql.count_by_channel_and_state(replace(scope, ordered_channels=())))
        return {(channel, state): count for channel, state, count in cursor.fetchall()}


def replay(
    scope: sql.Scope,
    batch_size: int,
    alias: str = "default",
    on_batch: Callable[[list[Outcome]], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Summary:
    """Handle every event of `scope` that can run, each at most once; count what is left.

    `should_stop` (Ctrl-C): the handler in flight finishes, its batch commits, the replay
    ends there and counts what is left.
    """
    name = f"recover@{worker_name()}"
    log.info(
        "%s started (states: %s; channels: %s)",
        name,
        ", ".join(scope.states),
        ", ".join(scope.channels) if scope.channels else "all",
    )
    executor = Executor(name, alias, should_stop=should_stop)
    with connections[alias].cursor() as cursor:
        cursor.execute(sql.max_id())
        (upto_id,) = cursor.fetchone()
    bounded = replace(scope, upto_id=upto_id)
    summary = Summary()
    attempted: dict[int, str] = {}  # event id -> its outcome in this replay
    pass_scope: sql.Scope | None = bounded
    # An operator's replay is rare: its batches always tell `events follow`, as a retry does.
    announcing, followers.watched = followers.watched, True
    try:
        while pass_scope is not None and not should_stop():
            outcomes = _one_pass(executor, pass_scope, batch_size, on_batch)
            for outcome in outcomes:
                attempted[outcome.event_id] = outcome.status
                state = "handled" if outcome.ok else outcome.status
                summary.outcomes[(outcome.channel, state)] += 1
            # Another pass while the last one got somewhere: it picks up held-back events
            # of ordered channels, and events a listener held (skipped) but then left pending.
            pass_scope = _next_pass(bounded, attempted, alias) if outcomes else None
    finally:
        followers.watched = announcing
    executor.close()
    _tally(summary, bounded, [i for i, s in attempted.items() if s != DONE], alias)
    log.info("%s finished: %d event(s) attempted", name, len(attempted))
    return summary


def _one_pass(
    executor: Executor,
    scope: sql.Scope,
    batch_size: int,
    on_batch: Callable[[list[Outcome]], None] | None,
) -> list[Outcome]:
    """Walk `scope` once in id order, batch by batch; events held back now are passed over."""
    outcomes: list[Outcome] = []
    cursor_id = 0
    above: set[int] = set()  # attempted ids beyond the cursor: a batch cut short left a gap
    while batch := executor.run_batch(
        replace(scope, after_id=cursor_id, exclude_ids=tuple(sorted(above))), batch_size
    ):
        ids = {o.event_id for o in batch}
        unstarted = executor.unstarted  # a batch stops early at its time or savepoint budget
        cursor_id = min(unstarted) - 1 if unstarted else max(ids)
        above = {i for i in above | ids if i > cursor_id}
        outcomes.extend(batch)
        if on_batch is not None:
            on_batch(batch)
    return outcomes


def _next_pass(bounded: sql.Scope, attempted: Collection[int], alias: str) -> sql.Scope | None:
    """The events of scope not attempted yet, if any: held back behind their key, or
    skipped while a listener held them and left again (a batch cut short)."""
    waiting = [i for i in _ids(bounded, alias) if i not in attempted]
    return replace(bounded, ids=waiting) if waiting else None


def _tally(summary: Summary, bounded: sql.Scope, unfinished: list[int], alias: str) -> None:
    """Count failed, dead and pending events left in scope (or left so by this replay)."""
    with connections[alias].cursor() as cursor:
        cursor.execute(*sql.count_unresolved(bounded, unfinished))
        (summary.still_failed,) = cursor.fetchone()
    pending = replace(bounded, states=(PENDING,))
    if PENDING not in bounded.states:  # recover --dead: only those it made pending
        pending = replace(pending, ids=unfinished)
    left = _ids(pending, alias)
    # One statement decides: an event a listener finished after `left` was read is not
    # left pending (two statements raced with a listener's commit, and counted it).
    summary.still_pending = len(status.waiting_ids(left, alias))
    summary.in_flight = len(left) - summary.still_pending


def _ids(scope: sql.Scope, alias: str) -> list[int]:
    """Ids of the events in `scope` whatever their key's order allows, oldest first."""
    with connections[alias].cursor() as cursor:
        cursor.execute(*sql.ids_in(replace(scope, ordered_channels=())))
        return [row[0] for row in cursor.fetchall()]
