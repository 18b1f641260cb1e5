"""`events follow` prints state changes live as they commit, woken by NOTIFY alone; and
workers announce their commits only while someone follows.

Real listener processes, a real `manage.py events follow` process read line by line.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from eventbus.models import EventRecord
from eventbus.running import followers
from tests import follow_channels
from tests.support import ROOT, Listener, database_url, manage, manage_env, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

StartListener = Callable[..., Listener]
CHANNELS = {"EVENTBUS_LISTENER_MODULES": "listeners,tests.follow_channels"}
# Workers must learn of a follower from its hello, not from a heartbeat that happens to
# come at the right moment: heartbeats (and pings) a minute apart.
NO_HEARTBEAT = {**CHANNELS, "EVENTBUS_HEALTH_INTERVAL": "60"}
CLOCK = r"\d\d:\d\d:\d\d\.\d{3}"


class Following:
    """`./manage.py events follow ARGS` as a real process; its lines as they come."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "events", "follow", *args],
            cwd=ROOT,
            env=manage_env(**CHANNELS),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def line(self, pattern: str, timeout: float = 30) -> str:
        """The first output line matching `pattern`, waiting for it up to `timeout` s."""
        return str(
            wait_until(
                lambda: next((x for x in list(self.out) if re.search(pattern, x)), None),
                timeout,
                what=f"a line matching {pattern!r}; out:\n{self.printed()}",
            )
        )

    def watching(self) -> None:
        """Wait until it has said hello and shown where things stand."""
        wait_until(
            lambda: any("watching" in x for x in list(self.err)),
            30,
            what=f"follow to start; stderr:\n{self.printed()}",
        )

    def printed(self) -> str:
        return "\n".join([*self.out, "--- stderr:", *self.err])

    def interrupt(self) -> int:
        """Ctrl-C."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def follow() -> Iterator[Callable[..., Following]]:
    started: list[Following] = []

    def start(*args: str) -> Following:
        started.append(Following(*args))
        return started[-1]

    yield start
    for following in started:
        following.stop()


def state(event_id: int) -> str:
    return str(EventRecord.objects.get(pk=event_id).state)


def test_following_a_collection_shows_each_members_changes_until_all_are_done(
    start_listener: StartListener, follow: Callable[..., Following]
) -> None:
    """A root event, then the event its handler publishes: the follower shows the child
    as written by its cause, each member's way to done, and exits when all are done."""
    root = follow_channels.parent.publish({})
    following = follow("--collection", str(root), "--until-finished")
    following.watching()
    assert re.fullmatch(rf"{CLOCK}  event {root} follow_parent: pending", following.out[0])
    start_listener(env_extra=NO_HEARTBEAT)  # learns of the follower as it starts
    following.line(rf"event {root} follow_parent: pending -> done \(attempt 1\)$")
    child = EventRecord.objects.get(caused_by=root).pk  # committed with its cause's "done"
    following.line(rf"event {child} follow_child: written, caused by {root}$")
    following.line(rf"event {child} follow_child: pending -> done \(attempt 1\)$")
    assert following.process.wait(30) == 0, following.printed()  # --until-finished


@pytest.mark.parametrize("concurrency", ["1", "2"], ids=["one slot", "two handler slots"])
def test_a_failed_attempt_shows_when_it_runs_again_then_done(
    start_listener: StartListener, follow: Callable[..., Following], concurrency: str
) -> None:
    """Workers already running learn of a follower from its hello, at once."""
    start_listener("--concurrency", concurrency, env_extra=NO_HEARTBEAT, workers=1)
    following = follow("--channel", "follow_flaky")
    following.watching()
    event = follow_channels.flaky.publish({})
    following.line(rf"{CLOCK}  event {event} follow_flaky: written$")
    failed = following.line(rf"event {event} follow_flaky: pending -> failed")
    assert re.search(
        rf"-> failed \(attempt 1, retry at {CLOCK}\): RuntimeError: the first attempt fails$",
        failed,
    ), failed
    following.line(rf"event {event} follow_flaky: failed -> done \(attempt 2\)$")
    assert following.interrupt() == 0  # Ctrl-C: quietly
    assert not [x for x in following.err if "Traceback" in x], following.printed()


def test_workers_announce_their_commits_only_while_someone_follows(
    start_listener: StartListener,
) -> None:
    """A session LISTENs on the changes channel. Events are handled before a follower
    comes, while one is connected, and after it has left; a marker NOTIFY sent once they
    are done shows what was announced before it (notifications arrive in commit order).
    The workers see the follower leave at their next heartbeat (every second here)."""
    start_listener(env_extra={**CHANNELS, "EVENTBUS_HEALTH_INTERVAL": "1"}, workers=1)
    with psycopg.connect(database_url(), autocommit=True) as listening:
        listening.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(followers.CHANGES)))

        def announced_before_marker() -> list[str]:
            """Payloads on the changes channel up to the marker (which is not counted)."""
            with psycopg.connect(database_url(), autocommit=True) as other:
                other.execute("SELECT pg_notify(%s, 'marker')", [followers.CHANGES])
            payloads = []
            for notify in listening.notifies(timeout=30):
                if notify.payload == "marker":
                    return payloads
                payloads.append(notify.payload)
            raise AssertionError("the marker never came")

        def handle_some() -> list[str]:
            """Handle a few events; what was announced meanwhile."""
            ids = [follow_channels.plain.publish({}) for _ in range(5)]
            wait_until(lambda: all(state(i) == "done" for i in ids), what="events done")
            return announced_before_marker()

        assert handle_some() == [], "announced with nobody following"

        with psycopg.connect(
            database_url(), autocommit=True, application_name=followers.APPLICATION_NAME
        ) as follower:
            follower.execute("SELECT pg_notify(%s, '')", [followers.HELLO])
            # The worker, having learnt, announces once at once: wait for that first.
            next(listening.notifies(timeout=30, stop_after=1))
            assert handle_some(), "a follower is connected, but nothing was announced"
        wait_until(
            lambda: handle_some() == [], 30, 0, what="no announcements after the follower left"
        )


def test_retrying_a_dead_event_shows_it_pending_again(
    follow: Callable[..., Following],
) -> None:
    """`events retry` announces what it re-queued itself: no listener is running, and the
    event's channel is no longer declared (so no wake-up the follower hears)."""
    dead = EventRecord.objects.create(
        channel="follow_removed",
        operation="INSERT",
        table_name="x",
        new={},
        state="dead",
        attempts=3,
        last_error="RuntimeError: gave up\n  File ...",
    ).pk
    following = follow("--collection", str(dead))
    following.watching()
    assert re.fullmatch(
        rf"{CLOCK}  event {dead} follow_removed: dead \(attempt 3\): RuntimeError: gave up",
        following.out[0],
    ), following.printed()
    assert manage("events", "retry", str(dead)).returncode == 0
    following.line(rf"event {dead} follow_removed: dead -> pending \(re-queued\)$")
    assert following.interrupt() == 0


def test_an_event_in_flight_when_the_follower_comes_shows_done_when_it_commits(
    start_listener: StartListener, follow: Callable[..., Following], tmp_path: Path
) -> None:
    """The worker is inside the handler when the follower says hello, so that claim
    transaction commits unannounced; learning of the follower right after, the worker
    announces once."""
    started, gate = tmp_path / "started", tmp_path / "gate"
    start_listener(env_extra=NO_HEARTBEAT, workers=1)
    event = follow_channels.gated.publish({"started": str(started), "gate": str(gate)})
    wait_until(started.exists, what="the handler to start")
    following = follow("--channel", "follow_gated")
    following.watching()
    assert re.fullmatch(rf"{CLOCK}  event {event} follow_gated: pending", following.out[0])
    gate.touch()
    following.line(rf"event {event} follow_gated: pending -> done \(attempt 1\)$")


def test_a_follower_that_loses_its_connection_reconnects_and_shows_what_it_missed(
    start_listener: StartListener, follow: Callable[..., Following]
) -> None:
    """Its backend is terminated; it says so, reconnects, and looks again (--json)."""
    start_listener(env_extra=NO_HEARTBEAT, workers=1)
    following = follow("--channel", "follow_plain", "--json")
    following.watching()
    with psycopg.connect(database_url(), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            [followers.APPLICATION_NAME],
        )
    event = follow_channels.plain.publish({})  # while it is away, or just back
    wait_until(lambda: state(event) == "done", what="the event handled")
    wait_until(
        lambda: any("reconnected" in x for x in list(following.err)),
        what=f"a reconnection; stderr:\n{following.printed()}",
    )
    assert any("lost the database" in x for x in following.err), following.printed()
    changes = [json.loads(following.line(rf'"id": {event}\b.*"state": "done"'))]
    assert changes[0]["change"] == "changed", changes
    assert changes[0]["from"] == "pending" and changes[0]["attempts"] == 1, changes
    written = json.loads(following.line(rf'"change": "written", "id": {event}\b'))
    assert written["channel"] == "follow_plain" and written["caused_by"] is None, written


def test_recovering_a_dead_event_shows_it_done(follow: Callable[..., Following]) -> None:
    """`recover` replays in its own process, with no listener: it announces too."""
    dead = EventRecord.objects.create(
        channel="follow_plain", operation="INSERT", table_name="x", new={}, state="dead", attempts=1
    ).pk
    following = follow("--collection", str(dead))
    following.watching()
    result = manage("recover", "--dead", "--id", str(dead), env=CHANNELS)
    assert result.returncode == 0, result.stderr
    following.line(rf"event {dead} follow_plain: dead -> done \(attempt 2\)$")
