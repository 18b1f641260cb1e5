"""A data migration that writes rows on a fresh database: their triggers need the event
table, which the automatic dependency of 0001 on eventbus guarantees."""

from typing import Any

from django.db import migrations


def first_rows(apps: Any, schema_editor: Any) -> None:
    group = apps.get_model("auth", "Group")
    product = apps.get_model("catalog", "Product")
    label = apps.get_model("catalog", "Label")
    group.objects.create(name="editors")
    lamp = product.objects.create(name="lamp")
    lamp.labels.add(label.objects.create(name="new"))


class Migration(migrations.Migration):
    dependencies = [("catalog", "0001_initial")]

    operations = [migrations.RunPython(first_rows, migrations.RunPython.noop)]
