"""The process-wide registry of declared channels and their handlers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eventbus.channel import Channel

_channels: dict[str, Channel] = {}
_handlers: dict[str, Callable[..., Any]] = {}


class UnknownChannel(LookupError):
    """An event names a channel that no handler is registered for."""


def add_channel(channel: Channel) -> None:
    existing = _channels.get(channel.name)
    if existing is not None and existing is not channel:
        raise ValueError(f"channel {channel.name!r} is declared twice")
    _channels[channel.name] = channel


def set_handler(channel_name: str, handler: Callable[..., Any]) -> None:
    existing = _handlers.get(channel_name)
    if existing is not None and existing is not handler:
        raise ValueError(
            f"channel {channel_name!r} already has the handler "
            f"{existing.__module__}.{existing.__qualname__}"
        )
    _handlers[channel_name] = handler


def handler_for(channel_name: str) -> Callable[..., Any]:
    try:
        return _handlers[channel_name]
    except KeyError:
        raise UnknownChannel(f"no handler is registered for channel {channel_name!r}") from None


def channels() -> list[Channel]:
    return list(_channels.values())


def channel_names() -> list[str]:
    return sorted(_channels)


def handled_channel_names() -> list[str]:
    return sorted(_handlers)
