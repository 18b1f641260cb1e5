"""Celery with Redis: the same two tasks, one per comment.

celery -A bench.peer_tasks.celery_app worker -P prefork -c 2 -Q QUEUE
"""

from __future__ import annotations

import os

from celery import Celery

from bench.peer_tasks import connections

app = Celery("peers", broker=os.environ.get("PEERS_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_default_queue=os.environ.get("PEERS_QUEUE", "eventbus_bench_peers"),
    task_ignore_result=True,  # no result backend: nothing is written after the task
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="peers.insert_row")
def insert_row(comment_id: int) -> None:
    connections.insert_row(comment_id)


@app.task(name="peers.send_email")
def send_email(comment_id: int) -> None:
    connections.send_email(comment_id)
