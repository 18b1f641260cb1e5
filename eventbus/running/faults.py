"""Deterministic fault injection, for chaos tests and game days.

With ``EVENTBUS_FAULT_RATE=r`` (and ``EVENTBUS_FAULT_SEED``), attempt `n` of event `id` fails
before its handler runs when a hash of (seed, id, n) falls under `r`. Deterministic, so a
test can compute exactly which events must end dead, and a failure can be replayed.
"""

from __future__ import annotations

import hashlib


class InjectedFault(Exception):
    """A failure injected on purpose (EVENTBUS_FAULT_RATE)."""


def injected(seed: int, rate: float, event_id: int, attempt: int) -> bool:
    if rate <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}:{event_id}:{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate
