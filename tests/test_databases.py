"""Channels in a second database: their triggers, events, listeners and commands live there.

The project is the reference site plus an analytics app whose table the routers migrate
to a second alias, "other" (tests/multidb_settings.py, tests/analytics/), with the channel
page_viewed declared there. "other" is a real database on the test server, created and
migrated here with `manage.py migrate --database other`, as an operator would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from django.db import connection
from psycopg import sql

from blog.models import Post
from eventbus.models import EventRecord
from tests.support import Listener, database_url, free_port, manage, wait_until
from tests.test_observability import scrape, value


@dataclass(frozen=True)
class OtherDatabase:
    """The second database, and the environment of a process of the two-database site."""

    url: str
    env: dict[str, str]

    def query(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

    def view(self, path: str) -> int:
        """A page view written to the database, as the application would."""
        rows = self.query(
            "INSERT INTO analytics_pageview (path, counted) VALUES (%s, false) RETURNING id",
            (path,),
        )
        return int(rows[0][0])

    def counted(self, view: int) -> bool:
        return bool(
            self.query("SELECT counted FROM analytics_pageview WHERE id = %s", (view,))[0][0]
        )

    def events(self) -> list[tuple[str, str]]:
        return [
            (channel, state)
            for channel, state in self.query("SELECT channel, state FROM eventbus_event")
        ]


@pytest.fixture(scope="module")
def migrated_other(django_db_setup: None, django_db_blocker: Any) -> Iterator[OtherDatabase]:
    """test_<name>_other, migrated by `migrate --database other` with the project's routers."""
    with django_db_blocker.unblock():
        default = database_url()
        name = f"{connection.settings_dict['NAME']}_other"
    server = urlunsplit(urlsplit(default)._replace(path="/postgres"))
    url = urlunsplit(urlsplit(default)._replace(path=f"/{name}"))
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    other = OtherDatabase(
        url, {"DJANGO_SETTINGS_MODULE": "tests.multidb_settings", "OTHER_DATABASE_URL": url}
    )
    migrated = manage("migrate", "--database", "other", env=other.env)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    yield other
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def other(migrated_other: OtherDatabase) -> Iterator[OtherDatabase]:
    """The second database, emptied of page views and events after each test."""
    yield migrated_other
    migrated_other.query(
        "TRUNCATE analytics_pageview, eventbus_event, eventbus_worker RESTART IDENTITY CASCADE"
    )


@pytest.mark.django_db(transaction=True)
def test_a_channel_in_the_second_database_has_its_trigger_and_table_there_only(
    other: OtherDatabase,
) -> None:
    triggers = other.query(
        "SELECT tgname FROM pg_trigger WHERE tgname LIKE 'pgtrigger_eb_page_viewed_%%'"
    )
    assert [name for (name,) in triggers] == ["pgtrigger_eb_page_viewed_ins_25c06"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('analytics_pageview')")
        assert cursor.fetchone() == (None,)  # the routers keep the table out of default
    check = manage("check", env=other.env)  # compares each database's triggers with the code
    assert check.returncode == 0, check.stdout + check.stderr
    assert "eventbus.E02" not in check.stdout + check.stderr


@pytest.mark.django_db(transaction=True)
def test_a_write_there_makes_its_event_there_and_none_in_default(other: OtherDatabase) -> None:
    other.view("/pricing")
    assert other.events() == [("page_viewed", "pending")]
    assert not EventRecord.objects.filter(channel="page_viewed").exists()


@pytest.mark.django_db(transaction=True)
def test_listen_database_other_handles_it_in_the_claim_transaction_there(
    other: OtherDatabase, start_listener: Callable[..., Listener]
) -> None:
    """The handler names no database; it runs on "other" because the event was claimed there
    (the routers would send its query to default, which has no such table)."""
    listener = start_listener("--database", "other", env_extra=other.env, workers=1)
    view = other.view("/pricing")
    wait_until(lambda: other.counted(view), what=f"view {view} counted; log:\n{listener.log()}")
    wait_until(lambda: other.events() == [("page_viewed", "done")], what="its event done")
    assert "on database other started" in listener.log()
    assert "on database default" not in listener.log()  # no worker for default's channels


@pytest.mark.django_db(transaction=True)
def test_one_listener_serves_every_database_that_holds_its_channels(
    other: OtherDatabase, start_listener: Callable[..., Listener], post: Post
) -> None:
    listener = start_listener(env_extra=other.env, workers=2)
    view = other.view("/about")
    Post.objects.create(title="Second", body="one two three", author=post.author)
    wait_until(lambda: other.counted(view), what=f"view {view} counted; log:\n{listener.log()}")
    wait_until(
        lambda: not EventRecord.objects.exclude(state="done").exists(),
        what=f"default's events done; log:\n{listener.log()}",
    )
    log = listener.log()
    assert "on database default started" in log
    assert "on database other started" in log
    assert "page_viewed" not in log.split("on database default started")[1].splitlines()[0]


@pytest.mark.django_db(transaction=True)
def test_events_recover_and_health_take_database(
    other: OtherDatabase, start_listener: Callable[..., Listener]
) -> None:
    view = other.view("/docs")
    listed = manage("events", "--database", "other", "--json", env=other.env)
    assert '"channel": "page_viewed"' in listed.stdout, listed.stdout + listed.stderr
    assert "page_viewed" not in manage("events", "--json", env=other.env).stdout

    replayed = manage("recover", "--database", "other", env=other.env)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "page_viewed" in replayed.stdout and "handled" in replayed.stdout
    assert other.counted(view)

    start_listener("--database", "other", env_extra=other.env, workers=1)
    health = wait_until(
        lambda: (
            (r := manage("eventbus_health", "--database", "other", env=other.env)).returncode == 0
            and r
        ),
        what="eventbus_health --database other to pass",
    )
    assert "1 worker(s) alive" in health.stdout
    default_health = manage("eventbus_health", env=other.env)  # nobody serves default
    assert default_health.returncode == 1
    assert "no worker" in default_health.stderr


def test_commands_refuse_a_database_alias_that_does_not_exist(
    migrated_other: OtherDatabase,
) -> None:
    for command in (["events"], ["events", "retry"], ["recover"], ["eventbus_health"]):
        result = manage(*command, "--database", "nowhere", env=migrated_other.env)
        assert result.returncode != 0
        assert "no database alias 'nowhere' in DATABASES" in result.stderr, command


def test_the_checks_name_a_channel_in_a_database_that_does_not_exist(
    migrated_other: OtherDatabase,
) -> None:
    env = {**migrated_other.env, "PAGE_VIEWED_DATABASE": "nowhere"}
    check = manage("check", env=env)
    assert check.returncode == 1
    assert "(eventbus.E040) channel page_viewed names database 'nowhere'" in check.stderr
    listen = manage("listen", env=env, timeout=60)
    assert listen.returncode == 1
    assert "(eventbus.E040) channel page_viewed names database 'nowhere'" in listen.stderr


def test_the_checks_name_a_channel_whose_model_the_routers_keep_out_of_its_database(
    migrated_other: OtherDatabase,
) -> None:
    env = {**migrated_other.env, "PAGE_VIEWED_DATABASE": "default"}
    check = manage("check", env=env)
    assert check.returncode == 1
    assert (
        "(eventbus.E041) channel page_viewed lives in database 'default', but the database "
        "routers do not migrate analytics.PageView there" in check.stderr
    )


@pytest.mark.django_db(transaction=True)
def test_a_paused_channel_of_the_other_database_shows_in_the_listeners_metrics(
    other: OtherDatabase, start_listener: Callable[..., Listener]
) -> None:
    """`events pause --database other`: the events wait there, and the metrics of the
    listener serving both databases count them in the backlog, under their channel."""
    paused = manage("events", "pause", "page_viewed", "--database", "other", env=other.env)
    assert paused.returncode == 0, paused.stdout + paused.stderr
    port = free_port()
    start_listener("--metrics-port", str(port), env_extra=other.env, workers=2)
    other.view("/held")

    def backlog_shows_it() -> dict | None:
        metrics = scrape(port)
        return metrics if value(metrics, "eventbus_backlog", channel="page_viewed") else None

    metrics = wait_until(backlog_shows_it, what="page_viewed in the backlog gauge")
    assert value(metrics, "eventbus_workers_alive") == 2  # one per database
    resumed = manage("events", "resume", "page_viewed", "--database", "other", env=other.env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    wait_until(lambda: other.events() == [("page_viewed", "done")], what="resumed and handled")
