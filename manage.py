#!/usr/bin/env python
"""Django's command-line utility for the eventbus reference site."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.core.management import execute_from_command_line
    from django.db import OperationalError

    try:
        execute_from_command_line(sys.argv)
    except OperationalError as exc:  # a traceback of ninety lines, or one line with the remedy
        from eventbus.operating.databases import missing_database

        remedy = missing_database(exc)
        if remedy is None:
            raise
        sys.exit(f"error: {remedy}")


if __name__ == "__main__":
    main()
