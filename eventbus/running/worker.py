"""One worker: LISTEN, drain the table, wait for a wake-up or the poll interval, repeat.

Lost connections (database restart, terminated backend) are survived: the worker closes
both connections, waits with capped exponential backoff, and starts over with LISTEN and
a full drain, so no event committed meanwhile is missed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import time
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from django import db
from django.db import connections

from eventbus import sql
from eventbus.declaring import placement, registry, wiring
from eventbus.declaring.channel import notify_channel
from eventbus.operating import backfill, maintenance, metrics, pauses, rollup
from eventbus.running import followers
from eventbus.running.connections import add_keepalives
from eventbus.running.executor import Executor
from eventbus.running.ledger import LedgerUnavailable
from eventbus.running.liveness import Liveness
from eventbus.running.notifier import Notifier
from eventbus.running.slots import Slots
from eventbus.sql import Scope
from eventbus.storing import upkeep
from eventbus.storing.upkeep import Rotation

log = logging.getLogger("eventbus.worker")


class ListenConnectionSilent(Exception):
    """The listen connection is open but no longer delivers notifications (half-open)."""


CONNECTION_ERRORS = (
    psycopg.OperationalError,
    db.OperationalError,
    db.InterfaceError,
    ListenConnectionSilent,
    LedgerUnavailable,
)
BEAT_INTERVAL = 1.0  # seconds between progress beats to the supervisor while idle
LOOK_INTERVAL = 0.25  # seconds between looks for a follower's hello while draining


@dataclass(frozen=True)
class WorkerOptions:
    channels: tuple[str, ...] | None  # None: every channel with a handler
    batch_size: int
    poll_interval: float
    reconnect_max_delay: float = 10.0
    alias: str = "default"
    health_interval: float = 10.0  # seconds between pings through the listen connection
    done_retention: float | None = None  # seconds; None: keep done events forever
    purge_interval: float = 60.0
    queue_slot_events: int = 10_000  # dead rows in a queue slot that make it rotate
    history_partition: int = 86400  # seconds of finish times per history partition
    concurrency: int = 1  # handler slots (threads) per process; see eventbus.running.slots


def worker_host() -> str:
    return socket.gethostname()


def worker_name() -> str:
    return f"{worker_host()}:{os.getpid()}"


class Worker:
    def __init__(self, options: WorkerOptions, liveness: Liveness | None = None) -> None:
        self.options = options
        self.name = worker_name()
        self.liveness = liveness or Liveness()
        add_keepalives(connections[options.alias])
        self.executor = Executor(
            self.name, options.alias, should_stop=lambda: self._stopping, liveness=self.liveness
        )
        # Only what it can run, of the channels that live in its database.
        self.channels = placement.queues_in(
            options.alias, wiring.handled_channels(options.channels)
        )
        self.base_scope = Scope(
            channels=self.channels, ordered_channels=tuple(registry.ordered_channel_names())
        )
        self.scope = self.base_scope  # less the paused queues (see _refresh_pauses_if_due)
        self.pauses = pauses.PausedSet(options.poll_interval)
        self._sampled_minute = 0  # the last minute this worker sampled the backlog in
        self.slots = (
            Slots(
                options.concurrency,
                self.name,
                self.scope,
                options.batch_size,
                options.alias,
                should_stop=lambda: self._stopping,
                connection_errors=CONNECTION_ERRORS,
                reconnect_max_delay=options.reconnect_max_delay,
            )
            if options.concurrency > 1
            else None
        )
        self._stopping = False
        self._first_heartbeat = True  # this process's first: it (re)starts the row
        self._parent_pid = os.getppid()
        self._next_purge = time.monotonic() + options.purge_interval
        self.rotation = Rotation(options.queue_slot_events, options.alias, self.name)
        self._last_heartbeat = 0.0
        self._notifier: Notifier | None = None
        self._next_look = 0.0  # when a drain next looks for a follower's hello
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    @property
    def notify_channels(self) -> list[str]:
        return [notify_channel(name) for name in self.channels] + [
            self.ping_channel,
            followers.HELLO,
            pauses.NOTIFY_CHANNEL,
        ]

    @property
    def ping_channel(self) -> str:
        return f"eventbus_ping_{os.getpid()}"

    def request_stop(self) -> None:
        """Stop claiming; the batch in flight finishes. Safe to call from a signal handler."""
        self._stopping = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")
        if self.slots is not None:
            self.slots.stop()

    def run(self) -> None:
        channels = ", ".join(self.options.channels or ["all"])
        slots = f", {self.slots.count} handler slots" if self.slots else ""
        log.info(
            "worker %s on database %s started (channels: %s%s)",
            self.name,
            self.options.alias,
            channels,
            slots,
        )
        if self.slots is not None:
            self.slots.start()
        delay = 0.5
        while not self._stopping:
            try:
                with Notifier(self.notify_channels, self.options.alias) as notifier:
                    self._notifier = notifier
                    delay = 0.5
                    health = Health(self.options.health_interval)
                    self._name_claim_connection()
                    self.pauses.invalidate()  # a pause may have come while disconnected
                    self._fan_out()
                    self._drain_or_wake()
                    next_poll = time.monotonic() + self.options.poll_interval
                    while not self._stopping:
                        self._beat()
                        if health.ping_due():
                            self._ping()
                            health.sent()
                        timeout = min(
                            next_poll - time.monotonic(),
                            health.seconds_to_deadline(),
                            BEAT_INTERVAL,
                        )
                        woken = notifier.wait(timeout, self._wake_r)
                        if self.ping_channel in woken:
                            health.answered()
                        if followers.HELLO in woken:
                            self._followed(True)
                        if pauses.NOTIFY_CHANNEL in woken:
                            self.pauses.invalidate()
                        self._refresh_pauses_if_due()
                        health.check()  # raises ListenConnectionSilent
                        self._stop_if_orphaned()
                        if woken or time.monotonic() >= next_poll:
                            self._drain_or_wake()
                            next_poll = time.monotonic() + self.options.poll_interval
                        elif self.slots is not None:
                            self._heartbeat_if_due()
                        self._rotate_if_due()
                        self._purge_if_due()
            except CONNECTION_ERRORS as exc:
                self._notifier = None
                if self._stopping:
                    break
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                metrics.reconnected()
                log.warning(
                    "worker %s lost the database (%s); reconnecting in %.1f s",
                    self.name,
                    reason,
                    delay,
                )
                self._close_claim_connection()
                self._sleep(delay)
                delay = min(delay * 2, self.options.reconnect_max_delay)
            except Exception as exc:  # a bug or an unforeseen error: never a dead worker
                self._notifier = None
                if self._stopping:
                    break
                log.exception(
                    "worker %s: unexpected error (%s); starting over in %.1f s",
                    self.name,
                    type(exc).__name__,
                    delay,
                )
                self._close_claim_connection()
                self._sleep(delay)
                delay = min(delay * 2, self.options.reconnect_max_delay)
        if self.slots is not None:
            self.slots.join()  # each slot finishes its batch in flight; the supervisor waits
        with contextlib.suppress(Exception):
            self.executor.close()
        self._forget()
        self._close_claim_connection()
        log.info("worker %s stopped", self.name)

    def _drain_or_wake(self) -> None:
        self._refresh_pauses_if_due()
        self._sample_if_due()
        if self.slots is not None:
            self._heartbeat_if_due()
            self.slots.wake()
        else:
            self.drain()

    def _beat(self) -> None:
        """Tell the supervisor this process makes progress; with handler slots, only while
        none of them is stuck beyond its handler's allowance."""
        if self.slots is None or not self.slots.hung():
            self.liveness.beat()

    def drain(self) -> int:
        """Claim and handle batches until the scope is empty or a stop is requested."""
        total = 0
        while not self._stopping:
            self.liveness.beat()
            self._heartbeat_if_due()  # a long drain must not look like a dead worker
            self._look_for_followers()
            self._refresh_pauses_if_due()  # a pause holds within a poll interval, even now
            self._sample_if_due()  # a backlog being drained is the one worth charting
            self._rotate_if_due()  # under load most of all: the queue grows fastest then
            outcomes = self.executor.run_batch(self.scope, self.options.batch_size)
            if not outcomes:  # not "fewer than a batch": ordered keys release one at a time
                break
            total += len(outcomes)
        self.executor.idle()
        return total

    def _fan_out(self) -> None:
        """Events a channel got before it had subscriptions go to its subscriptions."""
        with connections[self.options.alias].cursor() as cursor:
            backfill.fan_out(self.channels, cursor)

    def _rotate_if_due(self) -> None:
        """Keep the queue small (eventbus.storing): a look every second, less often while
        claim transactions keep the drained slot locked."""
        if self.rotation.due():
            self.rotation.run()

    def _purge_if_due(self) -> None:
        if time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + self.options.purge_interval
        self._fan_out()
        rollup.purge_expired(self.executor.settings.ROLLUP_RETENTION, self.options.alias)
        made = upkeep.prepare_history(self.options.history_partition, self.options.alias)
        if made:
            log.info("worker %s made %d history partition(s) ahead", self.name, made)
        if self.options.done_retention is None:
            return
        purged = maintenance.purge_expired(self.options.done_retention, self.options.alias)
        if purged:
            log.info(
                "worker %s dropped %d done event(s) older than %.0f s with their partitions",
                self.name,
                purged,
                self.options.done_retention,
            )

    def _refresh_pauses_if_due(self) -> None:
        """Leave paused channels and subscriptions out of the claims: read again on a
        NOTIFY, on a new connection, and at least once per poll interval."""
        if not self.pauses.due():
            return
        with connections[self.options.alias].cursor() as cursor:
            if not self.pauses.refresh(cursor):
                return
        claimed = pauses.without_paused(self.channels, self.pauses.names)
        self.scope = replace(self.base_scope, channels=claimed)
        if self.slots is not None:
            self.slots.scope = self.scope  # each slot takes it up at its next claim
        held = [q for q in self.channels if q not in claimed]
        if held:
            log.info("worker %s: not claiming paused %s", self.name, ", ".join(held))
        else:
            log.info("worker %s: no channel paused; claiming all it handles", self.name)

    def _sample_if_due(self) -> None:
        """Once a minute, the backlog per queue for the dashboard's chart (one listener's
        sample counts; the others' find the minute taken and count nothing)."""
        minute = int(time.time() // 60)
        if minute == self._sampled_minute or not self.executor.settings.ROLLUP:
            return
        self._sampled_minute = minute
        rollup.sample(self.channels, self.options.alias)

    def _name_claim_connection(self) -> None:
        """Show workers as such in pg_stat_activity (the listen connection has its own name)."""
        with connections[self.options.alias].cursor() as cursor:
            cursor.execute("SET application_name = 'eventbus-worker'")
            self._heartbeat(cursor)

    def _ping(self) -> None:
        """NOTIFY our own ping channel through the claim connection; record a heartbeat."""
        with connections[self.options.alias].cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [self.ping_channel])
            self._heartbeat(cursor)

    def _heartbeat_if_due(self) -> None:
        if time.monotonic() - self._last_heartbeat >= self.options.health_interval:
            with connections[self.options.alias].cursor() as cursor:
                self._heartbeat(cursor)

    def _heartbeat(self, cursor: Any) -> None:
        self._last_heartbeat = time.monotonic()
        host, _, pid = self.name.rpartition(":")
        channels = ",".join(self.channels)  # what it handles: others read coverage from it
        first, self._first_heartbeat = self._first_heartbeat, False
        cursor.execute(
            sql.HEARTBEAT_WITH_CHANNELS,
            [self.name, host, int(pid), channels, first, followers.APPLICATION_NAME],
        )
        self._followed(bool(cursor.fetchone()[0]), cursor)

    def _look_for_followers(self) -> None:
        """While draining, notice a follower's hello between batches (a few times a second)."""
        if followers.watched or self._notifier is None:
            return
        now = time.monotonic()
        if now >= self._next_look:
            self._next_look = now + LOOK_INTERVAL
            if followers.HELLO in self._notifier.poll():
                self._followed(True)

    def _followed(self, present: bool, cursor: Any = None) -> None:
        """Someone follows (or no longer does): announce claim transactions (or stop).

        On learning of a follower, announce once at once: what this process committed
        before it knew (a batch in flight when the hello came) is then looked at too.
        """
        was, followers.watched = followers.watched, present
        if present and not was:
            if cursor is not None:
                cursor.execute(sql.NOTIFY_CHANGES)
            else:
                with connections[self.options.alias].cursor() as own:
                    own.execute(sql.NOTIFY_CHANGES)

    def _stop_if_orphaned(self) -> None:
        """A worker whose supervisor died (kill -9) stops instead of running unsupervised."""
        if os.getppid() != self._parent_pid:
            log.warning("worker %s lost its supervisor; stopping", self.name)
            self.request_stop()

    def _forget(self) -> None:
        """A clean stop removes the heartbeat row; a crash leaves it to go stale."""
        try:
            with connections[self.options.alias].cursor() as cursor:
                cursor.execute(sql.FORGET_WORKER, [self.name])
        except CONNECTION_ERRORS:
            pass

    def _close_claim_connection(self) -> None:
        with contextlib.suppress(Exception):
            connections[self.options.alias].close()
        self.executor.ledger.close()

    def _sleep(self, seconds: float) -> None:
        """Back off, but notice a stop request or a dead supervisor within a beat."""
        deadline = time.monotonic() + seconds
        while not self._stopping and (left := deadline - time.monotonic()) > 0:
            select.select([self._wake_r], [], [], min(left, BEAT_INTERVAL))
            self._stop_if_orphaned()


class Health:
    """Tracks the ping that proves the listen connection still delivers.

    A ping is sent every `interval` seconds and must come back within `interval`; if it
    does not, the connection is silently dead (a half-open TCP connection, a proxy that
    black-holes it) and the worker reconnects instead of waiting on it forever.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next_ping = time.monotonic() + interval
        self._outstanding_since: float | None = None

    def ping_due(self) -> bool:
        return self._outstanding_since is None and time.monotonic() >= self._next_ping

    def sent(self) -> None:
        self._outstanding_since = time.monotonic()

    def answered(self) -> None:
        self._outstanding_since = None
        self._next_ping = time.monotonic() + self.interval

    def seconds_to_deadline(self) -> float:
        now = time.monotonic()
        if self._outstanding_since is None:
            return max(0.0, self._next_ping - now)
        return max(0.0, self._outstanding_since + self.interval - now)

    def check(self) -> None:
        waited = (
            time.monotonic() - self._outstanding_since
            if self._outstanding_since is not None
            else 0.0
        )
        if waited >= self.interval:
            raise ListenConnectionSilent(f"listen connection delivered no ping in {waited:.1f} s")
