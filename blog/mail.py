"""Sending mail from a worker: one SMTP connection per process, reopened when it drops.

Opening an SMTP session per email costs a round trip and a handshake each time; a worker
handling thousands of comments keeps one open instead.
"""

from __future__ import annotations

import contextlib
import os
import smtplib
from typing import Any

from django.core.mail import EmailMessage, get_connection

_connection: Any = None
_owner_pid: int | None = None


def _open() -> Any:
    global _connection, _owner_pid
    if _connection is None or _owner_pid != os.getpid():
        _connection = get_connection()
        _connection.open()
        _owner_pid = os.getpid()
    return _connection


def close() -> None:
    """Close this process's SMTP connection (the next send opens a new one)."""
    global _connection
    if _connection is not None:
        with contextlib.suppress(Exception):  # it is already broken; nothing to save
            _connection.close()
    _connection = None


def send(message: EmailMessage) -> None:
    """Send `message`, reusing this process's connection; one reconnect on a dropped one."""
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
