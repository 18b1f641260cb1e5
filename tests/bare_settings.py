"""A project as a newcomer writes one: no LOGGING, no admin, nothing of config/settings.py.

The reference site's models, channels and handlers stand in for the project's own.
"""

from __future__ import annotations

import os

import dj_database_url

SECRET_KEY = "bare-settings-not-secret"
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "pgtrigger",
    "eventbus",
    "blog",
]
DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"])}
MIGRATION_MODULES = {"blog": "migrations"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
WEBHOOK_SECRET = "bare-settings-webhook-secret"
EVENTBUS = {"LISTENER_MODULES": ["listeners"]}
