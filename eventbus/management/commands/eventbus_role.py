"""./manage.py eventbus_role ROLE: print the SQL for a least-privilege listener role."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from eventbus.management.commands._base import EventbusCommand
from eventbus.operating import roles


class Command(EventbusCommand):
    help = (
        "Print idempotent SQL that creates ROLE with only what a listener needs: the event "
        "tables, and the models its handlers read (--read), update (--update) or write "
        "(--write). Run it as the tables' owner; set the password separately."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("role", help="the role to create, for instance eventbus_listener")
        for option, what in (
            ("--read", "SELECT"),
            ("--update", "SELECT, UPDATE"),
            ("--write", "SELECT, INSERT, UPDATE, DELETE"),
        ):
            parser.add_argument(
                option,
                nargs="+",
                default=[],
                metavar="APP.MODEL",
                help=f"models handlers need {what} on (name M2M through models too)",
            )
        parser.add_argument("--schema", default="public")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            text = roles.listener_role(
                options["role"],
                read=options["read"],
                update=options["update"],
                write=options["write"],
                schema=options["schema"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(text, ending="")
