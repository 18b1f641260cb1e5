"""The rate limit of alerts on death, shared by all workers (eventbus.integrations.alerts)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("eventbus", "0010_trace_context"),
    ]

    operations = [
        migrations.CreateModel(
            name="DeadAlertRecord",
            fields=[
                ("channel", models.CharField(max_length=128, primary_key=True, serialize=False)),
                ("sent_at", models.DateTimeField()),
                ("suppressed", models.IntegerField(default=0)),
                ("reported", models.IntegerField(default=0)),
            ],
            options={
                "verbose_name": "dead-event alert",
                "db_table": "eventbus_dead_alert",
            },
        ),
    ]
