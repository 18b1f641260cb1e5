"""Retry policy and the event state machine, as pure functions (property-tested).

pending --claim--> (running, invisible: a row lock inside the claim transaction)
running --ok--> done
running --error, attempts left--> failed   (runs again at run_after)
running --transient db error--> pending    (runs again after a short jittered backoff;
                                            uses up no attempt, up to TRANSIENT_RETRIES)
running --GiveUp / no attempts left--> dead (kept; `recover --dead` replays it)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from eventbus.errors import GiveUp, RetryLater
from eventbus.event import DEAD, DONE, FAILED, PENDING

EXPONENTIAL = "exponential"
FIBONACCI = "fibonacci"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how soon a failing event runs again.

    Delay before attempt n+1 after failed attempt n: ``base_delay * 2**(n-1)`` (or
    ``base_delay * fib(n)``), capped at ``max_delay``; with ``jitter`` it is drawn
    uniformly from [delay/2, delay], so a burst of failures does not retry in lockstep.
    """

    max_attempts: int = 10
    base_delay: float = 1.0
    max_delay: float = 300.0
    schedule: str = EXPONENTIAL
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")
        if self.schedule not in (EXPONENTIAL, FIBONACCI):
            raise ValueError(f"schedule must be {EXPONENTIAL!r} or {FIBONACCI!r}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based)."""
        if attempt < 1:
            raise ValueError("attempt counts from 1")
        growth = 2.0 ** min(attempt - 1, 62) if self.schedule == EXPONENTIAL else _fib(attempt)
        delay = min(self.max_delay, self.base_delay * growth)
        if self.jitter:
            delay = (rng or random).uniform(delay / 2, delay)
        return delay


@lru_cache(maxsize=128)
def _fib(n: int) -> float:
    a, b = 1, 1
    for _ in range(min(n, 1476) - 1):
        a, b = b, a + b
    return float(a)


@dataclass(frozen=True)
class Transition:
    state: str
    delay: float  # seconds until the event may run again (0 for done and dead)


TRANSIENT_BASE_DELAY = 0.05  # seconds before the first retry after a transient error
TRANSIENT_MAX_DELAY = 5.0


def transient_delay(previous: int, rng: random.Random | None = None) -> float:
    """Seconds before retrying after transient error number `previous` + 1 of an event:
    doubling from 50 ms, capped at 5 s, drawn from [delay/2, delay] so that the two sides
    of a deadlock do not collide again in lockstep."""
    delay = min(TRANSIENT_MAX_DELAY, TRANSIENT_BASE_DELAY * 2.0 ** min(previous, 62))
    return (rng or random).uniform(delay / 2, delay)


def after_attempt(
    attempt: int,
    error: BaseException | None,
    policy: RetryPolicy,
    *,
    transient: bool = False,
    transient_count: int = 0,
    rng: random.Random | None = None,
) -> Transition:
    """The state an event moves to after attempt number `attempt` ended with `error`.

    `attempt` counts the attempts that used up a retry (not transient ones);
    `transient_count` is how many transient errors the event had before this one.
    """
    if error is None:
        return Transition(DONE, 0.0)
    if isinstance(error, GiveUp):
        return Transition(DEAD, 0.0)
    if transient:
        return Transition(PENDING, transient_delay(transient_count, rng))
    if attempt >= policy.max_attempts:
        return Transition(DEAD, 0.0)
    if isinstance(error, RetryLater) and error.delay is not None:
        return Transition(FAILED, max(0.0, error.delay))
    return Transition(FAILED, policy.delay(attempt, rng))
