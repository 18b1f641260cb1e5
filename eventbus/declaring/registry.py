"""The process-wide registry of declared channels and their handlers.

The engine works on *queues*: the names stored in the event table's ``channel`` column.
A channel without subscriptions is one queue of its own name; a channel with
subscriptions is one queue per subscription, ``<channel>:<subscription>``, each with its
own events, attempts, backoff and dead letters (its trigger writes one row per
subscription). Every lookup here accepts a queue name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eventbus.errors import UnknownChannel

if TYPE_CHECKING:
    from eventbus.declaring.channel import Channel

__all__ = ["SEPARATOR", "Registration", "UnknownChannel"]

SEPARATOR = ":"


@dataclass(frozen=True)
class Registration:
    """A queue's handler; a batch handler takes a list of events, others one event."""

    handler: Callable[..., Any]
    batch: bool = False

    @property
    def name(self) -> str:
        return f"{self.handler.__module__}.{self.handler.__qualname__}"


_channels: dict[str, Channel] = {}
_handlers: dict[str, Registration] = {}
_dead_hooks: dict[str, Callable[..., Any]] = {}


def base_name(queue: str) -> str:
    """The channel of a queue name: ``comment_created:email_author`` → ``comment_created``."""
    return queue.split(SEPARATOR, 1)[0]


def subscription_name(queue: str) -> str | None:
    """The subscription of a queue name, or None for a channel's own queue."""
    return queue.partition(SEPARATOR)[2] or None


def add_channel(channel: Channel) -> None:
    existing = _channels.get(channel.name)
    if existing is not None and existing is not channel:
        raise ValueError(f"channel {channel.name!r} is declared twice")
    _channels[channel.name] = channel


def set_handler(queue: str, registration: Registration) -> None:
    existing = _handlers.get(queue)
    if existing is not None and existing != registration:
        channel = _channels.get(base_name(queue))
        remedy = ""
        if channel is not None and not channel.subscriptions:
            remedy = (
                f". To give it several handlers, declare them as subscriptions: "
                f"Channel({channel.name!r}, subscriptions=[...]), register each with "
                f"@{channel.name}.on('<subscription>'), then makemigrations and migrate "
                "(its trigger then writes one event per subscription)"
            )
        raise ValueError(f"channel {queue!r} already has the handler {existing.name}{remedy}")
    _handlers[queue] = registration


def set_dead_hook(channel_name: str, hook: Callable[..., Any]) -> None:
    existing = _dead_hooks.get(channel_name)
    if existing is not None and existing is not hook:
        raise ValueError(
            f"channel {channel_name!r} already has the on_dead hook "
            f"{existing.__module__}.{existing.__qualname__}: one hook per channel (it sees "
            "every subscription's deaths; event.subscription tells which)"
        )
    _dead_hooks[channel_name] = hook


def dead_hook_for(queue: str) -> Callable[..., Any] | None:
    return _dead_hooks.get(queue) or _dead_hooks.get(base_name(queue))


def handler_for(queue: str) -> Registration:
    try:
        return _handlers[queue]
    except KeyError:
        raise UnknownChannel(f"no handler is registered for channel {queue!r}") from None


def has_handler(queue: str) -> bool:
    return queue in _handlers


def channel(name: str) -> Channel | None:
    """The declared channel of a channel or queue name."""
    return _channels.get(base_name(name))


def ordered_channel_names() -> list[str]:
    """Queues of ordered channels (each subscription keeps its own per-key order)."""
    return sorted(q for c in _channels.values() if c.ordered for q in c.queues)


def channels() -> list[Channel]:
    return list(_channels.values())


def channel_names() -> list[str]:
    """Declared channel names (not their subscriptions)."""
    return sorted(_channels)


def queue_names() -> list[str]:
    """Every declared queue: a channel's own name, or one per subscription."""
    return sorted(q for c in _channels.values() for q in c.queues)


def is_declared(name: str) -> bool:
    """A declared channel, or a declared subscription of one."""
    declared = channel(name)
    return declared is not None and (name == declared.name or name in declared.queues)


def expand(names: Iterable[str]) -> tuple[str, ...]:
    """Queues named by `names`: a channel stands for all its subscriptions; a queue name,
    or a name not declared here (an event table's leftover), stands for itself."""
    queues: dict[str, None] = {}
    for name in names:
        declared = _channels.get(name)
        for queue in declared.queues if declared is not None else (name,):
            queues[queue] = None
    return tuple(queues)


@contextmanager
def scratch() -> Iterator[None]:
    """Forget the channels and handlers declared inside (for tests that declare some)."""
    saved = (dict(_channels), dict(_handlers), dict(_dead_hooks))
    try:
        yield
    finally:
        for live, kept in zip((_channels, _handlers, _dead_hooks), saved, strict=True):
            live.clear()
            live.update(kept)
