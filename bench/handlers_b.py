"""A trivial channel in the second database "b" (bench/databases.py only: every other
benchmark's listener would otherwise need that database)."""

from eventbus import Channel, Event

bench_noop_b = Channel("bench_noop_b", operations=(), isolation="batch", database="b")


@bench_noop_b.on
def noop_b(event: Event) -> None:
    """Does nothing, in database b."""
