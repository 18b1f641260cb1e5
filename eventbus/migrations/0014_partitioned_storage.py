"""The event table becomes partitioned: a small queue that rotates, history by time.

See ``eventbus.storing``. The move is online (``eventbus.storing.conversion``): not
atomic, so that history is copied in short transactions while listeners keep running,
and the table is locked only for the final swap. The model's indexes are gone from its
state: the partitioned table's indexes are ``eventbus.storing.layout``'s.
"""

from typing import Any

from django.db import migrations

from eventbus.storing.conversion import Conversion

OLD_INDEXES = ("runnable", "key_runnable", "finished", "dead", "collection")


def forward(apps: Any, schema_editor: Any) -> None:
    Conversion(schema_editor.connection, say=_say).to_partitioned()


def backward(apps: Any, schema_editor: Any) -> None:
    Conversion(schema_editor.connection, say=_say).to_plain()


def _say(text: str) -> None:
    print(f"\n  {text}", end="")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("eventbus", "0013_attempt_durations"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(forward, backward)],
            state_operations=[
                migrations.RemoveIndex(model_name="eventrecord", name=f"eventbus_event_{name}")
                for name in OLD_INDEXES
            ],
        )
    ]
