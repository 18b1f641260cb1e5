"""The supervisor: runs N worker processes, restarts any that die, stops them on a signal.

Workers are forked with no database connection open, so each opens its own. A worker
killed with -9 loses nothing: its claim transaction dies with its connection, its row
locks are released, and the restarted (or any other) worker claims those events again.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

from django.db import connections

from eventbus import metrics
from eventbus.worker import Worker, WorkerOptions

log = logging.getLogger("eventbus.supervisor")

_mp = multiprocessing.get_context("fork")


def _worker_main(options: WorkerOptions) -> None:
    worker = Worker(options)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        worker.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.run()


class Supervisor:
    def __init__(self, processes: int, options: WorkerOptions, shutdown_timeout: float) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        self.processes = processes
        self.options = options
        self.shutdown_timeout = shutdown_timeout
        self._slots: list[BaseProcess | None] = [None] * processes
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
                if process is not None and not process.is_alive():
                    self._restart(slot, process)
        return self._shutdown()

    def _start(self, slot: int) -> None:
        connections.close_all()  # a forked child must not share the parent's sockets
        process = _mp.Process(
            target=_worker_main, args=(self.options,), name=f"worker-{slot}", daemon=False
        )
        process.start()
        self._slots[slot] = process
        self._started_at[slot] = time.monotonic()

    def workers_alive(self) -> int:
        return sum(1 for p in self._slots if p is not None and p.is_alive())

    def _restart(self, slot: int, process: BaseProcess) -> None:
        process.join()
        if process.pid is not None:
            metrics.worker_exited(process.pid)
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
        for process in alive:
            if process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout
        for process in alive:
            process.join(max(0.0, deadline - time.monotonic()))
        forced = [p for p in alive if p.is_alive()]
        for process in forced:
            log.error(
                "worker pid %s did not stop in time; killing it (its batch will rerun)", process.pid
            )
            process.kill()
            process.join()
        log.info("supervisor %d stopped", os.getpid())
        return 0
