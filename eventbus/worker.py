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
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from django import db
from django.db import connections

from eventbus import registry
from eventbus.channel import notify_channel
from eventbus.executor import Executor
from eventbus.notifier import Notifier
from eventbus.sql import Scope

log = logging.getLogger("eventbus.worker")

CONNECTION_ERRORS = (psycopg.OperationalError, db.OperationalError, db.InterfaceError)


@dataclass(frozen=True)
class WorkerOptions:
    channels: tuple[str, ...] | None  # None: every channel
    batch_size: int
    poll_interval: float
    reconnect_max_delay: float = 10.0
    alias: str = "default"


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.name = worker_name()
        self.executor = Executor(self.name, options.alias)
        self.scope = Scope(
            channels=options.channels, ordered_channels=tuple(registry.ordered_channel_names())
        )
        self._stopping = False
        self._parent_pid = os.getppid()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    @property
    def notify_channels(self) -> list[str]:
        names: Sequence[str] = self.options.channels or registry.channel_names()
        return [notify_channel(name) for name in names]

    def request_stop(self) -> None:
        """Stop claiming; the batch in flight finishes. Safe to call from a signal handler."""
        self._stopping = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")

    def run(self) -> None:
        channels = ", ".join(self.options.channels or ["all"])
        log.info("worker %s started (channels: %s)", self.name, channels)
        delay = 0.5
        while not self._stopping:
            try:
                with Notifier(self.notify_channels, self.options.alias) as notifier:
                    delay = 0.5
                    self.drain()
                    while not self._stopping:
                        notifier.wait(self.options.poll_interval, self._wake_r)
                        self._stop_if_orphaned()
                        self.drain()
            except CONNECTION_ERRORS as exc:
                if self._stopping:
                    break
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                log.warning(
                    "worker %s lost the database (%s); reconnecting in %.1f s",
                    self.name,
                    reason,
                    delay,
                )
                self._close_claim_connection()
                self._sleep(delay)
                delay = min(delay * 2, self.options.reconnect_max_delay)
        self._close_claim_connection()
        log.info("worker %s stopped", self.name)

    def drain(self) -> int:
        """Claim and handle batches until the scope is empty or a stop is requested."""
        total = 0
        while not self._stopping:
            outcomes = self.executor.run_batch(self.scope, self.options.batch_size)
            total += len(outcomes)
            if len(outcomes) < self.options.batch_size:
                break
        return total

    def _stop_if_orphaned(self) -> None:
        """A worker whose supervisor died (kill -9) stops instead of running unsupervised."""
        if os.getppid() != self._parent_pid:
            log.warning("worker %s lost its supervisor; stopping", self.name)
            self.request_stop()

    def _close_claim_connection(self) -> None:
        with contextlib.suppress(CONNECTION_ERRORS):
            connections[self.options.alias].close()

    def _sleep(self, seconds: float) -> None:
        select.select([self._wake_r], [], [], seconds)
