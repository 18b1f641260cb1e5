"""`events follow`: print events' state changes as they commit, woken by NOTIFY alone.

The follower is one direct connection, named ``eventbus-follow`` so that workers see it
(``eventbus.running.followers``). It LISTENs on the changes channel and on the declared
channels' wake-ups (so it sees new events), says hello, prints where things stand, and
then sleeps on its socket. Every notification is only a reason to look: it re-reads the
events it watches that may still change (pending, failed, and dead ones, which `events
retry` revives) and the followed events above an id floor, and prints what differs from
what it knows. Changes between two looks collapse into one line.

The id floor. Ids are taken when a row is inserted, but a transaction commits whenever
it ends, so an event may become visible after one with a higher id. A look therefore
reads above the highest id that existed ``WINDOW`` seconds before the previous look: an
event whose transaction commits within ``WINDOW`` seconds of writing it is never missed
(one already in flight when follow starts may be). Each look reads the last ``WINDOW``
seconds' worth of events, filtered.

``running`` is not shown: it is a worker's row lock, not a stored state, and no commit
announces it.
"""

from __future__ import annotations

import select
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import psycopg

from eventbus import sql
from eventbus.declaring import registry
from eventbus.declaring.channel import notify_channel
from eventbus.event import DEAD, DONE, FAILED, PENDING
from eventbus.running import followers
from eventbus.running.connections import connect_listen

WINDOW = 10.0  # seconds a transaction may take from writing an event to its commit
RECONNECT_MAX_DELAY = 10.0


@dataclass(frozen=True)
class Followed:
    """What to follow: events of these queues, keys and collection (None: any)."""

    channels: tuple[str, ...] | None = None
    keys: tuple[str, ...] | None = None
    collection: int | None = None
    last: int = 20  # how many of the newest to show first (a collection: all)

    def describe(self) -> str:
        parts = []
        if self.collection is not None:
            parts.append(f"collection {self.collection}")
        if self.channels is not None:
            parts.append(f"channel {', '.join(self.channels)}")
        if self.keys is not None:
            parts.append(f"key {', '.join(self.keys)}")
        return ", ".join(parts) or "all events"

    def wake_ups(self) -> list[str]:
        """The NOTIFY channels that announce new followed events (poll-only channels
        announce none: their new events show with the next change)."""
        names = self.channels if self.channels is not None else registry.queue_names()
        return sorted({notify_channel(name) for name in names})


@dataclass(frozen=True)
class Row:
    id: int
    channel: str
    key: str | None
    state: str
    attempts: int
    run_after: datetime | None
    error: str | None  # the first line of the last error
    caused_by: int | None
    collection: int

    @property
    def finished(self) -> bool:
        return self.state == DONE  # dead is not: `events retry` revives it


@dataclass(frozen=True)
class Change:
    """One line of output: an event as first seen, written, changed, or deleted."""

    at: datetime
    kind: str  # "snapshot", "written", "changed" or "deleted"
    row: Row
    before: Row | None = None

    def text(self) -> str:
        key = f" key={self.row.key}" if self.row.key not in (None, "") else ""
        head = f"{_clock(self.at)}  event {self.row.id} {self.row.channel}{key}: "
        if self.kind == "written":
            cause = f", caused by {self.row.caused_by}" if self.row.caused_by else ""
            return f"{head}written{cause}"
        if self.kind == "deleted":
            return f"{head}deleted (purged)"
        if self.kind == "snapshot":
            return head + _state(self.row, None)
        assert self.before is not None
        return f"{head}{self.before.state} -> {_state(self.row, self.before)}"

    def as_json(self) -> dict[str, Any]:
        row = self.row
        retry = _retry_at(row, self.before)
        return {
            "at": self.at.isoformat(),
            "change": self.kind,
            "id": row.id,
            "channel": row.channel,
            "key": row.key,
            "from": self.before.state if self.before is not None else None,
            "state": row.state,
            "attempts": row.attempts,
            "retry_at": retry.isoformat() if retry is not None else None,
            "error": row.error if row.state != DONE else None,
            "caused_by": row.caused_by,
            "collection": row.collection,
        }


def _clock(at: datetime) -> str:
    return at.astimezone().strftime("%H:%M:%S.%f")[:-3]


def _retry_at(row: Row, before: Row | None) -> datetime | None:
    """When a failed attempt runs again: a failed event's, or a pending one's whose attempt
    just ended in a transient error (it stays pending, due later)."""
    if row.run_after is None or not row.attempts:
        return None
    if row.state == FAILED:
        return row.run_after
    transient = before is not None and row.attempts > before.attempts
    return row.run_after if row.state == PENDING and transient else None


def _state(row: Row, before: Row | None) -> str:
    """`done (attempt 1)`, `failed (attempt 2, retry at 12:03:09): <error>`, …"""
    error = f": {row.error}" if row.error else ""
    if row.state == DONE:
        return f"done (attempt {row.attempts})"
    if row.state == DEAD:
        return f"dead (attempt {row.attempts}){error}" if row.attempts else f"dead{error}"
    retry = _retry_at(row, before)
    if retry is not None:
        return f"{row.state} (attempt {row.attempts}, retry at {_clock(retry)}){error}"
    if row.state == PENDING and before is not None and before.state in (FAILED, DEAD):
        return "pending (re-queued)"
    if row.state == PENDING and row.attempts:
        return f"pending ({row.attempts} attempt(s) so far)"
    return row.state


class Window:
    """The id floor of a look: the highest id that existed `seconds` before the last look.

    The first look's highest id is the floor until then (events already in flight when
    follow started, with lower ids, may be missed).
    """

    def __init__(self, seconds: float = WINDOW) -> None:
        self.seconds = seconds
        self.floor: int | None = None
        self._seen: deque[tuple[float, int]] = deque()  # (when, highest id then)

    def looked(self, when: float, highest: int) -> None:
        """A look that began reading at `when` had ids up to `highest` to read."""
        if self.floor is None:
            self.floor = highest
        self._seen.append((when, highest))
        while self._seen and self._seen[0][0] <= when - self.seconds:
            self.floor = max(self.floor, self._seen.popleft()[1])


class Follower:
    """Prints followed events' changes until interrupted (or, optionally, all finished)."""

    def __init__(
        self,
        followed: Followed,
        emit: Callable[[Change], None],
        warn: Callable[[str], None],
        alias: str = "default",
        until_finished: bool = False,
    ) -> None:
        self.followed = followed
        self.emit = emit
        self.warn = warn
        self.alias = alias
        self.until_finished = until_finished
        self.known: dict[int, Row] = {}  # followed events not done, and done ones above the floor
        self.window = Window()
        self.seen_any = False  # --until-finished waits for something to follow
        self._woken: set[str] = set()

    def run(self) -> int:
        """Follow; returns the exit status: 0 all done (--until-finished), 1 some dead.

        Interrupted (Ctrl-C), it returns 0. A lost connection is re-opened with backoff.
        """
        try:
            return self._run()
        except KeyboardInterrupt:
            return 0

    def _run(self) -> int:
        delay, started = 0.5, False
        while True:
            try:
                with self._connect() as conn:
                    if started:
                        self.warn("follow: reconnected; looking again")
                        self.look(conn)
                    else:
                        self.snapshot(conn)
                        started = True
                        self.warn(f"follow: {self.followed.describe()}: watching (Ctrl-C to stop)")
                    delay = 0.5
                    while not self._finished():
                        self._wait(conn)
                        self.look(conn)
                    return 1 if any(r.state == DEAD for r in self.known.values()) else 0
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if not started:
                    raise
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                self.warn(
                    f"follow: lost the database ({reason}); reconnecting in {delay:.1f} s "
                    "(what changed meanwhile is shown once it is back)"
                )
                time.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_DELAY)

    def _connect(self) -> psycopg.Connection[Any]:
        """LISTEN first, then hello: a change committed after either is not missed."""
        conn = connect_listen(self.alias, application_name=followers.APPLICATION_NAME)
        try:
            conn.add_notify_handler(lambda n: self._woken.add(n.channel))
            for channel in [followers.CHANGES, *self.followed.wake_ups()]:
                conn.execute(sql.listen(channel))
            conn.execute(sql.NOTIFY_HELLO)
        except BaseException:
            conn.close()
            raise
        return conn

    def snapshot(self, conn: psycopg.Connection[Any]) -> None:
        """Where the followed events stand now: a collection's members, else the newest."""
        f = self.followed
        limit = None if f.collection is not None else f.last
        highest = _highest(conn)
        self.window.looked(time.monotonic(), highest)
        rows = conn.execute(*sql.followed_newest(f.channels, f.keys, f.collection, limit))
        now = datetime.now().astimezone()
        for row in sorted((Row(*r) for r in rows.fetchall()), key=lambda r: r.id):
            self.known[row.id] = row
            self.seen_any = True
            self.emit(Change(now, "snapshot", row))

    def look(self, conn: psycopg.Connection[Any]) -> None:
        """Re-read what may have changed; print the differences."""
        f = self.followed
        self._woken.clear()  # what came before this look is covered by it
        watched = [i for i, row in self.known.items() if not row.finished]
        floor = self.window.floor or 0
        # The highest id now, stamped before the rows are read: a later look's floor is
        # what existed WINDOW seconds before this one read.
        highest = _highest(conn)
        self.window.looked(time.monotonic(), highest)
        query = sql.followed_changes(watched, floor, f.channels, f.keys, f.collection)
        rows = [Row(*r) for r in conn.execute(*query).fetchall()]
        now = datetime.now().astimezone()
        returned = {row.id for row in rows}
        for gone in sorted(set(watched) - returned):  # purged (or otherwise deleted)
            self.emit(Change(now, "deleted", self.known.pop(gone)))
        for row in rows:
            before = self.known.get(row.id)
            if before is None:  # new: written as pending, perhaps handled since
                before = replace(row, state=PENDING, attempts=0, error=None)
                self.emit(Change(now, "written", before))
            if (row.state, row.attempts) != (before.state, before.attempts):
                self.emit(Change(now, "changed", row, before))
            self.known[row.id] = row
            self.seen_any = True
        self._forget(self.window.floor or 0)

    def _forget(self, floor: int) -> None:
        """Done events at or below the floor are never read again: drop them."""
        for event_id in [i for i, row in self.known.items() if row.finished and i <= floor]:
            del self.known[event_id]

    def _finished(self) -> bool:
        """--until-finished: something was followed, and nothing followed is pending or
        failed. A dead event counts as finished (and makes the exit status 1)."""
        if not self.until_finished or not self.seen_any:
            return False
        unfinished = [r for r in self.known.values() if r.state not in (DONE, DEAD)]
        return not unfinished

    def _wait(self, conn: psycopg.Connection[Any]) -> None:
        """Sleep on the socket until a notification arrives (no timeout: no polling)."""
        pgconn = conn.pgconn
        while not self._woken:
            select.select([pgconn.socket], [], [])
            pgconn.consume_input()  # raises OperationalError on a closed connection
            while (notify := pgconn.notifies()) is not None:
                self._woken.add(notify.relname.decode())


def _highest(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(sql.max_id()).fetchone()
    return int(row[0]) if row else 0


def resolve_collection(event_id: int, alias: str = "default") -> int | None:
    """The collection of event `event_id`, or `event_id` itself if it is a collection
    that ``eventbus.collection()`` reserved (no event of its own); None if neither."""
    from eventbus.models import EventRecord
    from eventbus.operating import status

    found = status.collection_id(event_id, alias)
    if found is not None:
        return found
    members = EventRecord.objects.using(alias).filter(correlation_id=event_id)
    return event_id if members.exists() else None
