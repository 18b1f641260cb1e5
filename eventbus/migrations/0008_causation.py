"""Causation: which event's handler wrote an event, and the collection it belongs to.

The columns' database defaults read two transaction-local settings that the executor sets
while a handler runs (and ``eventbus.collection()`` sets in a request), so the channel
triggers and ``publish`` fill them without naming them. Adding nullable columns and then
their defaults rewrites no rows: existing events are roots of their own.
"""

from django.db import migrations, models

from eventbus import sql

DEFAULTS = {
    "caused_by": "nullif(current_setting('eventbus.caused_by', true), '')::bigint",
    "correlation_id": "nullif(current_setting('eventbus.correlation', true), '')::bigint",
}


class Migration(migrations.Migration):
    dependencies = [
        ("eventbus", "0007_task_results"),
    ]

    operations = [
        migrations.AddField(
            model_name="eventrecord",
            name="caused_by",
            field=models.BigIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="eventrecord",
            name="correlation_id",
            field=models.BigIntegerField(blank=True, null=True),
        ),
        *(
            migrations.RunSQL(
                sql.set_column_default("eventbus_event", column, expression),
                sql.drop_column_default("eventbus_event", column),
            )
            for column, expression in DEFAULTS.items()
        ),
    ]
