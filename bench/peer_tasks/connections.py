"""Connections kept across tasks: one per worker thread (or greenlet), opened on first use.

This is the tuning the peers need to be compared fairly. Celery's Django integration and
procrastinate's Django contrib close the database connection around every task by
default (2-5x slower on a one-insert task); here each worker slot keeps its own.
"""

from __future__ import annotations

import os
import smtplib
import threading
from typing import Any

_local = threading.local()  # gevent's monkey-patching makes this per greenlet


def database() -> Any:
    import psycopg

    conn = getattr(_local, "db", None)
    if conn is None or conn.closed:
        conn = _local.db = psycopg.connect(os.environ["PEERS_DATABASE_URL"], autocommit=True)
    return conn


def insert_row(comment_id: int) -> None:
    database().execute("INSERT INTO bench_peer_row (comment_id) VALUES (%s)", [comment_id])


def send_email(comment_id: int) -> None:
    """One message to the relay over this slot's SMTP connection, as eventbus's handler does."""
    for attempt in (1, 2):
        smtp = getattr(_local, "smtp", None)
        if smtp is None:
            smtp = _local.smtp = smtplib.SMTP("127.0.0.1", int(os.environ["PEERS_SMTP_PORT"]))
        body = (
            "From: blog@localhost\r\nTo: alice@example.com\r\n"
            f'Subject: New comment on "Benchmarks"\r\nX-Peer-Comment: {comment_id}\r\n\r\n'
            f"bob commented on your post:\r\n\r\n> comment {comment_id}\r\n"
        )
        try:
            smtp.sendmail("blog@localhost", ["alice@example.com"], body)
            return
        except (smtplib.SMTPServerDisconnected, OSError):
            _local.smtp = None
            if attempt == 2:
                raise
