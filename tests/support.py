"""Helpers for the tests: a real SMTP server, real listener processes, waiting on conditions."""

from __future__ import annotations

import contextlib
import email
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiosmtpd.controller import Controller
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def wait_until(
    condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or condition}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mailbox:
    """Messages received by the test's SMTP server."""

    messages: list[Message] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content)
        with self.lock:
            self.messages.append(message)
        return "250 OK"

    def snapshot(self) -> list[Message]:
        with self.lock:
            return list(self.messages)

    def event_ids(self) -> list[int]:
        return [int(m["X-Eventbus-Event"]) for m in self.snapshot()]


class SMTPServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.mailbox = Mailbox()
        self._controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port)

    def start(self) -> SMTPServer:
        self._controller.start()
        self.running = True
        return self

    def stop(self) -> None:
        """Stop accepting mail (idempotent: a test may stop it early to play an outage)."""
        if getattr(self, "running", False):
            self._controller.stop()
            self.running = False


def database_url() -> str:
    """The URL of the database the tests use (pytest-django's test database)."""
    s = connection.settings_dict
    auth = quote(s.get("USER") or "", safe="")
    if s.get("PASSWORD"):
        auth += ":" + quote(s["PASSWORD"], safe="")
    socket_dir = (s.get("OPTIONS") or {}).get("host")  # dj-database-url's `?host=/dir`
    host = quote(s.get("HOST") or "", safe="")
    port = f":{s['PORT']}" if s.get("PORT") else ""
    query = f"?host={quote(socket_dir, safe='/')}" if socket_dir and not host else ""
    return f"postgresql://{auth}@{host}{port}/{s['NAME']}{query}"


def manage_env(smtp: SMTPServer | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "DATABASE_URL": database_url(), "PYTHONUNBUFFERED": "1"}
    if smtp is not None:
        env.update(
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
            EMAIL_HOST="127.0.0.1",
            EMAIL_PORT=str(smtp.port),
        )
    env.update(extra)
    return env


def manage(
    *args: str,
    smtp: SMTPServer | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ./manage.py ARGS as a real process against the test database.

    `env` adds or overrides variables (another DATABASE_URL); `prefix` runs it inside
    another command (a network namespace).
    """
    return subprocess.run(
        [*prefix, sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=manage_env(smtp, **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Listener:
    """`./manage.py listen …` as a real process, its output in a log file."""

    def __init__(
        self,
        log_path: Path,
        *args: str,
        smtp: SMTPServer | None = None,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        """`prefix` runs the listener inside another command (a new network namespace)."""
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "manage.py", "listen", *args],
            cwd=ROOT,
            env=env or manage_env(smtp),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text()

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(p) for p in children.read_text().split()]
        except FileNotFoundError:
            return []

    def wait_started(self, workers: int, timeout: float = 30) -> None:
        wait_until(
            lambda: self.log().count(" started (channels") >= workers,
            timeout,
            what=f"{workers} worker(s) to start; log:\n{self.log()}",
        )

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM, as systemd or Kubernetes would; returns the exit code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        else:  # the supervisor is gone; make sure no orphaned worker survives it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


class HTTPReceiver:
    """A real HTTP server that records POSTs and answers with the statuses it is given."""

    def __init__(self, statuses: list[int]) -> None:
        import http.server

        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses = list(statuses)
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((dict(self.headers), body))
                code = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/post-processed"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
