"""A scratch primary and its real streaming replica, lagging on purpose, for the specs.

The server the tests use has no `replication` line in its pg_hba.conf, and the specs must
not change it. So this makes a cluster of its own (bench/cluster.py: `initdb` into a
temporary directory, a free port of 127.0.0.1, trust auth, everything stopped and removed
on the way out): `wal_level = replica`, then a replica with `pg_basebackup -R` and
`recovery_min_apply_delay`. Where a cluster cannot be made (no binaries, no `postgres`
user to run them as root, initdb fails), `ReplicationUnavailable` says why, for a skip.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from bench.cluster import USER, ClusterUnavailable, Server, append, free_port, scratch_servers
from tests.support import wait_until

PROGRAMS = ("initdb", "pg_ctl", "pg_basebackup")
ReplicationUnavailable = ClusterUnavailable  # why no streaming replica can be made here


@dataclass(frozen=True)
class Pair:
    primary: str  # the URL of the site's database on the primary
    replica: str  # the same database on the replica
    delay: float  # the replica's recovery_min_apply_delay, seconds


@contextlib.contextmanager
def streaming_pair(database: str, delay: float = 2.0) -> Iterator[Pair]:
    """A primary with an empty `database`, and its replica `delay` seconds behind."""
    with scratch_servers("replication", PROGRAMS) as servers:
        primary = servers.initdb(
            "primary",
            {
                "wal_level": "replica",
                "max_wal_senders": "4",
                "fsync": "off",  # a scratch cluster: speed over durability
                "full_page_writes": "off",
            },
        )
        append(primary.data / "pg_hba.conf", "host replication all 127.0.0.1/32 trust")
        servers.start(primary.data)
        replica = Server(servers.base / "replica", free_port())
        source = ["-h", "127.0.0.1", "-p", str(primary.port), "-U", USER]
        servers.run("pg_basebackup", *source, "-D", str(replica.data), "-R", "-c", "fast", "-N")
        append(
            replica.data / "postgresql.conf",
            f"port = {replica.port}",
            f"recovery_min_apply_delay = '{int(delay * 1000)}ms'",
        )
        servers.start(replica.data)
        with psycopg.connect(primary.url(), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        yield Pair(primary.url(database), replica.url(database), delay)


def caught_up(pair: Pair, timeout: float = 60) -> None:
    """Wait until the replica has replayed everything the primary has written so far."""
    with psycopg.connect(pair.primary, autocommit=True) as primary:
        lsn = primary.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
    # Its `postgres` database: the site's may not be there yet.
    server = urlunsplit(urlsplit(pair.replica)._replace(path="/postgres"))
    with psycopg.connect(server, autocommit=True) as replica:
        wait_until(
            lambda: replica.execute(
                "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn]
            ).fetchone()[0],  # type: ignore[index]
            timeout=timeout + pair.delay,
            interval=0.1,
            what=f"the replica to replay up to {lsn}",
        )
