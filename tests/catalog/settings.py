"""A project that adopts eventbus on tables it does not declare itself: an auto-created
many-to-many table and django.contrib.auth's Group (the specs of test_wiring.py).

Its app label, ``catalog``, sorts before ``eventbus``: where no dependency links them, a
fresh ``migrate`` runs its migrations first. CATALOG_MIGRATIONS moves its migrations to
another module (a spec writes new ones there); CATALOG_ROUTE picks how models.py attaches
the many-to-many channel (see there).
"""

import os

from config.settings import *  # noqa: F403

# A project of its own: none of the reference site's apps, URLs or listeners.
INSTALLED_APPS = [*(a for a in INSTALLED_APPS if a != "blog"), "tests.catalog"]  # noqa: F405
ROOT_URLCONF = "tests.catalog.urls"
MIGRATION_MODULES = {
    "catalog": os.environ.get("CATALOG_MIGRATIONS", "tests.catalog.migrations"),
}
EVENTBUS = {"LISTENER_MODULES": ["tests.catalog.handlers"]}
