"""How long the attempt that made an event done took (a failed attempt's is in `errors`).

A nullable column without a default: adding it rewrites no rows.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("eventbus", "0012_dashboard"),
    ]

    operations = [
        migrations.AddField(
            model_name="eventrecord",
            name="duration",
            field=models.FloatField(blank=True, null=True),
        ),
    ]
