"""./manage.py listen: run worker processes that handle events as they are committed."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import OperationalError, connections

from eventbus import conf, sql
from eventbus.declaring import installed, placement, registry, wiring
from eventbus.management.commands import _options
from eventbus.models import EventRecord, InflightRecord, PauseRecord, RollupRecord, WorkerRecord
from eventbus.operating import databases, horizon, logs, metrics, status
from eventbus.running.supervisor import Supervisor
from eventbus.running.worker import WorkerOptions
from eventbus.storing import report

logger = logging.getLogger("eventbus.listen")


class Command(BaseCommand):
    help = "Handle events: N worker processes claim committed events and run their handlers."

    def add_arguments(self, parser: CommandParser) -> None:
        settings = conf.get()
        parser.add_argument(
            "--processes",
            type=int,
            default=settings.PROCESSES,
            help=f"worker processes (default {settings.PROCESSES}; EVENTBUS_PROCESSES)",
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            default=settings.CONCURRENCY,
            help="handlers each process runs at once, one thread and one database "
            f"connection each (default {settings.CONCURRENCY}; EVENTBUS_CONCURRENCY)",
        )
        parser.add_argument(
            "--channels", nargs="+", metavar="NAME", help="channels to handle (default: all)"
        )
        parser.add_argument(
            "--database",
            nargs="+",
            metavar="ALIAS",
            dest="databases",
            help="the databases to serve, by Django alias: --processes workers for each "
            "(default: every database that holds a channel this listener handles)",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=settings.BATCH_SIZE,
            help=f"events claimed per round trip (default {settings.BATCH_SIZE})",
        )
        parser.add_argument(
            "--poll-interval",
            type=float,
            default=settings.POLL_INTERVAL,
            help="seconds between table polls when no NOTIFY arrives "
            f"(default {settings.POLL_INTERVAL})",
        )
        parser.add_argument(
            "--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on PORT"
        )
        parser.add_argument(
            "--log-format", choices=["text", "json"], default="text", help="text or JSON lines"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        settings = conf.get()
        if options["processes"] < 1:
            raise CommandError("--processes must be at least 1")
        if options["concurrency"] < 1:
            raise CommandError("--concurrency must be at least 1")
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        if options["poll_interval"] <= 0:
            raise CommandError("--poll-interval must be positive")
        channels = _options.channels(options["channels"])
        aliases = _served_databases(channels, options["databases"])
        worker_options = [
            WorkerOptions(
                channels=channels,
                batch_size=options["batch_size"],
                poll_interval=options["poll_interval"],
                reconnect_max_delay=settings.RECONNECT_MAX_DELAY,
                alias=alias,
                health_interval=settings.HEALTH_INTERVAL,
                done_retention=settings.DONE_RETENTION,
                purge_interval=settings.PURGE_INTERVAL,
                queue_slot_events=settings.QUEUE_SLOT_EVENTS,
                history_partition=settings.HISTORY_PARTITION,
                concurrency=options["concurrency"],
            )
            for alias in aliases
        ]
        logs.configure(options["log_format"])
        for alias in aliases:
            _require_migrated(alias)
            _require_triggers(alias)
        supervisor = Supervisor(
            options["processes"],
            worker_options,
            settings.SHUTDOWN_TIMEOUT,
            hang_grace=settings.HANG_GRACE,
        )
        if options["metrics_port"]:
            metrics.enable()  # before the workers fork, so they count into shared files
            metrics.serve(
                options["metrics_port"],
                supervisor.workers_alive,
                lambda: _merged(status.backlog_direct(a) for a in aliases),
                unhandled=lambda: {
                    u.channel: u.count for a in aliases for u in wiring.unhandled_direct(a)
                },
                held_back=lambda: max(
                    horizon.held_back(horizon.holders_direct(a)) for a in aliases
                ),
                queue_bytes=lambda: sum(report.queue_bytes_direct(a) for a in aliases),
            )
        code = supervisor.run()
        if code:
            raise SystemExit(code)


def _served_databases(channels: tuple[str, ...] | None, requested: list[str] | None) -> list[str]:
    """The aliases to serve: those requested, or every one holding a handled channel.

    Every channel of a served database needs a handler here (of those named with
    --channels); channels of other databases are another listener's business.
    """
    for alias in requested or ():
        try:
            placement.require_alias(alias)
        except ValueError as exc:
            raise CommandError(f"--database: {exc}") from None
    wanted = channels
    if requested:
        queues = channels if channels is not None else tuple(registry.queue_names())
        wanted = tuple(q for q in queues if placement.database_of(q) in requested)
        empty = [a for a in requested if a not in placement.by_database(wanted)]
        if empty:
            where = placement.by_database(queues)
            raise CommandError(
                f"--database: no channel to handle lives in {', '.join(empty)} "
                f"(channels by database: {_describe(where)})"
            )
    try:
        handled = wiring.require_handlers(wanted)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    holding = placement.by_database(handled)
    for alias, names in holding.items():
        try:
            placement.require_alias(alias)
        except ValueError as exc:
            raise CommandError(
                f"channel(s) {', '.join(names)}: {exc} (eventbus.E040 in manage.py check)"
            ) from None
    return [a for a in placement.aliases(handled) if a in holding]


def _describe(by_alias: dict[str, tuple[str, ...]]) -> str:
    return "; ".join(f"{a}: {', '.join(qs)}" for a, qs in by_alias.items()) or "none declared"


def _merged(backlogs: Iterable[dict[str, tuple[int, float]]]) -> dict[str, tuple[int, float]]:
    """Each database's backlog per channel, in one: a channel lives in one database."""
    merged: dict[str, tuple[int, float]] = {}
    for backlog in backlogs:
        merged.update(backlog)
    return merged


def _require_triggers(alias: str) -> None:
    """Refuse to start while a declared channel's trigger is missing, outdated or disabled:
    its writes would make no events, and a running listener would hide that."""
    try:
        warnings = installed.require_installed(alias)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    finally:
        connections[alias].close()  # not inherited by the forked workers
    for warning in warnings:
        logger.warning("%s", warning)


def _require_migrated(alias: str) -> None:
    """Refuse to start on a database without the eventbus tables, with the remedy.

    An unreachable database is no reason to refuse: workers wait for it with backoff.
    One that does not exist is: no wait makes it appear.
    """
    try:
        with connections[alias].cursor() as cursor:
            tables = (EventRecord, WorkerRecord, InflightRecord, RollupRecord, PauseRecord)
            needed = [m._meta.db_table for m in tables]
            cursor.execute(sql.MISSING_TABLES, [needed])
            missing = [row[0] for row in cursor.fetchall()]
    except OperationalError as exc:
        remedy = databases.missing_database(exc)
        if remedy:
            raise CommandError(remedy) from None
        return
    finally:
        connections[alias].close()  # not inherited by the forked workers
    if missing:
        name = connections[alias].settings_dict["NAME"]
        raise CommandError(
            f"database {name!r} lacks the tables {', '.join(missing)}: "
            "run ./manage.py migrate before starting listeners"
        )
