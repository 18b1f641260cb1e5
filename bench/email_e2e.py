"""End to end: N comments bulk-created, `listen --processes P` emails each post author.

Measures events per second from the first insert to the last email received by a local
SMTP server (aiosmtpd), and checks that no email is missing or doubled.

    ./run bench email_e2e [--comments 10000] [--processes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import BENCH_DB
from bench.database import ROOT, fresh_database


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comments", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=1, help="listen --concurrency")
    args = parser.parse_args()

    url = fresh_database(BENCH_DB)
    from django.contrib.auth.models import User

    from blog.models import Comment, Post
    from tests.support import SMTPServer, wait_until

    alice = User.objects.create_user("alice", email="alice@example.com")
    bob = User.objects.create_user("bob", email="bob@example.com")
    post = Post.objects.create(title="Benchmarks", body="numbers", author=alice)

    smtp = SMTPServer().start()
    plain = plain_smtplib_rate(smtp.port, min(args.comments, 5000))
    smtp.mailbox.messages.clear()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(smtp.port),
        "EVENTBUS_LOG_LEVEL": "WARNING",  # a log line per event would be measured too
    }
    listener = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "listen",
            "--processes",
            str(args.processes),
            "--batch-size",
            str(args.batch_size),
            "--concurrency",
            str(args.concurrency),
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        wait_until(
            lambda: post.__class__.objects.filter(pk=post.pk, word_count=1).exists(),
            30,
            what="the listener to be up (it processes the first post)",
        )
        started = time.perf_counter()
        for offset in range(0, args.comments, 1000):
            n = min(1000, args.comments - offset)
            Comment.objects.bulk_create(
                [Comment(post=post, author=bob, body=f"comment {offset + i}") for i in range(n)]
            )
        inserted = time.perf_counter()
        wait_until(
            lambda: len(smtp.mailbox.messages) >= args.comments,
            600,
            interval=0.01,
            what=f"{args.comments} emails",
        )
        finished = time.perf_counter()
    finally:
        listener.send_signal(signal.SIGTERM)
        listener.wait(30)
        smtp.stop()

    ids = smtp.mailbox.event_ids()
    result = {
        "scenario": "email_e2e",
        "comments": args.comments,
        "processes": args.processes,
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "insert_seconds": round(inserted - started, 3),
        "total_seconds": round(finished - started, 3),
        "events_per_second": round(args.comments / (finished - started)),
        "emails": len(ids),
        "duplicates": len(ids) - len(set(ids)),
        "plain_smtplib_per_second": round(plain),
    }
    result["fraction_of_plain_smtplib"] = round(result["events_per_second"] / plain, 2)
    print(
        f"{'comments':>10} {'processes':>10} {'slots':>6} {'seconds':>8} {'events/s':>9} "
        f"{'emails':>7} {'doubles':>8} {'plain smtplib/s':>16} {'fraction':>9}"
    )
    print(
        f"{result['comments']:>10} {result['processes']:>10} {args.concurrency:>6} "
        f"{result['total_seconds']:>8} {result['events_per_second']:>9} {result['emails']:>7} "
        f"{result['duplicates']:>8} {result['plain_smtplib_per_second']:>16} "
        f"{result['fraction_of_plain_smtplib']:>9}"
    )
    print(json.dumps(result))
    if result["duplicates"] or result["emails"] != args.comments:
        sys.exit(1)


def plain_smtplib_rate(port: int, n: int) -> float:
    """Messages per second the same sink takes from plain smtplib: one connection, the
    messages built beforehand, as a comment email (headers, a quoted body) would be."""
    import smtplib
    from email.message import EmailMessage

    messages = []
    for i in range(n):
        message = EmailMessage()
        message["Subject"] = 'New comment on "Benchmarks"'
        message["From"] = "webmaster@localhost"
        message["To"] = "alice@example.com"
        message["Message-ID"] = f"<plain.{i}@localhost>"
        message["X-Eventbus-Event"] = str(i)
        message.set_content(f'bob commented on your post "Benchmarks":\n\n> comment {i}\n')
        messages.append(message.as_bytes())
    started = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port) as client:
        for raw in messages:
            client.sendmail("webmaster@localhost", ["alice@example.com"], raw)
    return n / (time.perf_counter() - started)


if __name__ == "__main__":
    main()
