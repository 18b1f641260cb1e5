"""./manage.py events: list and filter events; re-queue failed or dead ones; purge them;
pause and resume a channel."""

from __future__ import annotations

import getpass
import json
import socket
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.utils import timezone

from eventbus.declaring import wiring
from eventbus.event import DEAD, DONE, RUNNABLE, STATES
from eventbus.management.commands import _options
from eventbus.management.commands._base import EventbusCommand
from eventbus.models import EventRecord
from eventbus.operating import follow, maintenance, pauses, status
from eventbus.sql import Scope

COLUMNS = (
    "id",
    "channel",
    "key",
    "state",
    "attempts",
    "created_at",
    "finished_at",
    "worker",
    "last_error",
)


def _filters(parser: CommandParser, states: tuple[str, ...] = STATES) -> None:
    parser.add_argument(
        "--state", action="append", metavar="STATE", help=f"one of {', '.join(states)} (repeatable)"
    )
    parser.add_argument(
        "--channel",
        action="append",
        metavar="NAME",
        help="a declared channel, or one that only the event table still names (repeatable)",
    )
    parser.add_argument(
        "--key", action="append", metavar="KEY", help="only events of this key (repeatable)"
    )


def _since(parser: CommandParser) -> None:
    parser.add_argument("--since", metavar="TIMESTAMP", help="written at or after this ISO date")


def _cell(name: str, value: Any) -> str:
    """A table cell in full: keys are not cut, and an error shows its whole first line."""
    text = "" if value is None else str(value)
    if name.endswith("_at") and value:
        return text[:19].replace("T", " ")
    if name == "last_error":
        return text.splitlines()[0] if text.strip() else ""
    return text


class Command(EventbusCommand):
    help = (
        "List events (a table, or --json); `events retry` re-queues failed or dead "
        "events; `events purge` deletes events in batches (done or dead history; pending "
        "or failed ones only with --yes)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        _filters(parser, (*STATES, status.RUNNING))
        _since(parser)
        parser.add_argument(
            "--id", type=int, action="append", dest="ids", metavar="ID", help="(repeatable)"
        )
        parser.add_argument("--limit", type=int, default=50, help="newest N (default 50)")
        parser.add_argument("--json", action="store_true", help="JSON lines, one per event")
        _options.add_database(parser)
        actions = parser.add_subparsers(dest="action", required=False)
        retry = actions.add_parser("retry", help="re-queue failed or dead events")
        retry.add_argument("ids", nargs="*", type=int, metavar="ID", help="event ids")
        _filters(retry, maintenance.REQUEUABLE)
        _since(retry)
        retry.add_argument(
            "--collection",
            type=int,
            metavar="ID",
            help="the failed or dead events of the collection of event ID (a chain resumes "
            "at its failed step; what succeeded is not repeated)",
        )
        tree = actions.add_parser(
            "tree", help="the collection of an event: every event it caused, with its state"
        )
        tree.add_argument("id", type=int, metavar="ID", help="any event of the collection")
        tree.add_argument("--json", action="store_true", help="the collection as one JSON object")
        purge = actions.add_parser(
            "purge", help="delete events in batches: done or dead history, or a channel's"
        )
        purge.add_argument(
            "--older-than",
            metavar="AGE",
            help="finished (done, dead) or written (pending, failed) longer ago: 30d, 12h, 90m",
        )
        _filters(purge)
        purge.add_argument(
            "--batch-size", type=int, default=1000, help="events per transaction (default 1000)"
        )
        purge.add_argument(
            "--dry-run", action="store_true", help="count what would be purged; change nothing"
        )
        purge.add_argument(
            "--yes", action="store_true", help="really delete pending or failed events"
        )
        followed = actions.add_parser(
            "follow", help="print state changes live as they commit, until interrupted"
        )
        followed.add_argument(
            "--channel", action="append", metavar="NAME", help="this channel's (repeatable)"
        )
        followed.add_argument("--key", action="append", metavar="KEY", help="(repeatable)")
        followed.add_argument(
            "--collection", type=int, metavar="ID", help="a collection (any member's event id)"
        )
        followed.add_argument(
            "--last", type=int, default=20, help="show the newest N first (default 20)"
        )
        followed.add_argument(
            "--until-finished",
            action="store_true",
            help="exit once nothing followed is pending or failed (1 if any is dead)",
        )
        followed.add_argument("--json", action="store_true", help="JSON lines, one per change")
        pause = actions.add_parser(
            "pause",
            help="stop listeners claiming a channel or subscription: its events wait "
            "(without NAME: list what is paused)",
        )
        pause.add_argument("name", nargs="?", metavar="NAME", help="channel[:subscription]")
        resume = actions.add_parser(
            "resume", help="let listeners claim a paused channel again; they drain what waited"
        )
        resume.add_argument("name", metavar="NAME", help="channel[:subscription]")
        for action in (retry, tree, purge, followed, pause, resume):
            _options.add_database(action, inherited=True)

    def handle(self, *args: Any, **options: Any) -> None:
        action = options.get("action")
        if action == "retry":
            self.retry(options)
        elif action == "tree":
            self.tree(options)
        elif action == "purge":
            self.purge(options)
        elif action == "follow":
            self.follow(options)
        elif action == "pause":
            self.pause(options)
        elif action == "resume":
            self.resume(options)
        else:
            self.list(options)

    def list(self, options: dict[str, Any]) -> None:
        alias = _options.database(options.get("database"))
        wanted = _options.states(options["state"], (*STATES, status.RUNNING))
        stored = set(wanted or STATES) - {status.RUNNING}
        if wanted and status.RUNNING in wanted:  # derived: look among the runnable
            stored |= set(RUNNABLE)
        channels = _options.stored_channels(options["channel"], alias)
        scope = Scope(
            states=tuple(s for s in STATES if s in stored),
            channels=channels,
            keys=tuple(options["key"]) if options["key"] else None,
            ids=tuple(options["ids"]) if options["ids"] else None,
            since=_options.timestamp(options["since"]),
            due_only=False,
        )
        ids = status.newest_ids(scope, options["limit"], alias)
        records = EventRecord.objects.using(alias).filter(id__in=ids).order_by("-id")
        rows = status.describe(list(records), alias)
        if wanted:
            rows = [row for row in rows if row["state"] in wanted]
        if options["json"]:
            for row in rows:
                self.stdout.write(json.dumps(row))
        else:
            self.table(rows)
        self.report_unhandled(channels, alias)

    def table(self, rows: list[dict[str, Any]]) -> None:
        """Columns as wide as their widest value, so nothing is cut: UUID keys fit whole."""
        cells = [[_cell(name, row[name]) for name in COLUMNS] for row in rows]
        widths = [
            max(len(line[i]) for line in [list(COLUMNS), *cells]) for i in range(len(COLUMNS))
        ]
        for line in [list(COLUMNS), *cells]:
            self.stdout.write(
                "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            )
        if not rows:
            self.stdout.write("(no events)")

    def report_unhandled(self, channels: tuple[str, ...] | None, alias: str) -> None:
        """Name waiting events that no live listener handles; stderr keeps --json clean."""
        for gap in wiring.unhandled(alias):
            if channels is None or gap.channel in channels:
                self.stderr.write(str(gap))

    def retry(self, options: dict[str, Any]) -> None:
        alias = _options.database(options.get("database"))
        ids = tuple(options["ids"]) or None
        wanted = _options.states(options["state"], maintenance.REQUEUABLE)
        channels = _options.stored_channels(options["channel"], alias)
        keys = tuple(options["key"]) if options["key"] else None
        collection = None
        if options["collection"] is not None:
            collection = status.collection_id(options["collection"], alias)
            if collection is None:
                raise CommandError(f"no event {options['collection']}")
        if (ids, wanted, channels, keys, collection) == (None,) * 5:
            raise CommandError("say which events: IDs, --state, --channel, --key or --collection")
        scope = Scope(
            states=wanted or maintenance.REQUEUABLE,
            channels=channels,
            keys=keys,
            ids=ids,
            since=_options.timestamp(options["since"]),
            collection=collection,
        )
        rows = maintenance.requeue(scope, alias)
        listed = f": {', '.join(str(i) for i, _ in rows)}" if 0 < len(rows) <= 20 else ""
        self.stdout.write(f"re-queued {len(rows)} event(s){listed}")
        if ids:
            missed = sorted(set(ids) - {i for i, _ in rows})
            if missed:
                self.stderr.write(
                    "not re-queued (not failed or dead, a worker is handling it, or unknown): "
                    + ", ".join(map(str, missed))
                )

    def tree(self, options: dict[str, Any]) -> None:
        alias = _options.database(options.get("database"))
        collection = status.collection_id(options["id"], alias)
        if collection is None:
            raise CommandError(f"no event {options['id']}")
        found = status.collection(collection, alias)
        if options["json"]:
            self.stdout.write(json.dumps(found))
            return
        events = found["events"]
        self.stdout.write(f"collection {collection}: {found['state']} ({len(events)} event(s))")
        for depth, event in status.tree_order(events):
            self.stdout.write("  " * depth + _tree_line(event))

    def purge(self, options: dict[str, Any]) -> None:
        alias = _options.database(options.get("database"))
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        age = options["older_than"]
        before = timezone.now() - _options.duration(age) if age else None
        states = _options.states(options["state"], STATES) or (DONE,)
        channels = _options.stored_channels(options["channel"], alias)
        keys = tuple(options["key"]) if options["key"] else None
        if before is None and channels is None and keys is None:
            raise CommandError("say which events: --older-than, --channel or --key")
        scope = Scope(states=states, channels=channels, keys=keys, due_only=False)
        unfinished = [s for s in states if s in RUNNABLE]
        what = _purge_description(states, channels, keys, age)
        if options["dry_run"] or (unfinished and not options["yes"]):
            counts = maintenance.purgeable(scope, before, alias)
            total = sum(counts.values())
            if options["dry_run"] or total:
                self._counts("would purge", counts)
            if options["dry_run"]:
                self.stdout.write(f"total: {total} (dry run: nothing changed)")
                return
            if total:
                raise CommandError(
                    f"{'/'.join(unfinished)} events are work not yet done: add --yes to "
                    f"delete these {total} event(s), or --dry-run to count only"
                )
        deleted = maintenance.purge(
            scope, before, options["batch_size"], alias=alias, unfinished=True
        )
        self.stdout.write(f"purged {deleted} {what}")
        if unfinished and (held := sum(maintenance.purgeable(scope, before, alias).values())):
            self.stderr.write(
                f"left {held} event(s): a listener is handling them right now, or they "
                "were written during the purge; run it again to delete what is left"
            )

    def pause(self, options: dict[str, Any]) -> None:
        alias = _options.database(options.get("database"))
        name = options["name"]
        if name is None:
            for held in pauses.paused(alias):
                self.stdout.write(
                    f"{held.name}  paused {held.paused_at:%Y-%m-%d %H:%M:%S} by {held.paused_by}"
                )
            return
        try:
            added = pauses.pause(name, _operator(), alias)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if added:
            self.stdout.write(f"paused {name}: listeners claim none of its events until resumed")
        else:
            self.stdout.write(f"{name} was paused already")

    def resume(self, options: dict[str, Any]) -> None:
        alias = _options.database(options.get("database"))
        name = options["name"]
        resumed = pauses.resume(name, _operator(), alias)
        if resumed:
            self.stdout.write(f"resumed {', '.join(resumed)}: listeners drain what waited")
            return
        holder = pauses.paused_by(name, [p.name for p in pauses.paused(alias)])
        if holder is not None:
            raise CommandError(f"{name} is paused through its channel: resume {holder}")
        self.stdout.write(f"{name} was not paused")

    def _counts(self, title: str, counts: dict[tuple[str, str], int]) -> None:
        self.stdout.write(f"{title}:")
        if not counts:
            self.stdout.write("  (nothing)")
        for (channel, state), count in sorted(counts.items()):
            self.stdout.write(f"  {channel:<28} {state:<8} {count:>8}")

    def follow(self, options: dict[str, Any]) -> None:
        """`events follow`: see eventbus.operating.follow."""
        alias = _options.database(options.get("database"))
        if options["last"] < 0:
            raise CommandError("--last must be 0 or more")
        collection = options["collection"]
        if collection is not None:
            collection = follow.resolve_collection(collection, alias)
            if collection is None:
                raise CommandError(f"no event or collection {options['collection']}")
        followed = follow.Followed(
            channels=_options.stored_channels(options["channel"], alias),
            keys=tuple(options["key"]) if options["key"] else None,
            collection=collection,
            last=options["last"],
        )

        def line(text: str, out: Any = self.stdout) -> None:
            out.write(text)
            out.flush()  # live, also into a pipe

        def emit(change: follow.Change) -> None:
            line(json.dumps(change.as_json()) if options["json"] else change.text())

        follower = follow.Follower(
            followed, emit, lambda text: line(text, self.stderr), alias, options["until_finished"]
        )
        if follower.run():
            dead = sum(1 for row in follower.known.values() if row.state == DEAD)
            raise CommandError(f"finished: {dead} followed event(s) dead")


def _operator() -> str:
    """Who paused or resumed, for the log and `events pause`'s list."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "?"
    return f"{user}@{socket.gethostname()} (command line)"


def _tree_line(event: dict[str, Any]) -> str:
    """`812 post_created key=41: done (1 attempt)`, with a failure's first error line."""
    key = f" key={event['key']}" if event["key"] is not None else ""
    attempts = event["attempts"]
    text = f"{event['id']} {event['channel']}{key}: {event['state']}"
    text += f" ({attempts} attempt{'s' if attempts != 1 else ''})"
    if event["state"] != DONE and event["last_error"]:
        text += f": {_cell('last_error', event['last_error'])}"
    return text


def _purge_description(
    states: tuple[str, ...],
    channels: tuple[str, ...] | None,
    keys: tuple[str, ...] | None,
    age: str | None,
) -> str:
    """`done/dead event(s) of channel X with key K finished more than 30d ago`."""
    text = f"{'/'.join(states)} event(s)"
    if channels:
        text += f" of channel {', '.join(channels)}"
    if keys:
        text += f" with key {', '.join(keys)}"
    if age:
        finished = not set(states) & set(RUNNABLE)
        text += f" finished more than {age} ago" if finished else f" older than {age}"
    return text
