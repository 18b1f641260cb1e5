"""The supervisor: runs N worker processes, restarts any that die, stops them on a signal.

Workers are forked with no database connection open, so each opens its own. A worker
killed with -9 loses nothing: its claim transaction dies with its connection, its row
locks are released, and the restarted (or any other) worker claims those events again.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Sequence
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from django.db import connections

from eventbus.operating import metrics
from eventbus.running.bookkeeper import Bookkeeper
from eventbus.running.liveness import Liveness
from eventbus.running.worker import Worker, WorkerOptions, worker_host

log = logging.getLogger("eventbus.supervisor")

_mp = multiprocessing.get_context("fork")
VOUCH_SLACK = 5.0  # seconds beyond a handler's timeout before a worker is no longer vouched for


def _worker_main(options: WorkerOptions, cells: Any) -> None:
    # Everything inherited from the supervisor (Django, the apps, their checks' leftovers)
    # lives as long as the worker: keep it out of the garbage collector's full passes,
    # which otherwise walk it every few hundred claimed events.
    gc.freeze()
    worker = Worker(options, Liveness(cells))

    def on_signal(signum: int, frame: FrameType | None) -> None:
        worker.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.run()


class Supervisor:
    """Runs `processes` workers per database: one list of options per alias served."""

    def __init__(
        self,
        processes: int,
        options: WorkerOptions | Sequence[WorkerOptions],
        shutdown_timeout: float,
        hang_grace: float = 30.0,
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        served = [options] if isinstance(options, WorkerOptions) else list(options)
        if not served:
            raise ValueError("a supervisor needs the options of at least one database")
        # Each slot serves one database, `processes` slots per database in turn.
        self._slot_options = [o for o in served for _ in range(processes)]
        processes = len(self._slot_options)
        self.processes = processes
        self.options = served[0]
        self.shutdown_timeout = shutdown_timeout
        self.hang_grace = hang_grace
        self._slots: list[BaseProcess | None] = [None] * processes
        self._liveness = [Liveness() for _ in range(processes)]
        self.restarts = 0  # workers that died or were killed, since start
        self._next_vouch = 0.0
        self._bookkeepers = {o.alias: Bookkeeper(o.alias) for o in served}
        self._started_at: list[float] = [0.0] * processes
        self._restart_delay: list[float] = [0.0] * processes
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        self._stopping = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        log.info("supervisor %d started with %d worker(s)", os.getpid(), self.processes)
        for slot in range(self.processes):
            self._start(slot)
        while not self._stopping:
            sentinels = [p.sentinel for p in self._slots if p is not None]
            wait([*sentinels, self._wake_r], timeout=1.0)
            if self._stopping:
                break
            for slot, process in enumerate(self._slots):
                if process is not None and process.is_alive():
                    self._kill_if_hung(slot, process)
                if process is not None and not process.is_alive():
                    self._restart(slot, process)
            self._vouch_if_due()
        return self._shutdown()

    def _vouch_if_due(self) -> None:
        """Refresh the heartbeat rows of workers that are making progress.

        A worker inside a long handler sends no heartbeat of its own, yet is healthy; one
        silent beyond its handler's timeout is not, and is left to go stale, so that
        ``eventbus_health`` names it before the supervisor kills it.
        """
        now = time.monotonic()
        if now < self._next_vouch:
            return
        self._next_vouch = now + self.options.health_interval
        names: dict[str, list[str]] = {alias: [] for alias in self._bookkeepers}
        for slot, process in enumerate(self._slots):
            if (
                process is not None
                and process.is_alive()
                and self._liveness[slot].overdue(VOUCH_SLACK) is None
            ):
                names[self._slot_options[slot].alias].append(f"{worker_host()}:{process.pid}")
        for alias, vouched in names.items():
            self._bookkeepers[alias].vouch(vouched)

    def _start(self, slot: int) -> None:
        connections.close_all()  # a forked child must not share the parent's sockets
        self._liveness[slot].idle()
        process = _mp.Process(
            target=_worker_main,
            args=(self._slot_options[slot], self._liveness[slot].cells),
            name=f"worker-{slot}",
            daemon=False,
        )
        process.start()
        self._slots[slot] = process
        self._started_at[slot] = time.monotonic()

    def _bookkeeper(self, slot: int) -> Bookkeeper:
        return self._bookkeepers[self._slot_options[slot].alias]

    def workers_alive(self) -> int:
        return sum(1 for p in self._slots if p is not None and p.is_alive())

    def _kill_if_hung(self, slot: int, process: BaseProcess) -> None:
        """A worker silent beyond its handler's timeout plus the grace is stuck (a
        half-open connection, a C call that never returns): kill it; its batch reruns."""
        silence = self._liveness[slot].overdue(self.hang_grace)
        if silence is None or self._stopping:
            return
        log.error(
            "worker %d (pid %s) hung: no progress for %.1f s; killing it "
            "(its events run again, counted in the crash ledger)",
            slot,
            process.pid,
            silence,
        )
        process.kill()
        process.join()

    def _restart(self, slot: int, process: BaseProcess) -> None:
        process.join()
        self.restarts += 1
        if process.pid is not None:
            metrics.worker_exited(process.pid)
            # before the replacement claims: its crash-ledger rows then count
            self._bookkeeper(slot).forget(f"{worker_host()}:{process.pid}", wait=2.0)
        lived = time.monotonic() - self._started_at[slot]
        # A worker that dies at once is crash-looping (bad settings, database down): back off.
        self._restart_delay[slot] = (
            min(max(self._restart_delay[slot] * 2, 0.5), 10.0) if lived < 2.0 else 0.0
        )
        log.warning(
            "worker %d (pid %s) exited with code %s; restarting in %.1f s",
            slot,
            process.pid,
            process.exitcode,
            self._restart_delay[slot],
        )
        self._slots[slot] = None
        if self._restart_delay[slot]:
            wait([self._wake_r], timeout=self._restart_delay[slot])
        if not self._stopping:
            self._start(slot)

    def _shutdown(self) -> int:
        log.info(
            "supervisor stopping: waiting up to %.0f s for workers to finish", self.shutdown_timeout
        )
        alive = [p for p in self._slots if p is not None and p.is_alive()]
        alias_of = {p.pid: self._slot_options[s].alias for s, p in enumerate(self._slots) if p}
        for process in alive:
            if process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout
        for process in alive:
            process.join(max(0.0, deadline - time.monotonic()))
        forced = [p for p in alive if p.is_alive()]
        for process in forced:
            log.error(
                "worker pid %s did not stop in time; killing it (its handler in flight will rerun)",
                process.pid,
            )
            process.kill()
            process.join()
            # Killed by the deploy, not by its events: no crash to count against them.
            self._bookkeepers[alias_of[process.pid]].forget(
                f"{worker_host()}:{process.pid}", stopped=True
            )
        for bookkeeper in self._bookkeepers.values():
            bookkeeper.stop(timeout=5.0)
        log.info("supervisor %d stopped", os.getpid())
        return 0
