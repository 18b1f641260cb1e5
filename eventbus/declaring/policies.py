"""Per-channel behaviour (retries, timeout, ordering), resolved once per worker.

Precedence, most specific first: ``EVENTBUS["CHANNELS"][name]`` in settings (deploy-time
overrides), then the channel's declaration, then ``EVENTBUS["RETRY"]`` and
``EVENTBUS["HANDLER_TIMEOUT"]``, then the built-in defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from eventbus import conf
from eventbus.declaring import registry
from eventbus.declaring.retry import RetryPolicy

_UNSET = object()


@dataclass(frozen=True)
class ChannelPolicy:
    retry: RetryPolicy
    timeout: float | None
    ordered: bool
    isolation: str = "event"


def resolve(channel_name: str, settings: conf.Settings | None = None) -> ChannelPolicy:
    """The policy of a channel or of one subscription's queue (``channel:subscription``):
    a subscription's own ``timeout``/``retry`` (from ``@channel.on(...)``) and its settings
    entry override the channel's."""
    settings = settings or conf.get()
    declared = registry.channel(channel_name)
    retry = RetryPolicy(**settings.RETRY)
    timeout = settings.HANDLER_TIMEOUT
    ordered = False
    isolation = "event"
    if declared is not None:
        isolation = declared.isolation
        retry = declared.retry or retry
        timeout = declared.timeout if declared.timeout is not None else timeout
        ordered = declared.ordered
        own = declared.overrides.get(channel_name, {})
        retry = own.get("retry") or retry
        timeout = own["timeout"] if own.get("timeout") is not None else timeout
    names = dict.fromkeys([registry.base_name(channel_name), channel_name])
    for name in names:  # the channel's entry, then the subscription's
        override = settings.CHANNELS.get(name, {})
        unknown = set(override) - {"retry", "timeout", "isolation", "database"}
        if unknown:
            raise ValueError(f"EVENTBUS['CHANNELS'][{name!r}]: unknown keys {sorted(unknown)}")
        if "retry" in override:
            retry = replace(retry, **override["retry"])
        timeout = override.get("timeout", timeout)
        isolation = override.get("isolation", isolation)
        if isolation not in ("event", "batch"):
            raise ValueError(
                f"EVENTBUS['CHANNELS'][{name!r}]['isolation']: {isolation!r} is not "
                "'event' or 'batch'"
            )
    return ChannelPolicy(retry, timeout, ordered, isolation)


class Policies:
    """A cache of resolved policies for one executor."""

    def __init__(self) -> None:
        self._settings = conf.get()
        self._cache: dict[str, ChannelPolicy] = {}

    def __getitem__(self, channel_name: str) -> ChannelPolicy:
        policy = self._cache.get(channel_name)
        if policy is None:
            policy = self._cache[channel_name] = resolve(channel_name, self._settings)
        return policy
