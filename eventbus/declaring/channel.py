"""Channel declarations: which writes to a table become events, and who handles them.

A channel is declared once, in plain Python, and attached to a model through the model's
``Meta.triggers``. django-pgtrigger then installs its triggers with ordinary migrations.

Each trigger is statement-level with a transition table, so a 5,000-row ``bulk_create``
costs one ``INSERT … SELECT`` into the event table and at most one ``pg_notify`` whose
payload is empty: the row data stays in the event table, never in the NOTIFY (which is
capped at 8,000 bytes and would fail the user's write).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pgtrigger
from django.apps import apps
from django.core import checks
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import models

from eventbus import compat
from eventbus.declaring import registry
from eventbus.declaring.retry import RetryPolicy

if TYPE_CHECKING:
    from eventbus.event import Event

INSERT = "INSERT"
UPDATE = "UPDATE"
DELETE = "DELETE"
_OPERATIONS = {
    INSERT: pgtrigger.Insert,
    UPDATE: pgtrigger.Update,
    DELETE: pgtrigger.Delete,
}
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,37}$")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

EVENT_TABLE = "eventbus_event"
NOTIFY_PREFIX = "eventbus_"

Handler = Callable[["Event"], Any]
BatchHandler = Callable[[list["Event"]], Any]


def notify_channel(name: str) -> str:
    """The PostgreSQL NOTIFY channel that wakes listeners of the eventbus channel `name`."""
    return NOTIFY_PREFIX + name


def _quote(identifier: str) -> str:
    if not _COLUMN.match(identifier):
        raise ValueError(f"not a plain column name: {identifier!r}")
    return f'"{identifier}"'


@dataclass(eq=False)
class Channel:
    """A named stream of events produced by writes to one table.

    Args:
        name: lower-case identifier, unique in the project (``comment_created``).
        operations: any of ``INSERT``, ``UPDATE``, ``DELETE``; none for a channel whose
            events are published from code (``channel.publish(...)``).
        key: model field whose value groups events (for instance ``post``); stored as text.
        changed: for ``UPDATE``, only rows where one of these fields changed make an event.
        notify: send a wake-up NOTIFY on commit. ``False`` makes a poll-only channel for
            write-heavy tables: no commit-time NOTIFY lock, at the cost of up to one poll
            interval of latency.
        ordered: events with the same key are handled one at a time, in commit order,
            across all processes; a failing event holds back only its own key. Writers
            of the same key are serialized (a transaction-level advisory lock per key).
        retry: the backoff policy (default: settings, then ``RetryPolicy()``).
        timeout: seconds a handler may run before it is stopped (default: settings).
        isolation: ``"event"`` (default): each handler call in its own savepoint.
            ``"batch"``: for handlers whose effects are all in the database, a batch's
            calls share one savepoint; if one raises, the batch is rolled back and run
            again with a savepoint per event (safe only because the rollback undid every
            effect: never use it for handlers that send email or call out).
    """

    name: str
    operations: Sequence[str] = (INSERT,)
    key: str | None = None
    changed: Sequence[str] = ()
    notify: bool = True
    ordered: bool = False
    retry: RetryPolicy | None = None
    timeout: float | None = None
    isolation: str = "event"
    handler: Handler | BatchHandler | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"channel name {self.name!r} must match {_NAME.pattern} (it names triggers)"
            )
        self.operations = tuple(self.operations)
        unknown = set(self.operations) - set(_OPERATIONS)
        if unknown:
            raise ValueError(f"channel {self.name}: operations must be among {list(_OPERATIONS)}")
        if self.ordered and not self.key:
            raise ValueError(f"channel {self.name}: an ordered channel needs a key")
        if self.isolation not in ("event", "batch"):
            raise ValueError(f"channel {self.name}: isolation must be 'event' or 'batch'")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"channel {self.name}: timeout must be positive")
        if self.changed and UPDATE not in self.operations:
            raise ValueError(f"channel {self.name}: 'changed' only applies to UPDATE")
        registry.add_channel(self)

    @property
    def notify_channel(self) -> str:
        return notify_channel(self.name)

    def triggers(self) -> list[pgtrigger.Trigger]:
        """The triggers to list in the model's ``Meta.triggers``: one per operation."""
        return [ChannelTrigger(self, operation) for operation in self.operations]

    def on(self, handler: Handler) -> Handler:
        """Decorator: register `handler` as this channel's handler.

        The handler gets an :class:`eventbus.Event` and runs inside the transaction that
        claimed the event, in a savepoint: its database writes commit together with the
        event being marked done, or not at all.
        """
        registry.set_handler(self.name, registry.Registration(handler))
        self.handler = handler
        return handler

    def on_dead(self, hook: Callable[[Event, str], Any]) -> Callable[[Event, str], Any]:
        """Decorator: call `hook(event, error)` when an event of this channel dies.

        It runs in the claim transaction (in its own savepoint) before the event is marked
        dead, so what it writes or publishes commits with the death. Its own errors are
        logged and do not change the outcome.
        """
        registry.set_dead_hook(self.name, hook)
        return hook

    def publish(
        self, payload: dict[str, Any], key: str | int | None = None, using: str = "default"
    ) -> int:
        """Write an event of this channel from code, in the current transaction.

        For channels without a table behind them (``operations=()``): the event commits
        or rolls back with the caller's transaction, exactly like a trigger's. Returns its id.
        """
        from django.db import connections

        from eventbus import sql as queries

        with connections[using].cursor() as cursor:
            cursor.execute(
                *queries.publish(
                    self.name,
                    payload,
                    None if key is None else str(key),
                    self.notify,
                    self.ordered,
                )
            )
            return int(cursor.fetchone()[0])

    def on_batch(self, handler: BatchHandler) -> BatchHandler:
        """Decorator: register a handler that takes all of a batch's events of this channel.

        Use it to aggregate (sum counter deltas, send one request for many events) and to
        take row locks in one fixed order. If it raises, the engine runs it again once per
        event, each in its own savepoint, so only the events that fail are failed.
        """
        registry.set_handler(self.name, registry.Registration(handler, batch=True))
        self.handler = handler
        return handler


class ChannelTrigger(pgtrigger.Trigger):
    """The statement-level trigger that writes a channel's events for one operation."""

    when = pgtrigger.After
    level = pgtrigger.Statement

    def __init__(self, channel: Channel, operation: str) -> None:
        self.channel = channel
        self.event_operation = operation
        referencing = {
            INSERT: pgtrigger.Referencing(new="eventbus_new"),
            UPDATE: pgtrigger.Referencing(old="eventbus_old", new="eventbus_new"),
            DELETE: pgtrigger.Referencing(old="eventbus_old"),
        }[operation]
        super().__init__(
            name=f"eb_{channel.name}_{operation.lower()[:3]}",
            operation=_OPERATIONS[operation],
            referencing=referencing,
        )

    def get_func(self, model: type[models.Model]) -> str:
        return render_trigger_body(self.channel, self.event_operation, model)


class ChannelDeclarationError(ImproperlyConfigured):
    """A channel cannot be attached to a model as declared (reported by check eventbus.E010)."""


def _column(channel: Channel, model: type[models.Model], field_name: str, role: str) -> str:
    """The quoted column of `field_name`, or a clear error naming channel, model and field."""
    where = f"channel {channel.name} on {model._meta.label}"
    try:
        field = model._meta.get_field(field_name)
    except FieldDoesNotExist:
        raise ChannelDeclarationError(f"{where}: {role} {field_name!r} is not a field") from None
    column = getattr(field, "column", None)
    if not column or field.many_to_many:
        raise ChannelDeclarationError(
            f"{where}: {role} {field_name!r} has no single column (a composite primary key "
            "or a many-to-many field); name one concrete field"
        )
    return _quote(column)


def _pk_columns(model: type[models.Model]) -> list[str]:
    """Every primary-key column: one, or several for a ``CompositePrimaryKey``."""
    return [_quote(f.column) for f in compat.pk_fields(model)]


def _pair_old_and_new(channel: Channel, model: type[models.Model]) -> tuple[str, str]:
    """An UPDATE's source (old and new row joined on the primary key) and its guard.

    A statement-level transition table carries no row identity but the primary key (the
    ctid changes on UPDATE, and scan order is not a documented pairing), so an UPDATE that
    changes a primary key cannot be paired: it would make no event, silently. The guard
    refuses such a statement instead, naming the channel and table, with a hint. It costs
    one hash anti-join of the transition tables: 2.4 ms of a 140 ms 10,000-row UPDATE,
    measured. Django itself never changes a primary key on save(): it inserts a new row.
    """
    pk = _pk_columns(model)
    on = " AND ".join(f"o.{c} = n.{c}" for c in pk)
    names = ", ".join(c.strip('"') for c in pk)
    guard = (
        f"IF EXISTS (SELECT FROM eventbus_new n WHERE NOT EXISTS "
        f"(SELECT FROM eventbus_old o WHERE {on})) THEN "
        f"RAISE EXCEPTION 'eventbus channel {channel.name}: an UPDATE of table % changed the "
        f"primary key ({names}) of a row, so its event cannot pair the old row with the new', "
        f"TG_TABLE_NAME USING ERRCODE = 'feature_not_supported', HINT = 'Change a primary key "
        f"by deleting the row and inserting it with the new key; eventbus pairs the old and "
        f"new rows of an UPDATE by primary key.'; END IF; "
    )
    return f"eventbus_new n JOIN eventbus_old o ON {on}", guard


def render_trigger_body(channel: Channel, operation: str, model: type[models.Model]) -> str:
    """PL/pgSQL of the trigger: insert the statement's rows as events, then one wake-up."""
    row = "o" if operation == DELETE else "n"
    key = f"({row}.{_column(channel, model, channel.key, 'key')})::text" if channel.key else "NULL"
    old = "to_json(o)" if operation in (UPDATE, DELETE) else "NULL"
    new = "to_json(n)" if operation in (INSERT, UPDATE) else "NULL"
    guard = ""
    if operation == INSERT:
        source = "eventbus_new n"
    elif operation == DELETE:
        source = "eventbus_old o"
    else:
        source, guard = _pair_old_and_new(channel, model)
    where = ""
    if channel.changed:
        columns = [_column(channel, model, f, "changed field") for f in channel.changed]
        where = "WHERE " + " OR ".join(f"o.{c} IS DISTINCT FROM n.{c}" for c in columns)
    # Ordered: writers of one key take turns, so ids of a key follow commit order.
    lock = (
        f"PERFORM pg_advisory_xact_lock(hashtextextended('eventbus:{channel.name}:' || k, 0)) "
        f"FROM (SELECT DISTINCT {key} AS k FROM {source} {where} ORDER BY 1) AS keys; "
        if channel.ordered
        else ""
    )
    wake = (
        f"IF FOUND THEN PERFORM pg_notify('{channel.notify_channel}', ''); END IF;"
        if channel.notify
        else ""
    )
    # Ordered channels flag their events, which puts them in the per-key index.
    columns, flag = (", ordered", ", TRUE") if channel.ordered else ("", "")
    return (
        f"{guard}{lock}"
        f"INSERT INTO {EVENT_TABLE} (channel, operation, table_name, key, old, new{columns}) "
        f"SELECT '{channel.name}', TG_OP, TG_TABLE_NAME, {key}, {old}, {new}{flag} "
        f"FROM {source} {where}; "
        f"{wake} RETURN NULL;"
    )


@checks.register(checks.Tags.models)
def check_channel_triggers(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """eventbus.E010: every channel trigger of every model renders, before migrations run."""
    configs = app_configs or apps.get_app_configs()
    return channel_trigger_errors(m for config in configs for m in config.get_models())


def channel_trigger_errors(models_: Iterable[type[models.Model]]) -> list[checks.CheckMessage]:
    """Render each channel trigger of `models_` as makemigrations would; report what fails."""
    errors: list[checks.CheckMessage] = []
    for model in models_:
        for trigger in getattr(model._meta, "triggers", []):
            if not isinstance(trigger, ChannelTrigger):
                continue
            try:
                trigger.get_func(model)
            except (ImproperlyConfigured, ValueError) as exc:
                errors.append(checks.Error(str(exc), obj=model, id="eventbus.E010"))
    return errors
