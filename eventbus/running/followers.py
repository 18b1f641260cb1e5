"""Whether anyone follows (`events follow`): workers announce their commits only then.

A commit that sent a NOTIFY takes a cluster-wide lock at commit (``PreCommit_Notify``),
so notifying commits run one at a time, the application's own writes' wake-ups among
them. A worker that announced every claim transaction would make its commits queue
behind the application's. So a follower announces itself (a session named
``APPLICATION_NAME``, and a NOTIFY on ``HELLO``), and only while one is connected do
workers add a NOTIFY on ``CHANGES`` to each claim transaction.

A worker learns of a follower at once from ``HELLO`` (it LISTENs on it), and within its
health interval from its heartbeat, which also asks whether any follower is still
connected (and so turns the flag off when the last one leaves). When it learns, it sends
one ``CHANGES`` itself: what it committed before it knew is then looked at too.

``watched`` is a plain module attribute: set by the worker's main thread, read by its
executors (handler slots run them in threads of the same process).
"""

from __future__ import annotations

# A channel's wake-up is ``eventbus_<name>`` (names are ``[a-z][a-z0-9_]*``): a colon
# keeps these apart from every one of them. LISTEN needs them quoted (psycopg.sql).
CHANGES = "eventbus:changes"  # a claim transaction committed new states
HELLO = "eventbus:follow"  # a follower arrived
APPLICATION_NAME = "eventbus-follow"  # the follower's session, seen in pg_stat_activity

watched = False  # someone follows: announce each claim transaction on CHANGES
