"""./manage.py demo: start the listener, write posts, tags and comments, show them handled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count

from blog.models import Category, Comment, Post, Tag
from eventbus.models import EventRecord


class Command(BaseCommand):
    help = "Run the listener with a demo workload and show every event handled."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--processes", type=int, default=2)
        parser.add_argument("--comments", type=int, default=5, help="bulk-created comments")

    def handle(self, *args: Any, **options: Any) -> None:
        self.say(f"database: {_describe_database()}")
        call_command("migrate", verbosity=0)
        first_event = EventRecord.objects.order_by("-id").values_list("id", flat=True).first() or 0
        listener = self.start_listener(options["processes"])
        try:
            self.write_workload(options["comments"])
            self.wait_for_events(first_event)
        finally:
            code = self.stop_listener(listener)
        self.report(first_event)
        self.say(f"listener stopped with exit code {code}")
        if code != 0:
            raise CommandError("the listener did not stop cleanly")

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

    def write_workload(self, comments: int) -> None:
        run = int(time.time())
        alice, _ = User.objects.get_or_create(
            username="alice", defaults={"email": "alice@example.com"}
        )
        bob, _ = User.objects.get_or_create(username="bob", defaults={"email": "bob@example.com"})
        python, _ = Tag.objects.get_or_create(name="python")
        postgres, _ = Tag.objects.get_or_create(name="postgres")
        howto, _ = Category.objects.get_or_create(name="how-to")

        self.say("alice writes two posts and tags them (save, M2M add)")
        post = Post.objects.create(
            title=f"Events without a broker ({run})",
            body="Triggers write the event in the same transaction as the row.",
            author=alice,
        )
        post.tags.add(python, postgres)
        post.categories.add(howto)
        second = Post.objects.create(title=f"Notes ({run})", body="short", author=alice)
        second.tags.add(python)

        self.say("alice comments on her own post (no email), bob comments (one email)")
        Comment.objects.create(post=post, author=alice, body="Thanks for reading!")
        Comment.objects.create(post=post, author=bob, body="This replaced our Celery setup.")

        self.say(f"bob bulk-creates {comments} comments (bulk_create: no signals, still events)")
        Comment.objects.bulk_create(
            [Comment(post=second, author=bob, body=f"bulk comment {i}") for i in range(comments)]
        )
        self.say("alice edits a body with QuerySet.update() and removes a tag")
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


def _describe_database() -> str:
    db = settings.DATABASES["default"]
    where = db.get("HOST") or db.get("OPTIONS", {}).get("host") or "the default socket"
    if str(where).startswith("/"):
        where = f"embedded PostgreSQL at {where}"
    return f"{db['NAME']} on {where}"
