"""The dashboard's tables: the per-minute rollup the workers write, and paused channels.

Both are new and small, so creating them locks nothing the engine or the application
uses; the ``Dashboard`` proxy only gives the admin page its entry and permissions.
"""

import django.contrib.postgres.fields
from django.db import migrations, models

from eventbus import compat


class Migration(migrations.Migration):
    dependencies = [
        ("eventbus", "0011_dead_alerts"),
    ]

    operations = [
        migrations.CreateModel(
            name="PauseRecord",
            fields=[
                ("name", models.CharField(max_length=64, primary_key=True, serialize=False)),
                ("paused_at", models.DateTimeField()),
                ("paused_by", models.CharField(max_length=150)),
            ],
            options={
                "verbose_name": "paused channel",
                "db_table": "eventbus_pause",
            },
        ),
        migrations.CreateModel(
            name="RollupRecord",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("minute", models.DateTimeField()),
                ("queue", models.CharField(max_length=64)),
                (
                    "writer",
                    models.CharField(
                        blank=True, max_length=160, **compat.db_default("", default="")
                    ),
                ),
                ("handled", models.IntegerField(default=0)),
                ("failed", models.IntegerField(default=0)),
                ("died", models.IntegerField(default=0)),
                ("seconds", models.FloatField(default=0.0)),
                (
                    "histogram",
                    django.contrib.postgres.fields.ArrayField(
                        base_field=models.IntegerField(), blank=True, default=list, size=None
                    ),
                ),
                ("backlog", models.IntegerField(blank=True, null=True)),
            ],
            options={
                "verbose_name": "rollup minute",
                "db_table": "eventbus_rollup",
                "constraints": [
                    models.UniqueConstraint(
                        fields=("minute", "queue", "writer"),
                        name="eventbus_rollup_minute_queue_writer",
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="Dashboard",
            fields=[],
            options={
                "verbose_name": "dashboard",
                "verbose_name_plural": "dashboard",
                "proxy": True,
                "indexes": [],
                "constraints": [],
            },
            bases=("eventbus.rolluprecord",),
        ),
        *compat.set_database_defaults("eventbus_rollup", writer="''"),
    ]
