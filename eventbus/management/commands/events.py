"""./manage.py events: list and filter events; re-queue failed or dead ones; purge history."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from eventbus import conf
from eventbus.declaring import wiring
from eventbus.event import RUNNABLE, STATES
from eventbus.management.commands import _options
from eventbus.models import EventRecord
from eventbus.operating import maintenance, status
from eventbus.sql import Scope

COLUMNS = (
    ("id", 8),
    ("channel", 24),
    ("key", 8),
    ("state", 8),
    ("attempts", 8),
    ("created_at", 19),
    ("finished_at", 19),
    ("worker", 16),
    ("last_error", 40),
)


def _filters(parser: CommandParser) -> None:
    parser.add_argument(
        "--state", action="append", metavar="STATE", help=f"one of {', '.join(STATES)} (repeatable)"
    )
    parser.add_argument("--channel", action="append", metavar="NAME", help="(repeatable)")
    parser.add_argument("--since", metavar="TIMESTAMP", help="written at or after")


class Command(BaseCommand):
    help = (
        "List events (a table, or --json); `events retry` re-queues failed or dead "
        "events; `events purge` deletes done or dead history in batches."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        _filters(parser)
        parser.add_argument("--id", type=int, action="append", dest="ids", metavar="ID")
        parser.add_argument("--limit", type=int, default=50, help="newest N (default 50)")
        parser.add_argument("--json", action="store_true", help="JSON lines, one per event")
        actions = parser.add_subparsers(dest="action", required=False)
        retry = actions.add_parser("retry", help="re-queue failed or dead events")
        retry.add_argument("ids", nargs="*", type=int, metavar="ID")
        _filters(retry)
        purge = actions.add_parser("purge", help="delete done or dead events in batches")
        purge.add_argument(
            "--older-than",
            required=True,
            metavar="AGE",
            help="finished longer ago than this: 30d, 12h, 90m",
        )
        purge.add_argument(
            "--state", action="append", metavar="STATE", help="done or dead (default: done)"
        )
        purge.add_argument("--batch-size", type=int, default=1000)

    def handle(self, *args: Any, **options: Any) -> None:
        action = options.get("action")
        if action == "retry":
            self.retry(options)
        elif action == "purge":
            self.purge(options)
        else:
            self.list(options)

    def list(self, options: dict[str, Any]) -> None:
        records = EventRecord.objects.using(conf.get().DATABASE_ALIAS).order_by("-id")
        wanted = _options.states(options["state"], (*STATES, status.RUNNING))
        if wanted:  # running is derived: look among the runnable, then keep what matches
            stored = set(wanted) - {status.RUNNING}
            stored |= set(RUNNABLE) if status.RUNNING in wanted else set()
            records = records.filter(state__in=stored)
        if channels := _options.channels(options["channel"]):
            records = records.filter(channel__in=channels)
        if since := _options.timestamp(options["since"]):
            records = records.filter(created_at__gte=since)
        if options["ids"]:
            records = records.filter(id__in=options["ids"])
        rows = status.describe(list(records[: options["limit"]]))
        if wanted:
            rows = [row for row in rows if row["state"] in wanted]
        if options["json"]:
            for row in rows:
                self.stdout.write(json.dumps(row))
            self.report_unhandled(channels)
            return
        self.stdout.write("  ".join(name.ljust(width) for name, width in COLUMNS).rstrip())
        for row in rows:
            cells = []
            for name, width in COLUMNS:
                value = row[name]
                text = "" if value is None else str(value)
                if name.endswith("_at") and value:
                    text = text[:19].replace("T", " ")
                if name == "last_error":
                    text = text.splitlines()[0] if text else ""
                cells.append(text[:width].ljust(width))
            self.stdout.write("  ".join(cells).rstrip())
        if not rows:
            self.stdout.write("(no events)")
        self.report_unhandled(channels)

    def report_unhandled(self, channels: tuple[str, ...] | None) -> None:
        """Name waiting events that no live listener handles; stderr keeps --json clean."""
        for gap in wiring.unhandled(conf.get().DATABASE_ALIAS):
            if channels is None or gap.channel in channels:
                self.stderr.write(str(gap))

    def retry(self, options: dict[str, Any]) -> None:
        ids = tuple(options["ids"]) or None
        wanted = _options.states(options["state"], maintenance.REQUEUABLE)
        channels = _options.channels(options["channel"])
        if ids is None and wanted is None and channels is None:
            raise CommandError("say which events: IDs, --state or --channel")
        scope = Scope(
            states=wanted or maintenance.REQUEUABLE,
            channels=channels,
            ids=ids,
            since=_options.timestamp(options["since"]),
        )
        rows = maintenance.requeue(scope, conf.get().DATABASE_ALIAS)
        listed = f": {', '.join(str(i) for i, _ in rows)}" if 0 < len(rows) <= 20 else ""
        self.stdout.write(f"re-queued {len(rows)} event(s){listed}")
        if ids:
            missed = sorted(set(ids) - {i for i, _ in rows})
            if missed:
                self.stderr.write(
                    f"not re-queued (not failed or dead, or unknown): {', '.join(map(str, missed))}"
                )

    def purge(self, options: dict[str, Any]) -> None:
        age = _options.duration(options["older_than"])
        wanted = _options.states(options["state"], maintenance.PURGEABLE) or ("done",)
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        deleted = maintenance.purge(
            wanted, timezone.now() - age, options["batch_size"], alias=conf.get().DATABASE_ALIAS
        )
        self.stdout.write(
            f"purged {deleted} {'/'.join(wanted)} event(s) finished more than "
            f"{options['older_than']} ago"
        )
