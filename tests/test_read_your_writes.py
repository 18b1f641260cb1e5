"""Read your own writes: with the site reading a lagging replica, the API and the admin
still see what was written a moment ago.

A real streaming replica (tests/replication.py: `initdb`, `pg_basebackup -R`,
`recovery_min_apply_delay = 2s`) of a scratch primary the site is migrated onto. The
site runs with `REPLICA_DATABASE_URL` set, so its routers read the replica, and
tests/lagging_site.py drives it with Django's test client: a new author at once names a
new post with a new tag, its status URL is polled at once, an admin logs in and at once opens the
admin. Then the same rows, read through the routers, are shown missing from the replica:
the answers came from the primary, and cannot have passed by luck. Skipped, with the
reason, where no cluster can be made (no PostgreSQL binaries, no postgres user as root).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.replication import Pair, ReplicationUnavailable, caught_up, streaming_pair
from tests.support import ROOT, manage, manage_env, wait_until


@pytest.fixture(scope="module")
def lagging() -> Iterator[tuple[Pair, dict[str, Any]]]:
    """The replica pair, and what the site answered while its replica lagged."""
    started = time.monotonic()
    try:
        with streaming_pair("eventbus_site", delay=2.0) as pair:
            migrated = manage("migrate", "-v0", env={"DATABASE_URL": pair.primary})
            assert migrated.returncode == 0, migrated.stdout + migrated.stderr
            caught_up(pair)  # the schema is on the replica: what it lacks is the new rows
            made = time.monotonic() - started
            env = {"DATABASE_URL": pair.primary, "REPLICA_DATABASE_URL": pair.replica}
            driven = subprocess.run(
                [sys.executable, "-m", "tests.lagging_site"],
                cwd=ROOT,
                env=manage_env(**env),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert driven.returncode == 0, driven.stdout + driven.stderr
            seen = json.loads(driven.stdout.strip().splitlines()[-1])
            print(f"streaming replica made and the site migrated in {made:.1f} s")
            yield pair, seen
    except ReplicationUnavailable as exc:
        pytest.skip(f"no streaming replica can be made here: {exc}")


def test_a_status_url_answers_right_after_its_202(lagging: tuple[Pair, dict[str, Any]]) -> None:
    _, seen = lagging
    api = seen["api"]
    assert api["created"] == 202, api["created_body"]
    assert api["status"] == 200, api["status_body"]  # not 404 "no post N"
    assert api["status_body"]["post_id"] == api["created_body"]["post_id"]
    assert "post_created" in [e["channel"] for e in api["status_body"]["events"]]


def test_an_author_created_a_moment_ago_is_accepted(lagging: tuple[Pair, dict[str, Any]]) -> None:
    _, seen = lagging
    assert seen["api"]["created"] == 202, seen["api"]["created_body"]  # not "unknown author"


def test_a_new_post_keeps_the_new_tag_it_names(lagging: tuple[Pair, dict[str, Any]]) -> None:
    _, seen = lagging
    api = seen["api"]
    assert api["created"] == 202, api["created_body"]
    assert api["tags"] == api["tags_asked"]  # the tag made, then found, on the primary


def test_a_staff_member_just_logged_in_gets_the_admin(lagging: tuple[Pair, dict[str, Any]]) -> None:
    _, seen = lagging
    admin = seen["admin"]
    assert admin["admin"] == 200, f"sent to {admin['admin_location']}"  # not back to login
    assert admin["replica_had_session"] is False, "the replica did not lag: proves nothing"


def test_the_replica_lagged_behind_those_answers_then_caught_up(
    lagging: tuple[Pair, dict[str, Any]],
) -> None:
    pair, seen = lagging
    api = seen["api"]
    assert api["created"] == 202, api["created_body"]
    # Read through the site's routers right after the answers: not there yet.
    assert api["replica_had_author"] is False
    assert api["replica_had_post"] is False
    # The same replica, a little later: a copy of the primary, only behind.
    with psycopg.connect(pair.replica, autocommit=True) as replica:
        wait_until(
            lambda: replica.execute(
                "SELECT 1 FROM blog_post WHERE id = %s", [api["created_body"]["post_id"]]
            ).fetchone(),
            timeout=30,
            what="the replica to receive the post",
        )
