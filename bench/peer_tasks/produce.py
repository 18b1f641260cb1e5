"""Write N comments in batches of 1,000 and, after each commit, enqueue one task per comment.

That is what a Django project does with `transaction.on_commit(lambda: task.delay(id))`
for each created comment. Run inside the system's own environment:

    python -m bench.peer_tasks.produce SYSTEM TASK N POST_ID AUTHOR_ID
    (SYSTEM: eventbus, whose trigger enqueues in the same statement; celery; procrastinate)

Prints `started <time.time()>` before the first write and `enqueued <time.time()>` after
the last enqueue.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import psycopg

BATCH = 1_000
INSERT = (
    "INSERT INTO blog_comment (post_id, author_id, body, created_at) "
    "SELECT %s, %s, 'comment ' || g, now() FROM generate_series(%s::int, %s::int) AS g RETURNING id"
)


def enqueuer(system: str, task: str) -> Callable[[list[int]], None]:
    if system == "eventbus":
        return lambda ids: None  # the trigger wrote the events in the INSERT itself
    if system == "celery":
        from bench.peer_tasks import celery_app

        celery_task = getattr(celery_app, task)

        def delay_each(ids: list[int]) -> None:
            for i in ids:
                celery_task.delay(i)

        return delay_each
    if system == "procrastinate":
        from bench.peer_tasks import procrastinate_app

        procrastinate_app.app.open()
        proc_task = getattr(procrastinate_app, task)

        def defer_each(ids: list[int]) -> None:
            for i in ids:
                proc_task.defer(comment_id=i)

        return defer_each
    raise SystemExit(f"unknown system {system}")


def warm_up(conn: psycopg.Connection, enqueue: Callable[[list[int]], None]) -> None:
    """One task with comment id 0 through a worker: the workers are up and connected."""
    enqueue([0])
    deadline = time.monotonic() + 60
    while not conn.execute("SELECT 1 FROM bench_peer_row WHERE comment_id = 0").fetchone():
        if time.monotonic() > deadline:
            raise SystemExit("the workers did not run a warm-up task within 60 s")
        time.sleep(0.05)
    time.sleep(1.0)  # the other worker process started with it


def main() -> None:
    system, task, n, post_id, author_id = sys.argv[1:6]
    enqueue = enqueuer(system, task)
    with psycopg.connect(os.environ["PEERS_DATABASE_URL"], autocommit=True) as conn:
        if system != "eventbus":
            warm_up(conn, enqueuer(system, "insert_row"))
        print(f"started {time.time()}", flush=True)
        for start in range(1, int(n) + 1, BATCH):
            end = min(start + BATCH - 1, int(n))
            with conn.transaction():
                ids = [
                    r[0] for r in conn.execute(INSERT, [int(post_id), int(author_id), start, end])
                ]
            enqueue(ids)  # on commit
        print(f"enqueued {time.time()}", flush=True)


if __name__ == "__main__":
    main()
