"""./manage.py eventbus_health: exit 0 or 1 with a one-line reason, for container probes.

Healthy when a worker has sent a heartbeat recently (workers heartbeat every
HEALTH_INTERVAL seconds, also while draining) and no due event has waited too long.
"""

from __future__ import annotations

import socket
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import DatabaseError, connections

from eventbus import conf, sql, status


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

    def handle(self, *args: Any, **options: Any) -> None:
        ok, line = self.evaluate(options)
        (self.stdout if ok else self.stderr).write(line)
        if not ok:
            raise SystemExit(1)

    def evaluate(self, options: dict[str, Any]) -> tuple[bool, str]:
        alias = conf.get().DATABASE_ALIAS
        if options.get("this_host"):
            options = {**options, "host": socket.gethostname()}  # as workers name themselves
        where = f"on {options['host']}" if options["host"] else "on any host"
        try:
            with connections[alias].cursor() as cursor:
                cursor.execute(
                    sql.HEALTH, {"silence": options["max_silence"], "host": options["host"]}
                )
                alive, newest = cursor.fetchone()
            backlog = {} if options["skip_backlog"] else status.backlog(alias)
        except DatabaseError as exc:
            return False, f"unhealthy: database unreachable: {str(exc).strip().splitlines()[0]}"
        if not alive:
            return False, (
                f"unhealthy: no worker {where} sent a heartbeat in the last "
                f"{options['max_silence']:g} s"
            )
        worst = max(backlog.items(), key=lambda item: item[1][1], default=None)
        if worst and worst[1][1] > options["max_backlog_age"]:
            channel, (count, age) = worst
            return False, (
                f"unhealthy: the oldest due {channel} event has waited {age:.0f} s "
                f"(> {options['max_backlog_age']:g} s; {count} runnable)"
            )
        oldest = f"{worst[1][1]:.1f} s" if worst else "none due"
        return True, (
            f"ok: {alive} worker(s) alive {where} (newest heartbeat {newest:.1f} s "
            f"ago); oldest due event: {oldest}"
        )
