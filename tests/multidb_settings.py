"""The reference site with a second database, "other" (OTHER_DATABASE_URL), holding the
analytics app's table and its channel page_viewed (tests/test_databases.py).

PAGE_VIEWED_DATABASE, when set, moves the channel by setting, as an operator would:
``EVENTBUS["CHANNELS"]["page_viewed"]["database"]``.
"""

from __future__ import annotations

import os

import dj_database_url

from config.settings import *  # noqa: F403
from config.settings import DATABASES, EVENTBUS, INSTALLED_APPS

DATABASES = {
    **DATABASES,
    "other": dj_database_url.parse(os.environ["OTHER_DATABASE_URL"], conn_max_age=0),
}
INSTALLED_APPS = [*INSTALLED_APPS, "tests.analytics"]
DATABASE_ROUTERS = ["eventbus.PrimaryForHandlers", "tests.analytics.routers.AnalyticsRouter"]
EVENTBUS = {
    **EVENTBUS,
    "LISTENER_MODULES": [*EVENTBUS["LISTENER_MODULES"], "tests.analytics.handlers"],
}
if os.environ.get("PAGE_VIEWED_DATABASE"):
    EVENTBUS["CHANNELS"] = {"page_viewed": {"database": os.environ["PAGE_VIEWED_DATABASE"]}}
