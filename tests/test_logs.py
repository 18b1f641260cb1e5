"""Logs out of the box: a project with no LOGGING still sees what the engine does.

Each spec runs the real `manage.py listen` or `recover` under `tests/bare_settings.py`, a
settings module with no LOGGING at all, as a newcomer's project has.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from django.db import transaction

from blog.models import Post
from eventbus.models import EventRecord
from tests.support import Listener, manage, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
StartListener = Callable[..., Listener]

BARE = {"DJANGO_SETTINGS_MODULE": "tests.bare_settings"}
# `2026-11-22 21:17:53,516 INFO worker-0 eventbus.executor: …`: time, level, process.
TIME_LEVEL = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<process>\S+) "


def lines_matching(log: str, pattern: str) -> list[re.Match[str]]:
    return [m for m in re.finditer(TIME_LEVEL + pattern, log, re.MULTILINE)]


def write_post(author: User) -> int:
    """A post, and so a post_created event; returns the event's id."""
    Post.objects.create(title="t", body="three short words", author=author)
    return EventRecord.objects.filter(channel="post_created").latest("id").pk


def test_listen_without_logging_prints_its_start_and_each_state_change(
    start_listener: StartListener, author: User
) -> None:
    listener = start_listener(env_extra=BARE)
    wait_until(lambda: "started (channels" in listener.log(), 30, what="the worker to start")
    event_id = write_post(author)
    handled = rf"eventbus\.executor: event {event_id} post_created: handled in"
    wait_until(lambda: lines_matching(listener.log(), handled), 15, what=listener.log())

    log = listener.log()
    [supervisor] = lines_matching(log, r"eventbus\.supervisor: supervisor \d+ started")
    assert (supervisor["level"], supervisor["process"]) == ("INFO", "MainProcess")
    [worker] = lines_matching(
        log, r"eventbus\.worker: worker \S+ on database default started \(channels: all\)"
    )
    assert (worker["level"], worker["process"]) == ("INFO", "worker-0")
    [done] = lines_matching(log, handled)
    assert (done["level"], done["process"]) == ("INFO", "worker-0")


def test_recover_without_logging_prints_its_start_and_each_state_change(author: User) -> None:
    event_id = write_post(author)  # no listener runs: the event waits

    result = manage("recover", env=BARE)

    assert result.returncode == 0, result.stderr
    assert lines_matching(result.stderr, r"eventbus\.recovery: recover@\S+ started")
    [done] = lines_matching(
        result.stderr, rf"eventbus\.executor: event {event_id} post_created: handled in"
    )
    assert done["level"] == "INFO"


def test_log_level_warning_silences_info(start_listener: StartListener, author: User) -> None:
    listener = start_listener(env_extra={**BARE, "EVENTBUS_LOG_LEVEL": "WARNING"})
    with transaction.atomic():  # the post is gone before its handler runs: dead at once
        event_id = write_post(author)
        Post.objects.all().delete()
    dead = rf"eventbus\.executor: event {event_id} post_created: dead after attempt 1: RowGone"
    wait_until(lambda: lines_matching(listener.log(), dead), 30, what=listener.log())
    listener.terminate()  # its stop lines, at INFO, would come now

    [line] = lines_matching(listener.log(), dead)
    assert (line["level"], line["process"]) == ("ERROR", "worker-0")
    assert " INFO " not in listener.log()


def test_a_projects_logging_for_eventbus_wins(start_listener: StartListener, author: User) -> None:
    listener = start_listener(env_extra={"DJANGO_SETTINGS_MODULE": "tests.logging_settings"})
    event_id = write_post(author)
    ours = f"OURS [INFO] eventbus.executor | event {event_id} post_created: handled in"
    wait_until(lambda: ours in listener.log(), 30, what=listener.log())

    assert "OURS [INFO] eventbus.supervisor | supervisor" in listener.log()
    assert not re.search(TIME_LEVEL, listener.log(), re.MULTILINE)  # nothing added beside it


def test_json_lines_without_logging(start_listener: StartListener, author: User) -> None:
    listener = start_listener("--log-format", "json", env_extra=BARE)
    event_id = write_post(author)
    wait_until(lambda: f'"event_id": {event_id}' in listener.log(), 30, what=listener.log())

    lines = [json.loads(line) for line in listener.log().splitlines()]
    [handled] = [line for line in lines if line.get("event_id") == event_id]
    assert handled["channel"] == "post_created" and handled["level"] == "info"
    assert handled["process"] == "worker-0" and handled["time"]
