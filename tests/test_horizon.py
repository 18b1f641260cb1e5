"""Operators see a held snapshot coming: health and metrics name what holds back the
cleanup of the event table (a session's snapshot, a prepared transaction, a slot)."""

from __future__ import annotations

import psycopg
import pytest

from eventbus.models import WorkerRecord
from eventbus.operating import horizon
from tests.support import database_url, manage

pytestmark = pytest.mark.django_db(transaction=True)


def health(*args: str):
    return manage("eventbus_health", "--skip-backlog", *args, timeout=60)


def test_a_snapshot_held_open_is_reported_by_health_and_metrics() -> None:
    WorkerRecord.objects.create(name="probe:1", host="probe", pid=1, channels="*")
    with psycopg.connect(database_url(), application_name="analytics", autocommit=True) as held:
        held.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        held.execute("SELECT count(*) FROM eventbus_event")  # takes the snapshot
        pid = held.info.backend_pid
        mine = [h for h in horizon.holders() if h.name.startswith(f"{pid} ")]
        assert [(h.kind, h.name) for h in mine] == [
            ("session", f"{pid} (analytics, idle in transaction)")
        ]
        seconds, xids = horizon.held_back(horizon.holders())
        assert seconds >= mine[0].seconds >= 0 and xids >= 0

        warned = health("--max-snapshot-age", "0")
        assert warned.returncode == 0, warned.stderr
        assert (
            f"warning: session {pid} (analytics, idle in transaction) holds back cleanup (for"
            in (warned.stdout)
        )
        failed = health("--max-snapshot-age", "0", "--fail-held-snapshot")
        assert failed.returncode == 1
        assert failed.stderr.startswith("unhealthy: session ")
        assert health("--max-snapshot-age", "3600", "--fail-held-snapshot").returncode == 0
        held.execute("ROLLBACK")
    gone = health("--max-snapshot-age", "0")
    assert f"session {pid} " not in gone.stdout
