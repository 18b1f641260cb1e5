"""`manage.py check`, which also compares the database's channel triggers with the code.

Django's own command, run inside :func:`eventbus.declaring.installed.comparing`, as
``django.contrib.staticfiles`` extends ``runserver``. Only this command compares: every
other command runs the system checks as well, ``migrate`` among them, which must never be
stopped by a trigger that it is about to install.
"""

from __future__ import annotations

from typing import Any

from django.core.management.commands.check import Command as DjangoCheckCommand

from eventbus.declaring import installed


class Command(DjangoCheckCommand):
    help = (
        f"{DjangoCheckCommand.help} With eventbus: also compares the channel triggers "
        "installed in the database with those the code declares (eventbus.E020-E022, W020-W022)."
    )

    def handle(self, *app_labels: Any, **options: Any) -> None:
        with installed.comparing():
            super().handle(*app_labels, **options)
