"""Property-based specs: the backoff schedule, and the event state machine end to end."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from eventbus import Channel, Event, GiveUp, RetryLater, RetryPolicy
from eventbus.declaring.retry import FIBONACCI, after_attempt
from eventbus.models import EventRecord
from eventbus.running.executor import Executor
from eventbus.sql import Scope

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 30),
    base_delay=st.floats(0, 100, allow_nan=False),
    max_delay=st.floats(0, 10_000, allow_nan=False),
    schedule=st.sampled_from(["exponential", "fibonacci"]),
    jitter=st.booleans(),
)


@given(policies, st.integers(1, 200), st.integers(0, 2**32))
def test_a_delay_is_never_negative_and_never_over_the_cap(
    policy: RetryPolicy, attempt: int, seed: int
) -> None:
    delay = policy.delay(attempt, random.Random(seed))
    assert 0 <= delay <= policy.max_delay


@given(policies, st.integers(1, 100))
def test_without_jitter_delays_never_shrink(policy: RetryPolicy, attempt: int) -> None:
    from dataclasses import replace

    exact = replace(policy, jitter=False)
    assert exact.delay(attempt) <= exact.delay(attempt + 1)


@given(policies, st.integers(1, 60), st.integers(0, 2**32))
def test_jitter_stays_within_half_and_all_of_the_exact_delay(
    policy: RetryPolicy, attempt: int, seed: int
) -> None:
    from dataclasses import replace

    exact = replace(policy, jitter=False).delay(attempt)
    jittered = replace(policy, jitter=True).delay(attempt, random.Random(seed))
    assert exact / 2 <= jittered <= exact


@given(st.integers(1, 40))
def test_the_schedules_are_exponential_and_fibonacci(attempt: int) -> None:
    exp = RetryPolicy(base_delay=1, max_delay=1e30, jitter=False)
    fib = RetryPolicy(base_delay=1, max_delay=1e30, jitter=False, schedule=FIBONACCI)
    assert exp.delay(attempt) == 2 ** (attempt - 1)
    a, b = 1, 1
    for _ in range(attempt - 1):
        a, b = b, a + b
    assert fib.delay(attempt) == a


@given(policies, st.integers(1, 40))
def test_no_event_is_retried_past_its_last_attempt(policy: RetryPolicy, attempt: int) -> None:
    step = after_attempt(attempt, RuntimeError("x"), policy)
    assert step.state == ("dead" if attempt >= policy.max_attempts else "failed")


# --- The state machine, through the real executor and SQL -------------------------------

stepped = Channel("test_stepped")
_behaviour: dict[str, str] = {"next": "ok"}


@stepped.on
def _step(event: Event) -> None:
    outcome = _behaviour["next"]
    if outcome == "error":
        raise RuntimeError("handler failed")
    if outcome == "give_up":
        raise GiveUp("bad input")
    if outcome == "retry_later":
        raise RetryLater("not yet", delay=0)
    if outcome == "transient":
        raise psycopg.errors.DeadlockDetected("deadlock detected")


MAX_ATTEMPTS = 4
TRANSIENT_RETRIES = 2
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class EventLifecycle(RuleBasedStateMachine):
    """One event, driven by random handler outcomes; the row must match the model."""

    def __init__(self) -> None:
        super().__init__()
        self.record = EventRecord.objects.create(
            channel="test_stepped", operation="INSERT", table_name="x", new={}
        )
        self.state, self.attempts, self.errors, self.transients = "pending", 0, 0, 0

    def _run(self, scope: Scope) -> list:
        EventRecord.objects.filter(pk=self.record.pk).update(run_after=EPOCH)  # due now
        return Executor("prop").run_batch(scope, 10)

    @precondition(lambda self: self.state in ("pending", "failed"))
    @rule(outcome=st.sampled_from(["ok", "error", "give_up", "retry_later", "transient"]))
    def attempt(self, outcome: str) -> None:
        _behaviour["next"] = outcome
        [result] = self._run(Scope(ids=(self.record.pk,)))
        self.attempts += 1
        if outcome == "ok":
            self.state = "done"
        else:
            self.errors += 1
            if outcome == "give_up":
                self.state = "dead"
            elif outcome == "transient" and self.transients < TRANSIENT_RETRIES:
                self.transients += 1  # backs off, but uses up no attempt
                self.state = "pending"
            elif self.attempts - self.transients >= MAX_ATTEMPTS:
                self.state = "dead"
            else:
                self.state = "failed"
        assert result.status == self.state

    @precondition(lambda self: self.state in ("done", "dead"))
    @rule()
    def listeners_leave_finished_events_alone(self) -> None:
        assert self._run(Scope(ids=(self.record.pk,))) == []

    @precondition(lambda self: self.state == "dead")
    @rule()
    def replay_a_dead_event(self) -> None:
        _behaviour["next"] = "ok"
        [result] = self._run(Scope(states=("dead",), ids=(self.record.pk,), due_only=False))
        self.attempts += 1
        self.state = "done"
        assert result.status == "done"

    @invariant()
    def row_matches_the_model(self) -> None:
        row = EventRecord.objects.get(pk=self.record.pk)
        assert (row.state, row.attempts, len(row.errors)) == (
            self.state,
            self.attempts,
            self.errors,
        )
        assert (row.finished_at is not None) == (self.state in ("done", "dead"))


@pytest.mark.django_db
def test_the_event_state_machine_holds_through_the_real_executor() -> None:
    from django.test import override_settings
    from hypothesis.stateful import run_state_machine_as_test

    with override_settings(
        EVENTBUS={
            "RETRY": {"max_attempts": MAX_ATTEMPTS, "base_delay": 0, "jitter": False},
            "TRANSIENT_RETRIES": TRANSIENT_RETRIES,
        }
    ):
        run_state_machine_as_test(
            EventLifecycle,
            settings=settings(
                max_examples=40,
                stateful_step_count=12,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
