"""The listen connection reaches the same server and database as Django's own."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.backends.postgresql.base import DatabaseWrapper

from eventbus.running.connections import connect_listen, connection_params
from eventbus.running.notifier import Notifier

pytestmark = pytest.mark.django_db


def test_the_listen_connection_is_on_djangos_server_and_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database(), current_setting('data_directory')")
        django_side = cursor.fetchone()
    with connect_listen() as listen:
        assert listen.execute(
            "SELECT current_database(), current_setting('data_directory')"
        ).fetchone() == tuple(django_side)


def test_a_socket_directory_given_in_options_is_used() -> None:
    """dj-database-url puts `?host=/socket/dir` in OPTIONS; the listen connection keeps it."""
    wrapper = DatabaseWrapper(
        {
            **connection.settings_dict,
            "HOST": "",
            "PORT": "",
            "OPTIONS": {"host": "/run/sockets", "sslmode": "disable"},
        }
    )
    params = connection_params(wrapper)
    assert params["host"] == "/run/sockets"
    assert params["sslmode"] == "disable"
    assert "cursor_factory" not in params and "context" not in params


def test_the_notifier_listens_on_a_backend_django_can_see() -> None:
    with Notifier(["eventbus_comment_created"]) as notifier, connection.cursor() as cursor:
        cursor.execute(
            "SELECT application_name FROM pg_stat_activity WHERE pid = %s",
            [notifier.backend_pid],
        )
        assert cursor.fetchone() == ("eventbus-listen",)
