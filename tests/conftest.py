from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from blog import mail
from blog.models import Post
from eventbus.running import ledger
from tests.support import Listener, SMTPServer, manage_env


@pytest.fixture(autouse=True)
def _close_crash_ledgers() -> Iterator[None]:
    """In-process executors keep a second connection (the crash ledger); close it so the
    test database can be dropped."""
    yield
    ledger.close_all()


@pytest.fixture(autouse=True)
def _close_smtp_connections() -> Iterator[None]:
    """The reference site keeps one SMTP connection per thread (blog/mail.py): close it, so
    a test that points email elsewhere never sends through an earlier test's server."""
    yield
    mail.close()


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    server = SMTPServer().start()
    yield server
    mail.close()  # this process's cached connection points at the server being stopped
    server.stop()


@pytest.fixture
def start_listener(tmp_path: Path) -> Iterator[Callable[..., Listener]]:
    """Start `./manage.py listen ARGS` processes; all are stopped at the end of the test."""
    started: list[Listener] = []

    def start(
        *args: str,
        smtp: SMTPServer | None = None,
        workers: int | None = None,
        env_extra: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> Listener:
        env = manage_env(smtp, **(env_extra or {}))
        listener = Listener(tmp_path / f"listen-{len(started)}.log", *args, env=env, prefix=prefix)
        started.append(listener)
        if workers:
            listener.wait_started(workers)
        return listener

    yield start
    for listener in started:
        listener.stop()


@pytest.fixture
def author(db: None) -> User:
    return User.objects.create_user("ada", email="ada@example.com")


@pytest.fixture
def reader(db: None) -> User:
    return User.objects.create_user("bob", email="bob@example.com")


@pytest.fixture
def post(author: User) -> Post:
    return Post.objects.create(title="Engines", body="the analytical engine weaves", author=author)
