"""./manage.py recover: replay events never handled, failed or dead, safely beside listeners."""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import replace
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import connections

from eventbus import conf
from eventbus.declaring import wiring
from eventbus.management.commands import _options
from eventbus.management.commands._base import EventbusCommand
from eventbus.operating import pauses, recovery
from eventbus.operating.backfill import backfill, fan_out
from eventbus.operating.progress import Progress
from eventbus.sql import Scope

PROGRESS_FROM = 500  # events: below this a replay is quick enough without progress


class Command(EventbusCommand):
    help = (
        "Replay pending and failed events (dead ones with --dead) through the normal claim "
        "path, coming back for events of ordered channels held back behind an older one of "
        "their key. Exits 1 if any event in scope is failed, dead or still pending at the end "
        "(events a running listener holds are reported, not counted), or if a channel named "
        "with --channel has events but no handler in this process."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--channel",
            action="append",
            metavar="NAME",
            help="only this channel (repeatable); a channel without a handler here is "
            "reported, not replayed",
        )
        parser.add_argument(
            "--key", action="append", metavar="KEY", help="only events of this key (repeatable)"
        )
        parser.add_argument(
            "--id",
            type=int,
            action="append",
            dest="ids",
            metavar="ID",
            help="only this event (repeatable)",
        )
        parser.add_argument(
            "--since",
            metavar="TIMESTAMP",
            help="only events written at or after this ISO date or date-time",
        )
        parser.add_argument(
            "--dead",
            action="store_true",
            help="replay dead events instead: each gets one more attempt",
        )
        parser.add_argument(
            "--backfill",
            action="store_true",
            help="first give each subscription named with --channel the events its channel "
            "made since --since, before the subscription existed (copied once from a sibling "
            "queue), then replay them",
        )
        parser.add_argument(
            "--backfill-from",
            metavar="QUEUE",
            help="the one queue to copy from with --backfill (default: every other queue of "
            "the channel, the channel's own name included, each change once)",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="count what would be replayed; change nothing"
        )
        _options.add_database(parser)
        parser.add_argument(
            "--batch-size",
            type=int,
            default=conf.get().BATCH_SIZE,
            metavar="N",
            help="events claimed and handled per transaction "
            f"(default {conf.get().BATCH_SIZE}; EVENTBUS_BATCH_SIZE)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        alias = _options.database(options["database"])
        if options["backfill"] or options["backfill_from"]:
            self._backfill(options, alias)
        requested = _options.stored_channels(options["channel"], alias)
        if not options["dry_run"]:  # what waits under a converted channel's own name
            with connections[alias].cursor() as cursor:  # goes to its subscriptions first
                fan_out(wiring.handled_channels(requested), cursor)
        scope = recovery.scope_for(
            requested,
            _options.timestamp(options["since"]),
            dead=options["dead"],
            ids=tuple(options["ids"]) if options["ids"] else None,
            keys=tuple(options["key"]) if options["key"] else None,
        )
        left_alone = recovery.without_handler(scope, requested, alias)
        scope, paused = self._without_paused(scope, alias)
        if options["dry_run"]:
            counts = recovery.plan(scope, alias)
            self._table("would replay", counts)
            self.stdout.write(f"total: {sum(counts.values())} (dry run: nothing changed)")
            self._report_left_alone(left_alone, options["dead"])
            self._report_paused(paused)
            return
        total = sum(recovery.plan(scope, alias).values())
        progress = Progress(total, sys.stderr) if total >= PROGRESS_FROM else None
        interrupted = threading.Event()  # Ctrl-C: finish the handler in flight, then stop
        previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
        try:
            summary = recovery.replay(
                scope,
                options["batch_size"],
                alias,
                on_batch=(lambda outcomes: progress.advance(len(outcomes))) if progress else None,
                should_stop=interrupted.is_set,
            )
        finally:
            signal.signal(signal.SIGINT, previous)
        if interrupted.is_set():
            self.stderr.write("interrupted: the replay stopped after the handler in flight")
        if progress:
            progress.finish()
        self._table("replayed", dict(summary.outcomes))
        self._report(summary)
        self._report_left_alone(left_alone, options["dead"])
        self._report_paused(paused)
        if summary.unhandled or (requested and (left_alone or paused)):
            raise SystemExit(1)

    def _without_paused(self, scope: Scope, alias: str) -> tuple[Scope, dict[tuple[str, str], int]]:
        """A paused queue's events wait for its resume, here too (an operator paused it
        for a reason: a broken relay, a partner's API down). Returns the scope without
        paused queues, and what they hold in scope per (queue, pausing name)."""
        names = {p.name for p in pauses.paused(alias)}
        held = {q: by for q in scope.channels or () if (by := pauses.paused_by(q, names))}
        if not held:
            return scope, {}
        waiting = recovery.plan(replace(scope, channels=tuple(held)), alias)
        counts: dict[tuple[str, str], int] = {}
        for (queue, _state), count in waiting.items():
            counts[(queue, held[queue])] = counts.get((queue, held[queue]), 0) + count
        kept = tuple(q for q in scope.channels if q not in held)
        return replace(scope, channels=kept), counts

    def _report_paused(self, paused: dict[tuple[str, str], int]) -> None:
        for (queue, by), count in sorted(paused.items()):
            through = f" (through its channel {by})" if by != queue else ""
            self.stderr.write(
                f"channel {queue}: {count} event(s) not replayed: paused{through}. "
                f"Resume it first: ./manage.py events resume {by}"
            )

    def _backfill(self, options: dict[str, Any], alias: str) -> None:
        """Copy history to each subscription named, before the replay takes it."""
        since = _options.timestamp(options["since"])
        names = options["channel"] or []
        if since is None or not names or options["dry_run"]:
            raise CommandError(
                "--backfill needs --since (from when) and --channel naming each subscription "
                "(comment_created:search_index), and makes changes: no --dry-run"
            )
        for name in names:
            try:
                copied = backfill(name, since, options["backfill_from"], alias)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(f"backfill: {copied}")

    def _report_left_alone(self, left_alone: dict[str, int], dead: bool) -> None:
        """Say which events nothing here can run, and what to do with them."""
        states = "--state dead" if dead else "--state pending --state failed --yes"
        for channel, count in left_alone.items():
            self.stderr.write(
                f"channel {channel}: {count} event(s) not replayed: no handler for it in "
                f"this process. Run recover where its handler is registered "
                f"({wiring.SETTING}), or, if the channel was removed, delete them: "
                f"./manage.py events purge --channel {channel} {states}"
            )

    def _report(self, summary: recovery.Summary) -> None:
        """One line of totals, then why events are left, so a non-zero exit explains itself."""
        line = (
            f"total: {sum(summary.outcomes.values())}; "
            f"still failed or dead: {summary.still_failed}; still pending: {summary.still_pending}"
        )
        if summary.in_flight:
            line += f"; being handled by a listener: {summary.in_flight}"
        self.stdout.write(line)
        if summary.still_pending:
            self.stdout.write(
                "pending events wait behind an older event of their key (ordered channel) "
                "that is out of scope or failed, or hit a transient error; "
                "list them with `./manage.py events --state pending`"
            )

    def _table(self, title: str, counts: dict[tuple[str, str], int]) -> None:
        self.stdout.write(f"{title}:")
        if not counts:
            self.stdout.write("  (nothing)")
        for (channel, outcome), count in sorted(counts.items()):
            self.stdout.write(f"  {channel:<28} {outcome:<8} {count:>8}")
