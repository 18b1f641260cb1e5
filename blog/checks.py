"""The reference site refuses to run with DEBUG off on a development or empty secret.

A forgotten environment variable must not put a site on the internet whose sessions
anyone can forge (SECRET_KEY) or whose webhook API anyone can call (WEBHOOK_SECRET). With
DEBUG off, `manage.py check` (and so `listen`, `migrate` and every other command) and the
WSGI application (config/wsgi.py) stop with an error that names the variable.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, register
from django.core.exceptions import ImproperlyConfigured

# The variable each secret comes from, and the setting that holds it.
SECRETS = {"DJANGO_SECRET_KEY": "SECRET_KEY", "WEBHOOK_SECRET": "WEBHOOK_SECRET"}


@register(Tags.security)
def secrets_are_set(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    if settings.DEBUG:
        return []
    development = getattr(settings, "DEVELOPMENT_SECRETS", {})
    errors = []
    for n, (variable, setting) in enumerate(SECRETS.items(), start=1):
        try:
            value = getattr(settings, setting, "")
        except ImproperlyConfigured:  # Django refuses an empty SECRET_KEY on access
            value = ""
        if value and value != development.get(variable):
            continue
        what = "empty" if not value else "its development default"
        errors.append(
            Error(
                f"{variable} is {what}, and DEBUG is off",
                hint=f"set {variable} in the environment to a long random value "
                f'(python -c "import secrets; print(secrets.token_urlsafe(50))"), '
                "or DJANGO_DEBUG=1 on a development machine",
                id=f"blog.E00{n}",
            )
        )
    return errors
