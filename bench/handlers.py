"""A channel with a trivial handler, for measuring the engine itself."""

from eventbus import Channel, Event

bench_noop = Channel("bench_noop", operations=())


@bench_noop.on
def noop(event: Event) -> None:
    """Does nothing: what is measured is claiming, savepoints and marking."""
