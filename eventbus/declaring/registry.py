"""The process-wide registry of declared channels and their handlers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eventbus.errors import UnknownChannel

if TYPE_CHECKING:
    from eventbus.declaring.channel import Channel

__all__ = ["Registration", "UnknownChannel"]


@dataclass(frozen=True)
class Registration:
    """A channel's handler; a batch handler takes a list of events, others one event."""

    handler: Callable[..., Any]
    batch: bool = False

    @property
    def name(self) -> str:
        return f"{self.handler.__module__}.{self.handler.__qualname__}"


_channels: dict[str, Channel] = {}
_handlers: dict[str, Registration] = {}
_dead_hooks: dict[str, Callable[..., Any]] = {}


def add_channel(channel: Channel) -> None:
    existing = _channels.get(channel.name)
    if existing is not None and existing is not channel:
        raise ValueError(f"channel {channel.name!r} is declared twice")
    _channels[channel.name] = channel


def set_handler(channel_name: str, registration: Registration) -> None:
    existing = _handlers.get(channel_name)
    if existing is not None and existing != registration:
        raise ValueError(f"channel {channel_name!r} already has the handler {existing.name}")
    _handlers[channel_name] = registration


def set_dead_hook(channel_name: str, hook: Callable[..., Any]) -> None:
    _dead_hooks[channel_name] = hook


def dead_hook_for(channel_name: str) -> Callable[..., Any] | None:
    return _dead_hooks.get(channel_name)


def handler_for(channel_name: str) -> Registration:
    try:
        return _handlers[channel_name]
    except KeyError:
        raise UnknownChannel(f"no handler is registered for channel {channel_name!r}") from None


def has_handler(channel_name: str) -> bool:
    return channel_name in _handlers


def channel(name: str) -> Channel | None:
    return _channels.get(name)


def ordered_channel_names() -> list[str]:
    return sorted(name for name, c in _channels.items() if c.ordered)


def channels() -> list[Channel]:
    return list(_channels.values())


def channel_names() -> list[str]:
    return sorted(_channels)
