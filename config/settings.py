"""Settings of the reference site: a blog whose follow-up work runs through eventbus.

Everything that differs between machines comes from the environment.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent

# Development defaults: with DEBUG off the site and the listener refuse them (blog.checks).
DEVELOPMENT_SECRETS = {
    "DJANGO_SECRET_KEY": "dev-only-not-secret",
    "WEBHOOK_SECRET": "dev-only-webhook-secret",
}
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", DEVELOPMENT_SECRETS["DJANGO_SECRET_KEY"])
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,testserver").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "pgtrigger",
    "django_tasks",
    "eventbus",
    "blog",
]

MIDDLEWARE = [
    # The request's trace context into the events its writes make (a no-op without
    # OpenTelemetry, or without a traced request): README, "Tracing".
    "eventbus.integrations.tracing.TraceContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # the admin's CSS, from gunicorn or runserver
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# --- Database -------------------------------------------------------------------------
# DATABASE_URL selects the database. Unset: an embedded PostgreSQL in .eventbus/pgdata,
# started on demand. Its URL is exported so that listener processes attach to the same one.
if not os.environ.get("DATABASE_URL"):
    from eventbus.integrations import embedded

    os.environ["DATABASE_URL"] = embedded.start(BASE_DIR / ".eventbus" / "pgdata")

DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=0)}

# A read replica, when REPLICA_DATABASE_URL names one: the site reads from it. The
# listener's handlers still read and write the primary, in the claiming transaction:
# eventbus.PrimaryForHandlers comes first and decides while a handler runs, or a
# read_primary() block: the webhook API's views and the admin, which read their writes.
if os.environ.get("REPLICA_DATABASE_URL"):
    DATABASES["replica"] = dj_database_url.parse(os.environ["REPLICA_DATABASE_URL"], conn_max_age=0)
    DATABASE_ROUTERS = [
        "eventbus.PrimaryForHandlers",
        "config.routers.ReadReplica",
    ]
    MIDDLEWARE = ["config.routers.admin_reads_primary", *MIDDLEWARE]

# The site's migrations (models and channel triggers) live in the top-level migrations/.
MIGRATION_MODULES = {"blog": "migrations"}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# --- Static files (the admin's CSS and JavaScript) -------------------------------------
# WhiteNoise serves them from the site itself: straight from the apps (no step needed for
# the demo, runserver or the tests), and from STATIC_ROOT once `collectstatic` has run (the
# image does it at build time).
STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "staticfiles"))
WHITENOISE_USE_FINDERS = True
# Before any collectstatic, WhiteNoise warns that STATIC_ROOT is missing; the apps serve.
warnings.filterwarnings("ignore", message=f"No directory at: {STATIC_ROOT}")

# --- Email -----------------------------------------------------------------------------
# The demo prints emails to the console; production sets an SMTP backend and host.
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "blog@localhost")
# Who hears about dead events (comma-separated addresses), through mail_admins.
ADMINS = [
    (a.strip(), a.strip()) for a in os.environ.get("DJANGO_ADMINS", "").split(",") if a.strip()
]
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- Webhook API ---------------------------------------------------------------------
# Shared secret for the HMAC signature of API requests and of outgoing callbacks.
WEBHOOK_SECRET = os.environ.get("WEBHOOK_SECRET", DEVELOPMENT_SECRETS["WEBHOOK_SECRET"])
# Secrets still accepted while senders move to the new one (comma-separated).
WEBHOOK_PREVIOUS_SECRETS = [
    s for s in os.environ.get("WEBHOOK_PREVIOUS_SECRETS", "").split(",") if s.strip()
]
IDEMPOTENCY_KEY_TTL = 24 * 3600  # seconds an Idempotency-Key and its response are kept
WEBHOOK_TOLERANCE = 300  # seconds a signed request stays valid (and its replay refused)
WEBHOOK_MAX_BODY = int(os.environ.get("WEBHOOK_MAX_BODY", 1024 * 1024))  # bytes; more: 413
# Callbacks go to clients' URLs (eventbus.integrations.outbound): loopback, private and
# other internal addresses are refused, when a post is accepted and when the callback is
# sent, unless allowed (tests with a local receiver, internal deployments).
CALLBACK_ALLOW_PRIVATE = os.environ.get("CALLBACK_ALLOW_PRIVATE", "0") == "1"
CALLBACK_MAX_RESPONSE = int(os.environ.get("CALLBACK_MAX_RESPONSE", 64 * 1024))  # bytes read
CALLBACK_DEADLINE = float(os.environ.get("CALLBACK_DEADLINE", 10))  # seconds, all steps

# --- eventbus --------------------------------------------------------------------------
EVENTBUS = {
    # Modules imported at start-up that register handlers.
    "LISTENER_MODULES": ["listeners"],
    # A newly dead event emails ADMINS (at most one per channel per 10 minutes).
    "DEAD_ALERT": "mail_admins" if ADMINS else None,
    "ADMIN_BASE_URL": os.environ.get("SITE_URL", ""),  # links in alerts: https://blog.example
}
# No LOGGING: eventbus logs its start, state changes and errors to stderr by itself, at
# EVENTBUS_LOG_LEVEL (README, "Logs"). A project's LOGGING for "eventbus" would win.

# Django's task API on the same engine: @task functions run on the `listen` workers.
TASKS = {"default": {"BACKEND": "eventbus.integrations.tasks.EventbusBackend"}}
