"""The event table: the durable record of every change and of its handling."""

from __future__ import annotations

from typing import Any

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models.functions import Now

from eventbus.compat import db_default
from eventbus.event import DEAD, DONE, FAILED, PENDING


class PayloadField(models.JSONField):
    """A row snapshot stored as PostgreSQL ``json`` (text), not ``jsonb``.

    The payload is written once by a trigger and read once by a handler; it is never
    queried inside. Building ``json`` instead of binary ``jsonb`` cut the trigger's cost
    to a batched insert by about 18 % (``bench/write_cost.py``); graphile-worker stores
    its payload as ``json`` too.
    """

    def db_type(self, connection: Any) -> str:
        return "json"

    def select_format(self, compiler: Any, sql: str, params: Any) -> tuple[str, Any]:
        # Read as text and decoded here, not by psycopg: PostgreSQL stores JSON that
        # Python's json cannot decode (nested thousands deep, a number of 5,000 digits),
        # and one such event must not take down the admin's list of events or `events`.
        # A subquery's column stays json: it may be copied into another payload.
        sql, params = super().select_format(compiler, sql, params)
        if getattr(compiler.query, "subquery", False):
            return sql, params
        return f"({sql})::text", params

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        if isinstance(value, str):
            try:
                return super().from_db_value(value, expression, connection)
            except (ValueError, RecursionError) as exc:
                return UndecodablePayload(exc)
        return value

    def get_prep_value(self, value: Any) -> Any:
        _refuse_to_write(value)
        return super().get_prep_value(value)

    def value_to_string(self, obj: Any) -> Any:
        value = self.value_from_object(obj)
        _refuse_to_write(value)
        return super().value_to_string(obj)


class UndecodablePayload(str):
    """What the admin and `events` get of a payload that Python cannot decode (a handler
    never gets one: its event is dead, see ``eventbus.event.decode_payload``): a text
    that says so. It is never written back, nor serialized, in place of the payload."""

    def __new__(cls, error: BaseException) -> UndecodablePayload:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return super().__new__(cls, f"(not shown: Python cannot decode this payload: {reason})")


def _refuse_to_write(value: Any) -> None:
    if isinstance(value, UndecodablePayload):
        raise ValueError(
            "this event's payload could not be decoded when it was read; it cannot be "
            "written back (update the other columns with QuerySet.update())"
        )


class EventRecord(models.Model):
    """One row per event, written by the channel triggers in the writer's transaction.

    The table is partitioned (``eventbus.storing``): pending and failed events in a small
    queue, done ones in history partitions by time, dead ones apart. Its ``slot`` column,
    the queue slot, is the storage's own and not a field.
    """

    class State(models.TextChoices):
        PENDING = PENDING
        DONE = DONE
        FAILED = FAILED
        DEAD = DEAD

    id = models.BigAutoField(primary_key=True)
    channel = models.CharField(max_length=64)
    operation = models.CharField(max_length=8)
    table_name = models.CharField(max_length=63)
    key = models.TextField(null=True, blank=True)
    ordered = models.BooleanField(**db_default(False, default=False))  # of an ordered channel
    old = PayloadField(null=True, blank=True)
    new = PayloadField(null=True, blank=True)
    state = models.CharField(
        max_length=16, choices=State.choices, **db_default(PENDING, default=PENDING)
    )
    attempts = models.IntegerField(**db_default(0, default=0))
    # Attempts that ended in a transient database error (deadlock, serialization failure,
    # lock timeout): they back off under their own bound and use up no retry attempt.
    transient_errors = models.IntegerField(**db_default(0, default=0))
    created_at = models.DateTimeField(**db_default(Now()))
    run_after = models.DateTimeField(**db_default(Now()))  # not claimed before this time
    first_claimed_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(null=True, blank=True)
    # One entry per failed attempt: {"attempt", "at", "worker", "error"}.
    errors = models.JSONField(**db_default([], default=list), blank=True)
    worker = models.CharField(max_length=128, null=True, blank=True)
    # Causation (eventbus.declaring.collections): the event whose handler wrote this one,
    # and the collection it belongs to (its root's id, or the id `eventbus.collection()`
    # reserved); NULL for a root that is its own collection. Their database defaults read
    # the writer's transaction settings, so triggers and `publish` fill them unasked.
    # Seconds the attempt that made the event done took (a failed attempt's are in errors).
    duration = models.FloatField(null=True, blank=True)
    caused_by = models.BigIntegerField(null=True, blank=True)
    correlation_id = models.BigIntegerField(null=True, blank=True)
    # The W3C traceparent of the traced request that wrote it (eventbus.integrations.
    # tracing): its database default reads a transaction setting that the middleware sets.
    traceparent = models.TextField(null=True, blank=True)

    class Meta:
        db_table = "eventbus_event"
        verbose_name = "event"
        # Partitioned, with indexes of its own (eventbus.storing.layout): the queue's by
        # id and key, history's by id, dead letters' by channel, and collections.

    def __str__(self) -> str:
        return f"event {self.id} ({self.channel}, {self.state})"


class DeadAlertRecord(models.Model):
    """Per channel, the last alert about a dead event, shared by every worker on every host:
    the rate limit of ``eventbus.integrations.alerts`` (one alert per channel per interval,
    naming how many died meanwhile without one)."""

    channel = models.CharField(max_length=128, primary_key=True)
    sent_at = models.DateTimeField()  # when the last alert went out
    suppressed = models.IntegerField(default=0)  # deaths since, without an alert of their own
    # What the latest death reported: -1 if it sent no alert, else the deaths its alert
    # counted besides its own (read back by the statement that decides).
    reported = models.IntegerField(default=0)

    class Meta:
        db_table = "eventbus_dead_alert"
        verbose_name = "dead-event alert"

    def __str__(self) -> str:
        return f"alerts of {self.channel}"


class WorkerRecord(models.Model):
    """A running worker, seen by its heartbeat: what `eventbus_health` checks."""

    name = models.CharField(max_length=128, primary_key=True)  # host:pid
    host = models.CharField(max_length=128)
    pid = models.IntegerField()
    channels = models.TextField()
    started_at = models.DateTimeField(**db_default(Now()))
    last_seen = models.DateTimeField(**db_default(Now()))

    class Meta:
        db_table = "eventbus_worker"
        verbose_name = "worker"

    def __str__(self) -> str:
        return self.name


class InflightRecord(models.Model):
    """Batches whose handlers started, written outside the claim transaction.

    The claim transaction rolls back when its worker dies (kill -9, a segfault, the OOM
    killer, ``os._exit`` in a handler), which erases any trace of the attempt inside it.
    So each claimed batch is recorded here, one row per batch, through a second,
    autocommitted connection before its handlers run. An entry (event id, attempts) still
    matching the event's own attempts after the batch should have committed is a start
    that never finished: the executor then runs the event alone, and makes it dead after
    ``CRASH_LIMIT`` of them. A finished batch's row is stale (its events' attempts moved
    on) and is deleted with the worker's next batch.
    """

    worker = models.CharField(max_length=128)
    # The batch's events as runs of consecutive ids with the same attempts so far: run i is
    # ids first_ids[i]..last_ids[i], each at attempts[i]. A batch is usually one run, and
    # a row of three one-element arrays costs a fifth of a row listing 500 ids.
    first_ids = ArrayField(models.BigIntegerField())
    last_ids = ArrayField(models.BigIntegerField())
    attempts = ArrayField(models.IntegerField())
    started_at = models.DateTimeField(**db_default(Now()))

    class Meta:
        db_table = "eventbus_inflight"
        verbose_name = "in-flight batch"

    def __str__(self) -> str:
        runs = zip(self.first_ids, self.last_ids, strict=True)
        return f"batch {self.pk} of {self.worker}: {sum(b - a + 1 for a, b in runs)} event(s)"


class TaskResultRecord(models.Model):
    """What a task of Django's task API returned (``eventbus.integrations.tasks``).

    Written by the task's handler in the claim transaction, so it commits exactly when its
    event becomes ``done``. It copies what ``get_result`` needs, so a result stays readable
    after the event is purged (``DONE_RETENTION``).
    """

    event_id = models.BigIntegerField(primary_key=True)  # also the task result's id
    task_path = models.CharField(max_length=255)
    backend = models.CharField(max_length=64)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    return_value = models.JSONField(null=True)
    enqueued_at = models.DateTimeField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    worker_ids = models.JSONField(default=list)

    class Meta:
        db_table = "eventbus_task_result"
        verbose_name = "task result"

    def __str__(self) -> str:
        return f"result of task {self.event_id} ({self.task_path})"


class RollupRecord(models.Model):
    """What the workers did in one minute on one queue: the dashboard's history.

    Each claim transaction adds its batch's outcomes to its minute's rows in the same
    statement that marks the batch (``eventbus.operating.rollup``), so the counts commit
    exactly with the events' new states and stay when done events are purged. Kept for
    ``ROLLUP_RETENTION``. ``backlog`` is a sample of the queue's runnable events taken
    once a minute by one of the listeners (NULL for a minute nobody sampled).
    """

    id = models.BigAutoField(primary_key=True)
    minute = models.DateTimeField()
    queue = models.CharField(max_length=64)  # a channel, or channel:subscription
    # Whose row: each claim connection (a worker, or one handler slot) adds to its own, so
    # no listener ever waits on another's row between its mark and its commit. The
    # backlog sample's row has none (""). Readers sum over writers.
    writer = models.CharField(max_length=160, blank=True, **db_default("", default=""))
    handled = models.IntegerField(default=0)  # attempts that ended done
    failed = models.IntegerField(default=0)  # attempts that failed and run again
    died = models.IntegerField(default=0)  # attempts that ended dead
    seconds = models.FloatField(default=0.0)  # handler time of all those attempts
    # Attempts per duration bucket (eventbus.operating.rollup.BUCKET_BOUNDS): p50 and p95
    # of any set of rows come from their summed buckets.
    histogram = ArrayField(models.IntegerField(), default=list, blank=True)
    backlog = models.IntegerField(null=True, blank=True)

    class Meta:
        db_table = "eventbus_rollup"
        verbose_name = "rollup minute"
        constraints = [
            # The upsert's conflict target; its index also serves "the last hour".
            models.UniqueConstraint(
                fields=["minute", "queue", "writer"], name="eventbus_rollup_minute_queue_writer"
            )
        ]

    def __str__(self) -> str:
        return f"{self.queue} at {self.minute:%Y-%m-%d %H:%M}"


class Dashboard(RollupRecord):
    """The admin's "Event bus → Dashboard" entry (eventbus.integrations.dashboard): a
    proxy, so a reusable app can put a page on the admin index without a custom site.
    Its view permission shows the page; its change permission allows pause and resume."""

    class Meta:
        proxy = True
        verbose_name = "dashboard"
        verbose_name_plural = "dashboard"


class PauseRecord(models.Model):
    """A paused channel or subscription (``events pause``): listeners claim none of its
    events until it is resumed. A row, so a pause survives listener restarts."""

    name = models.CharField(max_length=64, primary_key=True)  # a channel or channel:subscription
    paused_at = models.DateTimeField()
    paused_by = models.CharField(max_length=150)

    class Meta:
        db_table = "eventbus_pause"
        verbose_name = "paused channel"

    def __str__(self) -> str:
        return f"{self.name} (paused)"
