"""./manage.py demo: start the listener, write posts, tags and comments, show them handled.

The writes start once the workers are listening, step by step, so what the demo shows is
the live path (a NOTIFY at commit wakes an idle worker), not only the drain at start-up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.db.models import Count

from blog.models import Category, Comment, Post, Tag
from eventbus import conf
from eventbus.models import EventRecord, WorkerRecord

ADMIN_URL = "http://127.0.0.1:8000/admin/eventbus/eventrecord/"


class Command(BaseCommand):
    help = "Run the listener with a demo workload and show every event handled."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--processes", type=int, default=2)
        parser.add_argument("--comments", type=int, default=5, help="bulk-created comments")

    def handle(self, *args: Any, **options: Any) -> None:
        self.say(f"database: {_describe_database()}")
        call_command("migrate", verbosity=0)
        first_event = _last_event_id()
        listener = self.start_listener(options["processes"])
        try:
            self.wait_for_workers(listener, options["processes"])
            self.write_workload(options["comments"])
            self.wait_for_events(first_event)
        finally:
            code = self.stop_listener(listener)
        self.report(first_event)
        self.say(f"listener stopped with exit code {code}")
        if code != 0:
            raise CommandError("the listener did not stop cleanly")
        self.say(f"see these events in the admin: {ADMIN_URL}")
        self.stdout.write(
            "    log in with a user of your own: ./run manage createsuperuser\n"
            "    then serve the site:            ./run manage runserver"
        )

    def say(self, text: str) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING(f"demo: {text}"))
        self.stdout.flush()

    def start_listener(self, processes: int) -> subprocess.Popen[bytes]:
        self.say(f"starting ./manage.py listen --processes {processes}")
        listener = subprocess.Popen(
            [sys.executable, "manage.py", "listen", "--processes", str(processes)],
            cwd=settings.BASE_DIR,
            env=os.environ.copy(),  # DATABASE_URL points at the same (maybe embedded) server
        )
        return listener

    def wait_for_workers(
        self, listener: subprocess.Popen[bytes], processes: int, timeout: float = 60
    ) -> None:
        """Until every worker has sent its first heartbeat, which it does after LISTEN."""
        since = _database_now()
        deadline = time.monotonic() + timeout
        while WorkerRecord.objects.filter(started_at__gte=since).count() < processes:
            if listener.poll() is not None:
                raise CommandError(f"the listener exited with code {listener.returncode}")
            if time.monotonic() > deadline:
                raise CommandError(f"the workers did not start within {timeout:.0f} s")
            time.sleep(0.05)
        self.say(f"{processes} worker(s) listening and idle; now the writes, one step at a time")

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        """Say what the step writes; after it, wait for its events and say how fast they ran."""
        self.say(text)
        after = _last_event_id()
        yield
        self.wait_for_events(after)
        events = EventRecord.objects.filter(id__gt=after, finished_at__isnull=False)
        waits = sorted(
            (e.finished_at - e.created_at).total_seconds() * 1000
            for e in events.only("created_at", "finished_at")
        )
        if waits:
            how = (
                "the commit's NOTIFY woke an idle worker"
                if waits[-1] < conf.get().POLL_INTERVAL * 1000
                else "some were found by the poll"
            )
            self.stdout.write(
                f"    {len(waits)} event(s) handled {waits[0]:.0f}-{waits[-1]:.0f} ms after "
                f"the write: {how}"
            )

    def write_workload(self, comments: int) -> None:
        run = int(time.time())
        alice, _ = User.objects.get_or_create(
            username="alice", defaults={"email": "alice@example.com"}
        )
        bob, _ = User.objects.get_or_create(username="bob", defaults={"email": "bob@example.com"})
        python, _ = Tag.objects.get_or_create(name="python")
        postgres, _ = Tag.objects.get_or_create(name="postgres")
        howto, _ = Category.objects.get_or_create(name="how-to")

        with self.step("alice writes two posts and tags them (save, M2M add)"):
            post = Post.objects.create(
                title=f"Events without a broker ({run})",
                body="Triggers write the event in the same transaction as the row.",
                author=alice,
            )
            post.tags.add(python, postgres)
            post.categories.add(howto)
            second = Post.objects.create(title=f"Notes ({run})", body="short", author=alice)
            second.tags.add(python)

        with self.step("alice comments on her own post (no email), bob comments (one email)"):
            Comment.objects.create(post=post, author=alice, body="Thanks for reading!")
            Comment.objects.create(post=post, author=bob, body="This replaced our Celery setup.")

        with self.step(
            f"bob bulk-creates {comments} comments (bulk_create: no signals, still events)"
        ):
            Comment.objects.bulk_create(
                [
                    Comment(post=second, author=bob, body=f"bulk comment {i}")
                    for i in range(comments)
                ]
            )
        with self.step("alice edits a body with QuerySet.update() and removes a tag"):
            Post.objects.filter(pk=second.pk).update(body="a longer body with seven words now")
            second.tags.remove(python)

    def wait_for_events(self, after_id: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        pending = EventRecord.objects.filter(id__gt=after_id, state__in=["pending", "failed"])
        while pending.exists():
            if time.monotonic() > deadline:
                raise CommandError(f"{pending.count()} events still pending after {timeout} s")
            time.sleep(0.1)

    def stop_listener(self, listener: subprocess.Popen[bytes]) -> int:
        self.say("all events handled; stopping the listener with SIGTERM")
        listener.send_signal(signal.SIGTERM)
        try:
            return listener.wait(30)
        except subprocess.TimeoutExpired:
            listener.kill()
            return listener.wait()

    def report(self, after_id: int) -> None:
        events = EventRecord.objects.filter(id__gt=after_id)
        self.say("events of this run, by channel and state:")
        rows = events.values("channel", "state").annotate(n=Count("id")).order_by("channel")
        for row in rows:
            self.stdout.write(f"    {row['channel']:<26} {row['state']:<8} {row['n']:>5}")
        self.say("posts (word_count and processed_at filled by the post_created handler):")
        for post in Post.objects.filter(author__username="alice").order_by("-id")[:2]:
            self.stdout.write(
                f"    {post.title!r}: word_count={post.word_count} "
                f"processed_at={post.processed_at:%H:%M:%S}"
            )
        self.say("tags and categories (post_count kept by events; links counted afresh):")
        for model in (Tag, Category):
            for item in model.objects.annotate(links=Count("posts")).order_by("name"):
                mark = "ok" if item.post_count == item.links else "MISMATCH"
                self.stdout.write(
                    f"    {item.name:<12} post_count={item.post_count:<4} "
                    f"links={item.links:<4} {mark}"
                )


def _last_event_id() -> int:
    return EventRecord.objects.order_by("-id").values_list("id", flat=True).first() or 0


def _database_now() -> Any:
    """The database's clock, which stamps the workers' rows (this host's may differ)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        return cursor.fetchone()[0]


def _describe_database() -> str:
    db = settings.DATABASES["default"]
    where = db.get("HOST") or db.get("OPTIONS", {}).get("host") or "the default socket"
    if str(where).startswith("/"):
        where = f"embedded PostgreSQL at {where}"
    return f"{db['NAME']} on {where}"
