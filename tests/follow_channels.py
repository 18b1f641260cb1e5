"""Channels for tests/test_follow.py, whose handlers publish, fail once, or give up.

Listener processes (and `events follow`) load it with
``EVENTBUS_LISTENER_MODULES=listeners,tests.follow_channels``; the test process imports
it to publish.
"""

from __future__ import annotations

import os
import time

from eventbus import Channel, Event, RetryPolicy

# Its handler publishes a follow_child event: the child joins the parent's collection.
parent = Channel("follow_parent", operations=())
child = Channel("follow_child", operations=())
# Fails its first attempt; the second, a second later, succeeds.
flaky = Channel(
    "follow_flaky", operations=(), retry=RetryPolicy(max_attempts=3, base_delay=1, jitter=False)
)
plain = Channel("follow_plain", operations=())


@parent.on
def publish_child(event: Event) -> None:
    child.publish({"from": event.id})


@child.on
def handle_child(event: Event) -> None:
    pass


@flaky.on
def fail_once(event: Event) -> None:
    if event.attempt == 1:
        raise RuntimeError("the first attempt fails")


@plain.on
def handle_plain(event: Event) -> None:
    pass


# Says it started (a line in the payload's "started" file), then waits for the payload's
# "gate" file to exist: a handler in flight for as long as a test wants.
gated = Channel("follow_gated", operations=())


@gated.on
def wait_at_gate(event: Event) -> None:
    with open(event.new["started"], "a") as started:
        started.write(f"{event.id}\n")
    give_up = time.monotonic() + 30
    while not os.path.exists(event.new["gate"]) and time.monotonic() < give_up:
        time.sleep(0.01)
