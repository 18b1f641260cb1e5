"""The reference site with a second database, "b" (BENCH_B_DATABASE_URL), holding the
channel bench_noop_b (bench/databases.py)."""

from __future__ import annotations

import os

import dj_database_url

from config.settings import *  # noqa: F403
from config.settings import DATABASES

DATABASES = {
    **DATABASES,
    "b": dj_database_url.parse(os.environ["BENCH_B_DATABASE_URL"], conn_max_age=0),
}
