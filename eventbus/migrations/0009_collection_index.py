"""The index of collections' members, built without blocking writers.

``CREATE INDEX`` would hold off every insert into the event table, so every write of the
application's that fires a channel trigger, for as long as it scans the table; built
concurrently, writers go on (hence a migration that runs outside a transaction).
"""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("eventbus", "0008_causation"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="eventrecord",
            index=models.Index(
                condition=models.Q(("correlation_id__isnull", False)),
                fields=["correlation_id"],
                name="eventbus_event_collection",
            ),
        ),
    ]
