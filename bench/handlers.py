"""A channel with a trivial handler, for measuring the engine itself."""

from eventbus import Channel, Event

bench_noop = Channel("bench_noop", operations=(), isolation="batch")  # no effects at all
bench_noop_isolated = Channel("bench_noop_isolated", operations=())  # a savepoint per event


@bench_noop.on
def noop(event: Event) -> None:
    """Does nothing: what is measured is claiming, savepoints and marking."""


@bench_noop_isolated.on
def noop_isolated(event: Event) -> None:
    """The same, with the default per-event savepoint."""
