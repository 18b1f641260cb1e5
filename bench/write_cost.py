"""Scenario 4: what the triggers cost the writer.

(a) 100,000 comments inserted in batches of 1,000 (one INSERT … SELECT per batch), with
    the comment trigger installed and with it disabled.
(c) The same 100,000 comments when the channel has 1, 2 or 4 subscriptions: the
    trigger writes one event row per subscription, in the same single INSERT … SELECT.
(b) Many small single-row transactions from 4 writer processes: no trigger, the trigger
    with its NOTIFY, and the same trigger without the NOTIFY (what `notify=False` makes).
    Every notifying commit takes a cluster-wide lock; (b) shows what that costs.

    ./run bench write_cost [--comments 100000] [--small 2000] [--full]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common

BATCH_INSERT = (
    "INSERT INTO blog_comment (post_id, author_id, body) "
    "SELECT %s, %s, 'comment ' || g FROM generate_series(1, %s) AS g"
)


def _trigger(conn) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    name, func = conn.execute(
        "SELECT t.tgname, p.proname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
        "WHERE t.tgname LIKE 'pgtrigger_eb_comment_created%'"
    ).fetchone()
    return name, func


def _fanned_body(subscriptions: int) -> tuple[str, str]:
    """The comment trigger's body as installed, and as it would be with `subscriptions`."""
    import copy

    import channels
    from blog.models import Comment
    from eventbus import INSERT
    from eventbus.declaring.channel import render_trigger_body

    declared = channels.comment_created
    fanned = copy.copy(declared)  # not declared: no second registration of the name
    fanned.subscriptions = tuple(f"handler_{n}" for n in range(subscriptions))
    return (
        render_trigger_body(declared, INSERT, Comment),
        render_trigger_body(fanned, INSERT, Comment),
    )


def _set_mode(url: str, mode: str) -> None:
    """mode: 'none' (trigger disabled), 'notify' (as installed), 'quiet' (no NOTIFY),
    'subs:N' (as installed, with N subscriptions)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        name, func = _trigger(conn)
        source = conn.execute("SELECT pg_get_functiondef(%s::regproc)", [func]).fetchone()[0]
        if not hasattr(_set_mode, "original"):
            _set_mode.original = source  # type: ignore[attr-defined]
        source = _set_mode.original  # type: ignore[attr-defined]
        if mode == "quiet":
            start = source.index("IF FOUND THEN PERFORM pg_notify")
            end = source.index("END IF;", start) + len("END IF;")
            source = source[:start] + source[end:]
        if mode.startswith("subs:"):
            installed, fanned = _fanned_body(int(mode[5:]))
            assert installed in source, "the installed trigger is not the declared channel's"
            source = source.replace(installed, fanned)
        conn.execute(source)
        action = "DISABLE" if mode == "none" else "ENABLE"
        conn.execute(f'ALTER TABLE blog_comment {action} TRIGGER "{name}"')
        conn.execute("TRUNCATE blog_comment, eventbus_event")
        conn.execute("CHECKPOINT")  # start each run with no dirty pages left by the last


def batched(url: str, post: int, author: int, comments: int) -> float:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        for _ in range(0, comments, 1000):
            with conn.transaction():
                conn.execute(BATCH_INSERT, [post, author, 1000])
        return time.perf_counter() - started


def _small_writer(url: str, post: int, author: int, n: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(n):
            conn.execute(BATCH_INSERT, [post, author, 1])


def small(url: str, post: int, author: int, per_writer: int, writers: int = 4) -> float:
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_small_writer, args=(url, post, author, per_writer))
        for _ in range(writers)
    ]
    started = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return writers * per_writer / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comments", type=int, default=100_000)
    parser.add_argument("--small", type=int, help="transactions per writer (default 2,000)")
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args()
    per_writer = args.small or (10_000 if args.full else 2_000)
    common.setup()
    from django.contrib.auth.models import User

    from blog.models import Post

    url = os.environ["DATABASE_URL"]
    author = User.objects.create_user("bench")
    post = Post.objects.create(title="bench", body="x", author=author)
    # Alternate the two modes, best of three each: drift in the machine's load (autovacuum,
    # the previous scenario's writes) then falls on both sides instead of on one.
    runs: dict[str, list[float]] = {"none": [], "notify": []}
    for _ in range(3):
        for mode, times in runs.items():
            _set_mode(url, mode)
            times.append(batched(url, post.pk, author.pk, args.comments))
    results = {f"batched_{mode}": min(times) for mode, times in runs.items()}
    rows = [
        {
            "case": f"{args.comments:,} comments, batches of 1,000",
            "without_trigger": f"{results['batched_none']:.2f} s",
            "with_trigger": f"{results['batched_notify']:.2f} s",
            "ratio": round(results["batched_notify"] / results["batched_none"], 2),
        }
    ]
    fans: dict[int, list[float]] = {1: [], 2: [], 4: []}
    for _ in range(3):
        for n, times in fans.items():
            _set_mode(url, f"subs:{n}")
            times.append(batched(url, post.pk, author.pk, args.comments))
    base = results["batched_none"]
    for n, times in fans.items():
        best = min(times)
        rows.append(
            {
                "case": f"{args.comments:,} comments, channel with {n} subscription(s)",
                "without_trigger": f"{base:.2f} s",
                "with_trigger": f"{best:.2f} s ({n * args.comments / best:,.0f} event rows/s)",
                "ratio": round(best / base, 2),
            }
        )
    rates = {}
    for mode in ("none", "notify", "quiet"):
        _set_mode(url, mode)
        rates[mode] = small(url, post.pk, author.pk, per_writer)
    rows.append(
        {
            "case": f"4 writers x {per_writer:,} single-row transactions",
            "without_trigger": f"{rates['none']:,.0f} tx/s",
            "with_trigger": f"{rates['notify']:,.0f} tx/s (no NOTIFY: {rates['quiet']:,.0f} tx/s)",
            "ratio": round(rates["none"] / rates["notify"], 2),
        }
    )
    _set_mode(url, "notify")
    common.report("write_cost", ["case", "without_trigger", "with_trigger", "ratio"], rows)


if __name__ == "__main__":
    main()
