"""procrastinate on PostgreSQL: the same task, one job per comment.

procrastinate --app bench.peer_tasks.procrastinate_app.app worker --concurrency C
"""

from __future__ import annotations

import os

from procrastinate import App, PsycopgConnector

from bench.peer_tasks import connections

app = App(connector=PsycopgConnector(conninfo=os.environ["PEERS_DATABASE_URL"]))
QUEUE = os.environ.get("PEERS_QUEUE", "eventbus_bench_peers")


@app.task(name="peers.insert_row", queue=QUEUE)
def insert_row(comment_id: int) -> None:
    # A sync task runs in procrastinate's thread pool: each thread keeps its connection.
    connections.insert_row(comment_id)


@app.task(name="peers.send_email", queue=QUEUE)
def send_email(comment_id: int) -> None:
    connections.send_email(comment_id)
