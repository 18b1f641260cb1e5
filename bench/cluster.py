"""Scratch PostgreSQL servers made on the spot, for what the shared server cannot show.

The server these machines run at 127.0.0.1:5432 has its CI configuration (`autovacuum =
off`, no `replication` line in pg_hba.conf), and neither benchmarks nor specs may change
it. So a scenario that needs other settings makes its own server: `initdb` into a
temporary directory, settings appended to its postgresql.conf, on a free port of
127.0.0.1 with trust auth. Every server started is stopped and the directory removed on
the way out, even after a failure. PostgreSQL refuses to run as root, so as root its
programs run as the `postgres` user (`runuser`). Where no server can be made (no binaries,
no such user, initdb fails), `ClusterUnavailable` says why.

Used by the soak benchmark (bench/soak.py: production's autovacuum) and by the specs'
streaming replica (tests/replication.py).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

USER = "root"  # the scratch servers' superuser (trust auth, 127.0.0.1 only)


class ClusterUnavailable(Exception):
    """Why no scratch server can be made on this machine."""


@dataclass(frozen=True)
class Server:
    data: Path  # its data directory
    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"


def bindir(programs: Sequence[str] = ("initdb", "pg_ctl")) -> Path:
    """The directory that holds all of `programs` (PATH first, then Debian's)."""
    found = shutil.which("initdb")
    candidates = [Path(os.path.realpath(found)).parent] if found else []
    candidates += [Path(d) for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for directory in candidates:
        if all((directory / program).is_file() for program in programs):
            return directory
    raise ClusterUnavailable(f"no directory holds {', '.join(programs)}")


def run_as() -> tuple[list[str], str | None]:
    """The prefix that runs PostgreSQL's programs as a user they accept, and its name."""
    if os.geteuid() != 0:
        return [], None
    if shutil.which("runuser") is None:
        raise ClusterUnavailable("running as root, and runuser is not installed")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ClusterUnavailable("running as root, and there is no postgres user") from None
    return ["runuser", "-u", "postgres", "--"], "postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def append(path: Path, *lines: str) -> None:
    """Append to a file of a cluster (of two settings, the later wins)."""
    with path.open("a") as f:
        f.writelines(line + "\n" for line in lines)


class Servers:
    """A temporary directory to make servers in, and the servers started there."""

    def __init__(self, base: Path, programs: Path, prefix: list[str]) -> None:
        self.base = base
        self.programs = programs
        self.prefix = prefix
        self.started: list[Path] = []

    def run(self, program: str, *args: str) -> None:
        command = [*self.prefix, str(self.programs / program), *args]
        done = subprocess.run(command, cwd=self.base, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{program} {' '.join(args)}:\n{done.stdout}{done.stderr}")

    def initdb(self, name: str, settings: Mapping[str, str] | None = None) -> Server:
        """A new cluster in `name`, initdb's defaults plus `settings`; not started."""
        server = Server(self.base / name, free_port())
        try:
            quick = ["-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]
            self.run("initdb", "-D", str(server.data), "-U", USER, "-A", "trust", *quick)
        except RuntimeError as exc:
            raise ClusterUnavailable(f"initdb cannot make a cluster here: {exc}") from None
        own = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.base}'",
            "port": str(server.port),
        }
        lines = (f"{k} = {v}" for k, v in {**own, **(settings or {})}.items())
        append(server.data / "postgresql.conf", *lines)
        return server

    def start(self, data: Path) -> None:
        self.started.append(data)
        self.run("pg_ctl", "-D", str(data), "-l", f"{data}.log", "-w", "start")

    def stop_all(self) -> None:
        pg_ctl = [*self.prefix, str(self.programs / "pg_ctl")]
        for data in reversed(self.started):  # each stopped, whatever the others do
            with contextlib.suppress(subprocess.SubprocessError):
                subprocess.run(
                    [*pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                    cwd=self.base,
                    capture_output=True,
                    timeout=60,
                )


@contextlib.contextmanager
def scratch_servers(
    label: str, programs: Sequence[str] = ("initdb", "pg_ctl")
) -> Iterator[Servers]:
    """A directory to make servers in; on the way out they are stopped and it is removed."""
    directory = bindir(programs)
    prefix, owner = run_as()
    base = Path(tempfile.mkdtemp(prefix=f"eventbus-{label}-"))
    servers = Servers(base, directory, prefix)
    try:
        if owner is not None:
            shutil.chown(base, owner)
        yield servers
    finally:
        servers.stop_all()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def scratch_server(
    label: str, database: str, settings: Mapping[str, str] | None = None
) -> Iterator[Server]:
    """One started server with an empty `database`, initdb's defaults plus `settings`."""
    with scratch_servers(label) as servers:
        server = servers.initdb("data", settings)
        servers.start(server.data)
        with psycopg.connect(server.url(), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        yield server
