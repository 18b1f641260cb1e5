"""Trace context: the W3C traceparent of the traced request that wrote an event.

Its database default reads a transaction-local setting that
``eventbus.integrations.tracing.TraceContextMiddleware`` sets before a traced request's
writes, so the channel triggers and ``publish`` fill it without naming it, as they fill
the causation columns (0008). A nullable column and then its default: no row rewritten.
"""

from django.db import migrations, models

from eventbus import sql

DEFAULT = "nullif(current_setting('eventbus.traceparent', true), '')"


class Migration(migrations.Migration):
    dependencies = [
        ("eventbus", "0009_collection_index"),
    ]

    operations = [
        migrations.AddField(
            model_name="eventrecord",
            name="traceparent",
            field=models.TextField(blank=True, null=True),
        ),
        migrations.RunSQL(
            sql.set_column_default("eventbus_event", "traceparent", DEFAULT),
            sql.drop_column_default("eventbus_event", "traceparent"),
        ),
    ]
