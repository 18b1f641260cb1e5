"""Sending mail from a worker: one SMTP connection per handler slot, reopened when it drops.

Opening an SMTP session per email costs a round trip and a handshake each time; a worker
handling thousands of comments keeps one open instead. smtplib connections are not
thread-safe, so with `listen --concurrency C` each slot (thread) keeps its own: C
conversations with the relay at once, which is what hides a slow relay's latency.
"""

from __future__ import annotations

import contextlib
import os
import smtplib
import threading
from typing import Any

from django.core.mail import EmailMessage, get_connection

_local = threading.local()  # .connection, .pid: this thread's, in this process


def _open() -> Any:
    connection = getattr(_local, "connection", None)
    if connection is None or getattr(_local, "pid", None) != os.getpid():
        connection = get_connection()
        connection.open()  # may raise: nothing is kept then
        _local.connection, _local.pid = connection, os.getpid()
    return connection


def close() -> None:
    """Close this thread's SMTP connection (the next send opens a new one)."""
    connection = getattr(_local, "connection", None)
    if connection is not None:
        with contextlib.suppress(Exception):  # it is already broken; nothing to save
            connection.close()
    _local.connection = None


def send(message: EmailMessage) -> None:
    """Send `message`, reusing this thread's connection; one reconnect on a dropped one."""
    for attempt in (1, 2):
        connection = _open()
        try:
            sent = connection.send_messages([message])
        except (smtplib.SMTPServerDisconnected, ConnectionError, OSError):
            close()
            if attempt == 2:
                raise
            continue
        if not sent:
            raise RuntimeError("the mail backend accepted no message")
        return
