"""Attach a channel to any table, and the database must match the code (issue 11, 2-3).

Each spec runs a throwaway project (tests/catalog: an auto-created many-to-many table and
auth's Group, attached through proxy models) as real `manage.py` processes against a
fresh database of its own, because what is at stake is what `migrate`, `makemigrations`,
`check` and `listen` do on a database they set up themselves.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db.migrations.loader import MigrationLoader

from tests.support import ROOT

pytestmark = pytest.mark.slow

BASE_URL = os.environ.get("DATABASE_URL", "postgresql://root@127.0.0.1:5432/test")
MIGRATIONS = ROOT / "tests" / "catalog" / "migrations"


def _server_url(name: str) -> str:
    return BASE_URL.rsplit("/", 1)[0] + "/" + name


class Project:
    """The catalog project on a fresh database: `manage.py` runs and SQL against it."""

    def __init__(self, tmp_path: Path) -> None:
        self.name = f"wire_{uuid.uuid4().hex[:10]}"
        self.url = _server_url(self.name)
        self.env = {
            **os.environ,
            "DATABASE_URL": self.url,
            "DJANGO_SETTINGS_MODULE": "tests.catalog.settings",
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
        }
        with psycopg.connect(_server_url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        with psycopg.connect(_server_url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def manage(
        self, *args: str, timeout: float = 120, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, *args: str, **env: str) -> str:
        done = self.manage(*args, **env)
        assert done.returncode == 0, f"manage.py {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done.stdout + done.stderr

    def shell(self, code: str, **env: str) -> str:
        return self.ok("shell", "-c", code, **env)

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url) as conn:
            return conn.execute(query, params).fetchall()

    def execute(self, statement: str) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(statement)

    def events(self, channel: str) -> list[tuple[Any, ...]]:
        return self.rows(
            "SELECT operation, key, new, old FROM eventbus_event WHERE channel = %s ORDER BY id",
            channel,
        )

    def trigger_functions(self, like: str) -> list[str]:
        return [r[0] for r in self.rows("SELECT proname FROM pg_proc WHERE proname LIKE %s", like)]


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    created = Project(tmp_path)
    yield created
    created.drop()


@pytest.fixture
def migrated(project: Project) -> Project:
    project.ok("migrate", "-v0")
    return project


def test_a_fresh_migrate_runs_a_data_migration_after_the_event_table_exists(
    migrated: Project,
) -> None:
    """catalog sorts before eventbus, and its data migration writes rows (0002)."""
    [(operation, key, new, _old)] = migrated.events("group_changed")
    assert (operation, key, new["name"]) == ("INSERT", "editors", "editors")
    [(operation, key, new, _old)] = migrated.events("product_tagged")
    [(product_id,)] = migrated.rows("SELECT id FROM catalog_product WHERE name = 'lamp'")
    assert (operation, key, new["product_id"]) == ("INSERT", str(product_id), product_id)


def test_makemigrations_makes_a_channel_trigger_migration_depend_on_eventbus(
    project: Project, tmp_path: Path
) -> None:
    """The committed migrations are exactly what makemigrations writes, and what it
    writes for a new app depends on eventbus's newest migration by itself."""
    assert "No changes detected" in project.ok("makemigrations", "catalog", "--check", "--dry-run")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "__init__.py").write_text("")
    written = project.ok(
        "makemigrations", "catalog", "--dry-run", "-v", "3", CATALOG_MIGRATIONS="elsewhere.mig"
    )
    newest = MigrationLoader(None).graph.leaf_nodes("eventbus")[0]
    assert repr(newest).replace('"', "'") in written, written


def test_an_auto_created_many_to_many_table_makes_events_through_a_proxy(
    migrated: Project,
) -> None:
    migrated.shell(
        "from tests.catalog.models import Product, Label\n"
        "p = Product.objects.create(name='desk'); red = Label.objects.create(name='red')\n"
        "p.labels.add(red); p.labels.remove(red)"
    )
    [(desk,)] = migrated.rows("SELECT id FROM catalog_product WHERE name = 'desk'")
    [red] = migrated.rows("SELECT id FROM catalog_label WHERE name = 'red'")[0]
    *_, added, removed = migrated.events("product_tagged")
    assert added[:2] == ("INSERT", str(desk)) and added[2]["label_id"] == red
    assert removed[:2] == ("DELETE", str(desk)) and removed[3]["label_id"] == red


def test_a_model_of_another_app_makes_events_through_a_proxy(migrated: Project) -> None:
    migrated.shell(
        "from django.contrib.auth.models import Group\n"
        "Group.objects.filter(name='editors').update(name='authors')"
    )
    *_, (operation, key, new, old) = migrated.events("group_changed")
    assert (operation, key, old["name"], new["name"]) == ("UPDATE", "authors", "editors", "authors")


def test_check_and_listen_refuse_a_missing_trigger_with_its_remedy(migrated: Project) -> None:
    [(pgid,)] = migrated.rows(
        "SELECT tgname FROM pg_trigger WHERE tgname LIKE 'pgtrigger_eb_product_tagged_ins_%%'"
    )
    migrated.execute(f"DROP TRIGGER {pgid} ON catalog_product_labels")

    check = migrated.manage("check")
    assert check.returncode == 1
    assert (
        "catalog.ProductLabelEvents: (eventbus.E020) The INSERT trigger of channel "
        "product_tagged on table catalog_product_labels is not installed" in check.stderr
    )
    remedy = "`manage.py pgtrigger install catalog.ProductLabelEvents:eb_product_tagged_ins`"
    assert remedy in check.stderr

    listen = migrated.manage("listen", "--processes", "1", timeout=30)
    assert listen.returncode != 0
    assert "product_tagged" in listen.stderr and remedy in listen.stderr
    assert "started (channels" not in listen.stdout + listen.stderr

    migrated.ok("pgtrigger", "install", "catalog.ProductLabelEvents:eb_product_tagged_ins")
    assert "eventbus." not in migrated.ok("check")


def test_check_says_migrate_while_a_migration_that_installs_a_trigger_is_pending(
    project: Project,
) -> None:
    project.ok("migrate", "eventbus", "-v0")
    check = project.manage("check")
    assert check.returncode == 1
    assert "(eventbus.E020) The UPDATE trigger of channel group_changed" in check.stderr
    assert "Run `manage.py migrate`: a migration not yet applied installs it." in check.stderr


def test_check_reports_a_channel_registered_on_a_through_model_as_never_installed(
    project: Project,
) -> None:
    """pgtrigger.register on an auto-created table: migrate installs nothing, silently."""
    project.ok("migrate", "-v0", CATALOG_ROUTE="register")
    check = project.manage("check", CATALOG_ROUTE="register")
    assert check.returncode == 1
    assert (
        "catalog.Product_labels: (eventbus.E020) The INSERT trigger of channel product_tagged "
        "on table catalog_product_labels is not installed" in check.stderr
    )
    assert "declare it on a proxy model in your app" in check.stderr


def test_check_warns_of_a_trigger_left_from_pgtrigger_install_that_doubles_events(
    migrated: Project,
) -> None:
    """Moving from `pgtrigger install` to migrations left the old trigger: 2 events per add."""
    migrated.ok(
        "pgtrigger",
        "install",
        "catalog.Product_labels:eb_product_tagged_ins",
        CATALOG_ROUTE="register",
    )
    before = len(migrated.events("product_tagged"))
    migrated.shell(
        "from tests.catalog.models import Product, Label\n"
        "Product.objects.get(name='lamp').labels.add(Label.objects.create(name='old'))"
    )
    assert len(migrated.events("product_tagged")) == before + 2

    check = migrated.manage("check")
    assert check.returncode == 0  # a warning: writes still make their events
    assert "(eventbus.W020) Trigger pgtrigger_eb_product_tagged_ins_" in check.stderr
    assert "Run `manage.py pgtrigger prune`" in check.stderr

    migrated.ok("pgtrigger", "prune")
    assert "eventbus.W020" not in migrated.ok("check")


def test_removing_a_channel_by_migration_drops_its_trigger_functions(
    migrated: Project, tmp_path: Path
) -> None:
    assert len(migrated.trigger_functions("pgtrigger_eb_product_tagged_%")) == 2
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "__init__.py").write_text("")
    shutil.copytree(MIGRATIONS, tmp_path / "moved" / "mig", ignore=shutil.ignore_patterns("__py*"))
    removed = {"CATALOG_ROUTE": "removed", "CATALOG_MIGRATIONS": "moved.mig"}
    assert "Remove trigger eb_product_tagged_ins" in migrated.ok(
        "makemigrations", "catalog", **removed
    )
    migrated.ok("migrate", "-v0", **removed)

    assert migrated.trigger_functions("pgtrigger_eb_product_tagged_%") == []
    assert migrated.trigger_functions("pgtrigger_eb_group_changed_%") != []
    assert "eventbus." not in migrated.ok("check", **removed)


@pytest.mark.django_db
def test_check_compares_the_triggers_however_it_is_run_and_other_commands_do_not() -> None:
    """`call_command("check")` (a deploy script, a test) compares too; the checks that
    every other command runs, migrate's among them, never do."""
    from django.core import checks
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tgname FROM pg_trigger WHERE tgname LIKE 'pgtrigger_eb_comment_created%'"
        )
        (name,) = cursor.fetchone()
        cursor.execute(f'DROP TRIGGER "{name}" ON blog_comment')  # undone with the test
    with pytest.raises(SystemCheckError, match=r"eventbus\.E020.*comment_created"):
        call_command("check")
    assert "eventbus.E020" not in {m.id for m in checks.run_checks()}
