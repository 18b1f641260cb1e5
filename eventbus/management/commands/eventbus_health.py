"""./manage.py eventbus_health: exit 0 or 1 with a one-line reason, for container probes.

Healthy when a worker has sent a heartbeat recently (workers heartbeat every
HEALTH_INTERVAL seconds, also while draining) and no due event has waited too long.

Events of a channel that no live listener (on any host) handles only warn by default: a
probe that failed for them would restart listeners that are fine, which cannot help.
Such events still fail the backlog age check once they wait too long, and
``--fail-unhandled`` makes them fail at once, for a monitor that watches the cluster.
"""

from __future__ import annotations

import socket
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import DatabaseError, connections

from eventbus import sql
from eventbus.declaring import wiring
from eventbus.management.commands import _options
from eventbus.operating import horizon, status
from eventbus.running.liveness import pid_alive
from eventbus.storing import report


class Command(BaseCommand):
    help = "Exit 0 if a listener is alive and the backlog is fresh, else 1; one line why."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--max-silence",
            type=float,
            default=30.0,
            help="seconds since the newest worker heartbeat (default 30)",
        )
        parser.add_argument(
            "--max-backlog-age",
            type=float,
            default=300.0,
            help="seconds the oldest due event may wait (default 300)",
        )
        scope = parser.add_mutually_exclusive_group()
        scope.add_argument("--host", help="only workers on this host")
        scope.add_argument(
            "--this-host",
            action="store_true",
            help="only workers on the host running the check (a pod's or container's probe)",
        )
        parser.add_argument(
            "--skip-backlog", action="store_true", help="liveness only: ignore the backlog"
        )
        parser.add_argument(
            "--max-snapshot-age",
            type=float,
            default=600.0,
            help="seconds a snapshot (a session's, a prepared transaction's) may hold back "
            "cleanup of the event table before it is reported (default 600)",
        )
        parser.add_argument(
            "--fail-held-snapshot",
            action="store_true",
            help="fail when one has held longer (default: a warning in the ok line)",
        )
        parser.add_argument(
            "--max-queue-lock-age",
            type=float,
            default=60.0,
            help="seconds a session may hold a lock on the event queue, keeping its slots "
            "from being emptied, before it is reported (default 60)",
        )
        parser.add_argument(
            "--fail-unhandled",
            action="store_true",
            help="fail when runnable events have a channel that no live listener on any host "
            "handles (default: a warning in the ok line)",
        )

        _options.add_database(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        ok, line = self.evaluate(options)
        (self.stdout if ok else self.stderr).write(line)
        if not ok:
            raise SystemExit(1)

    def evaluate(self, options: dict[str, Any]) -> tuple[bool, str]:
        alias = _options.database(options.get("database"))
        if options.get("this_host"):
            options = {**options, "host": socket.gethostname()}  # as workers name themselves
        where = f"on {options['host']}" if options["host"] else "on any host"
        try:
            with connections[alias].cursor() as cursor:
                cursor.execute(
                    sql.HEALTH, {"silence": options["max_silence"], "host": options["host"]}
                )
                alive, newest = cursor.fetchone()
                hung = _hung_here(cursor, options) if options.get("this_host") else []
            backlog = {} if options["skip_backlog"] else status.backlog(alias)
            held = horizon.oldest(horizon.holders(alias))
            locking = report.lockers(options.get("max_queue_lock_age", 60.0), alias)
            queue_mb = report.queue_bytes(alias) / 1024 / 1024 if locking else 0.0
            fail_unhandled = options.get("fail_unhandled", False)
            gaps = (
                wiring.unhandled(alias, options["max_silence"])
                if fail_unhandled or not options["skip_backlog"]
                else []
            )
        except DatabaseError as exc:
            return False, f"unhealthy: database unreachable: {str(exc).strip().splitlines()[0]}"
        if hung:
            return False, "unhealthy: " + "; ".join(
                f"worker {name} hung: no progress for {silence:.0f} s" for name, silence in hung
            )
        if not alive:
            return False, (
                f"unhealthy: no worker {where} sent a heartbeat in the last "
                f"{options['max_silence']:g} s"
            )
        gap_report = "; ".join(map(str, gaps))
        if gaps and fail_unhandled:
            return False, f"unhealthy: {gap_report}"
        limit = options.get("max_snapshot_age", 600.0)
        holding = held if held is not None and (held.seconds or 0.0) > limit else None
        if holding is not None and options.get("fail_held_snapshot"):
            return False, f"unhealthy: {holding} (> {limit:g} s)"
        worst = max(backlog.items(), key=lambda item: item[1][1], default=None)
        if worst and worst[1][1] > options["max_backlog_age"]:
            channel, (count, age) = worst
            unhandled = channel in {gap.channel for gap in gaps}
            nobody = "; no running listener handles it" if unhandled else ""
            return False, (
                f"unhealthy: the oldest due {channel} event has waited {age:.0f} s "
                f"(> {options['max_backlog_age']:g} s; {count} runnable){nobody}"
            )
        oldest = f"{worst[1][1]:.1f} s" if worst else "none due"
        warnings = [gap_report] if gaps else []
        if holding is not None:
            warnings.append(f"{holding} (> {limit:g} s): the event table cannot be vacuumed")
        if locking:
            warnings.append(f"{locking[0]} (the queue holds {queue_mb:.1f} MB)")
        warning = "".join(f"; warning: {w}" for w in warnings)
        return True, (
            f"ok: {alive} worker(s) alive {where} (newest heartbeat {newest:.1f} s "
            f"ago); oldest due event: {oldest}{warning}"
        )


def _hung_here(cursor: Any, options: dict[str, Any]) -> list[tuple[str, float]]:
    """Workers of this host whose process lives but whose heartbeat has gone silent.

    The supervisor refreshes the heartbeat of every worker it sees making progress, even
    inside a long handler, so silence from a live process means it is stuck. A row left
    by a process that is gone is not a hung worker (its replacement has its own row).
    """
    cursor.execute(sql.SILENT_WORKERS, {"host": options["host"], "silence": options["max_silence"]})
    return [(name, silence) for name, pid, silence in cursor.fetchall() if pid_alive(pid)]
