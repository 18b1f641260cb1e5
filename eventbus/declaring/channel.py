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
from eventbus.declaring.triggers import CompiledChannelTrigger

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
_SUBSCRIPTION = re.compile(r"^[a-z][a-z0-9_]{0,24}$")  # <channel>:<subscription> fits 64
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

EVENT_TABLE = "eventbus_event"
NOTIFY_PREFIX = "eventbus_"

Handler = Callable[["Event"], Any]
BatchHandler = Callable[[list["Event"]], Any]


def notify_channel(name: str) -> str:
    """The PostgreSQL NOTIFY channel that wakes listeners of the eventbus channel `name`
    (or of any of its subscriptions: one wake-up serves them all)."""
    return NOTIFY_PREFIX + registry.base_name(name)


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
        subscriptions: names of the channel's handlers, for a channel with several
            (``["email_author", "search_index"]``). Each is a queue of its own,
            ``<channel>:<subscription>``: the trigger writes one event per subscription,
            and each has its own state, attempts, backoff and dead letters, so one
            failing never re-runs another. Register each with ``@channel.on("name")``.
            Empty (default): one handler, and the queue is the channel's own name.
        database: the Django alias of the database its model's table (and so its trigger
            and events) lives in; default ``EVENTBUS["DATABASE_ALIAS"]``.
            ``EVENTBUS["CHANNELS"][name]["database"]`` overrides it (README, "Channels in
            several databases").
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
    subscriptions: Sequence[str] = ()
    database: str | None = None
    handler: Handler | BatchHandler | None = field(default=None, repr=False)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
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
        self.subscriptions = tuple(self.subscriptions)
        for subscription in self.subscriptions:
            if not _SUBSCRIPTION.fullmatch(subscription):
                raise ValueError(
                    f"channel {self.name}: subscription name {subscription!r} must match "
                    f"{_SUBSCRIPTION.pattern}"
                )
        if len(set(self.subscriptions)) != len(self.subscriptions):
            raise ValueError(f"channel {self.name}: a subscription is named twice")
        registry.add_channel(self)

    @property
    def queues(self) -> tuple[str, ...]:
        """The names its events are stored and claimed under: one per subscription."""
        if not self.subscriptions:
            return (self.name,)
        return tuple(f"{self.name}{registry.SEPARATOR}{s}" for s in self.subscriptions)

    @property
    def notify_channel(self) -> str:
        return notify_channel(self.name)

    def triggers(self) -> list[pgtrigger.Trigger]:
        """The triggers to list in the model's ``Meta.triggers``: one per operation."""
        return [ChannelTrigger(self, operation) for operation in self.operations]

    def on(
        self,
        target: Handler | str | None = None,
        /,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> Any:
        """Decorator: register a handler of this channel.

        The handler gets an :class:`eventbus.Event` and runs inside the transaction that
        claimed the event, in a savepoint: its database writes commit together with the
        event being marked done, or not at all.

        ``@channel.on`` on a channel without subscriptions registers its one handler.
        On a channel with subscriptions, ``@channel.on("email_author")`` (or a bare
        ``@channel.on`` on a function of that name) registers that subscription's
        handler; ``timeout`` and ``retry`` then override the channel's for it alone.
        """
        return self._register(target, batch=False, timeout=timeout, retry=retry)

    def on_batch(
        self,
        target: BatchHandler | str | None = None,
        /,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> Any:
        """Decorator: register a handler that takes all of a batch's events of this channel
        (or of one subscription, named as for :meth:`on`).

        Use it to aggregate (sum counter deltas, send one request for many events) and to
        take row locks in one fixed order. If it raises, the engine runs it again once per
        event, each in its own savepoint, so only the events that fail are failed.
        """
        return self._register(target, batch=True, timeout=timeout, retry=retry)

    def _register(
        self,
        target: Callable[..., Any] | str | None,
        batch: bool,
        timeout: float | None,
        retry: RetryPolicy | None,
    ) -> Any:
        def register(handler: Callable[..., Any], subscription: str | None) -> Any:
            queue = self._queue_for(subscription, handler)
            registry.set_handler(queue, registry.Registration(handler, batch=batch))
            if timeout is not None or retry is not None:
                if timeout is not None and timeout <= 0:
                    raise ValueError(f"channel {queue}: timeout must be positive")
                self.overrides[queue] = {"timeout": timeout, "retry": retry}
            if not self.subscriptions:
                self.handler = handler
            return handler

        if callable(target):
            return register(target, None)
        return lambda handler: register(handler, target)

    def _queue_for(self, subscription: str | None, handler: Callable[..., Any]) -> str:
        """The queue a handler registers for, or a clear error naming the remedy."""
        if not self.subscriptions:
            if subscription is not None:
                raise ValueError(
                    f"channel {self.name} declares no subscriptions, so its handler takes no "
                    f"name (got {subscription!r}): use @{self.name}.on, or declare "
                    f"Channel({self.name!r}, subscriptions=[{subscription!r}, ...])"
                )
            return self.name
        name = subscription or getattr(handler, "__name__", "")
        if name not in self.subscriptions:
            raise ValueError(
                f"channel {self.name} has no subscription {name!r}; its subscriptions are "
                f"{', '.join(self.subscriptions)}: name one, @{self.name}.on('<subscription>')"
                ", or add it to the channel's subscriptions (then makemigrations and migrate)"
            )
        return f"{self.name}{registry.SEPARATOR}{name}"

    def on_dead(self, hook: Callable[[Event, str], Any]) -> Callable[[Event, str], Any]:
        """Decorator: call `hook(event, error)` when an event of this channel (of any of
        its subscriptions: ``event.subscription`` tells which) dies.

        It runs in the claim transaction (in its own savepoint) before the event is marked
        dead, so what it writes or publishes commits with the death. Its own errors are
        logged and do not change the outcome.
        """
        registry.set_dead_hook(self.name, hook)
        return hook

    def publish(
        self, payload: dict[str, Any], key: str | int | None = None, using: str | None = None
    ) -> int:
        """Write an event of this channel from code, in the current transaction.

        For channels without a table behind them (``operations=()``): the event commits
        or rolls back with the caller's transaction, exactly like a trigger's. Returns its
        id (with subscriptions, one event per subscription is written; the first's id).
        `using`: the database alias; default the channel's database, where listeners
        claim its events.
        """
        from django.db import connections

        from eventbus import sql as queries
        from eventbus.declaring import placement

        using = using or placement.database_of(self.name)

        with connections[using].cursor() as cursor:
            cursor.execute(
                *queries.publish(
                    self.name,
                    self.queues,
                    payload,
                    None if key is None else str(key),
                    self.notify,
                    self.ordered,
                )
            )
            return int(cursor.fetchone()[0])


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

    def compile(self, model: type[models.Model]) -> CompiledChannelTrigger:
        """pgtrigger's compiled trigger, whose removal also drops the trigger's function."""
        return CompiledChannelTrigger.of(super().compile(model))


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
    # One row per subscription (its queue): each keeps its own state and attempts. The
    # cross join keeps it one INSERT statement for any number of rows and subscriptions.
    queue, fan_out = f"'{channel.name}'", ""
    if channel.subscriptions:
        values = ", ".join(f"('{q}')" for q in channel.queues)
        queue, fan_out = "s.queue", f" CROSS JOIN (VALUES {values}) AS s(queue)"
    return (
        f"{guard}{lock}"
        f"INSERT INTO {EVENT_TABLE} (channel, operation, table_name, key, old, new{columns}) "
        f"SELECT {queue}, TG_OP, TG_TABLE_NAME, {key}, {old}, {new}{flag} "
        f"FROM {source}{fan_out} {where}; "
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
