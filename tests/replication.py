"""A scratch primary and its real streaming replica, lagging on purpose, for the specs.

The server the tests use has no `replication` line in its pg_hba.conf, and the specs must
not change it. So this makes a cluster of its own: `initdb` into a temporary directory,
`wal_level = replica`, then a replica with `pg_basebackup -R` and
`recovery_min_apply_delay`, each on a free port of 127.0.0.1 with trust auth. Both
servers are stopped and their directories removed on the way out, even after a failure.
PostgreSQL refuses to run as root, so as root its programs run as the `postgres` user
(`runuser`). Where a cluster cannot be made (no binaries, no such user, initdb fails),
`ReplicationUnavailable` says why, for a skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from tests.support import free_port, wait_until

PROGRAMS = ("initdb", "pg_ctl", "pg_basebackup")
USER = "root"  # the clusters' superuser (trust auth, 127.0.0.1 only)


class ReplicationUnavailable(Exception):
    """Why no streaming replica can be made on this machine."""


@dataclass(frozen=True)
class Pair:
    primary: str  # the URL of the site's database on the primary
    replica: str  # the same database on the replica
    delay: float  # the replica's recovery_min_apply_delay, seconds


def bindir() -> Path:
    """The directory of initdb, pg_ctl and pg_basebackup (PATH first, then Debian's)."""
    found = shutil.which("initdb")
    candidates = [Path(os.path.realpath(found)).parent] if found else []
    candidates += [Path(d) for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for directory in candidates:
        if all((directory / program).is_file() for program in PROGRAMS):
            return directory
    raise ReplicationUnavailable(f"no directory holds {', '.join(PROGRAMS)}")


def run_as() -> tuple[list[str], str | None]:
    """The prefix that runs PostgreSQL's programs as a user they accept, and its name."""
    if os.geteuid() != 0:
        return [], None
    if shutil.which("runuser") is None:
        raise ReplicationUnavailable("running as root, and runuser is not installed")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ReplicationUnavailable("running as root, and there is no postgres user") from None
    return ["runuser", "-u", "postgres", "--"], "postgres"


def _url(port: int, database: str) -> str:
    return f"postgresql://{USER}@127.0.0.1:{port}/{database}"


@contextlib.contextmanager
def streaming_pair(database: str, delay: float = 2.0) -> Iterator[Pair]:
    """A primary with an empty `database`, and its replica `delay` seconds behind."""
    programs = bindir()
    prefix, owner = run_as()
    base = Path(tempfile.mkdtemp(prefix="eventbus-replication-"))
    started: list[Path] = []

    def run(program: str, *args: str) -> None:
        command = [*prefix, str(programs / program), *args]
        done = subprocess.run(command, cwd=base, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{program} {' '.join(args)}:\n{done.stdout}{done.stderr}")

    def start(data: Path) -> None:
        started.append(data)
        run("pg_ctl", "-D", str(data), "-l", f"{data}.log", "-w", "start")

    try:
        if owner is not None:
            shutil.chown(base, owner)
        primary_dir, replica_dir = base / "primary", base / "replica"
        primary_port, replica_port = free_port(), free_port()
        try:
            quick = ["-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]
            run("initdb", "-D", str(primary_dir), "-U", USER, "-A", "trust", *quick)
        except RuntimeError as exc:
            raise ReplicationUnavailable(f"initdb cannot make a cluster here: {exc}") from None
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{base}'",
            "wal_level": "replica",
            "max_wal_senders": "4",
            "fsync": "off",  # a scratch cluster: speed over durability
            "full_page_writes": "off",
            "port": str(primary_port),
        }
        _append(primary_dir / "postgresql.conf", *(f"{k} = {v}" for k, v in settings.items()))
        _append(primary_dir / "pg_hba.conf", "host replication all 127.0.0.1/32 trust")
        start(primary_dir)
        source = ["-h", "127.0.0.1", "-p", str(primary_port), "-U", USER]
        run("pg_basebackup", *source, "-D", str(replica_dir), "-R", "-c", "fast", "-N")
        _append(
            replica_dir / "postgresql.conf",
            f"port = {replica_port}",
            f"recovery_min_apply_delay = '{int(delay * 1000)}ms'",
        )
        start(replica_dir)
        with psycopg.connect(_url(primary_port, "postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        yield Pair(_url(primary_port, database), _url(replica_port, database), delay)
    finally:
        for data in reversed(started):  # each stopped, whatever the others do
            with contextlib.suppress(subprocess.SubprocessError):
                subprocess.run(
                    [*prefix, str(programs / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                    cwd=base,
                    capture_output=True,
                    timeout=60,
                )
        shutil.rmtree(base, ignore_errors=True)


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


def _append(path: Path, *lines: str) -> None:
    """Append to a file of the cluster (of two settings, the later wins)."""
    with path.open("a") as f:
        f.writelines(line + "\n" for line in lines)
