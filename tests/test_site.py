"""The reference site as a newcomer meets it: a styled admin, a demo that shows the live
path and says where to look next, and a missing database named in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from tests.support import manage
from tests.test_deploy import dockerfile, image_environment, image_tree

ADMIN_CSS = "/static/admin/css/base.css"
MISSING = "eventbus_no_such_database"  # a database nobody creates


def css(client: Client) -> bytes:
    response = client.get(ADMIN_CSS)
    assert response.status_code == 200, f"{ADMIN_CSS}: {response.status_code}"
    assert response["Content-Type"].startswith("text/css")
    return b"".join(response.streaming_content)


@pytest.mark.django_db
def test_the_admin_is_styled_without_any_build_step() -> None:
    login = Client().get("/admin/login/")
    assert ADMIN_CSS in login.content.decode()
    assert b"--body-bg" in css(Client())  # the admin's own stylesheet


@pytest.mark.django_db
def test_collectstatic_fills_static_root_and_the_site_serves_it_from_there(
    tmp_path: Path, settings: Any
) -> None:
    result = manage("collectstatic", "--noinput", env={"STATIC_ROOT": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    collected = tmp_path / "admin" / "css" / "base.css"
    assert collected.is_file()

    settings.STATIC_ROOT = tmp_path
    settings.WHITENOISE_USE_FINDERS = False  # as gunicorn in the image: STATIC_ROOT only
    assert css(Client()) == collected.read_bytes()


def test_the_image_collects_the_static_files_at_build_time(tmp_path: Path) -> None:
    """The Dockerfile's collectstatic step, run on the image's files with its environment."""
    tree = image_tree(tmp_path / "app")
    [step] = [rest for op, rest in dockerfile() if op == "RUN" and "collectstatic" in rest]
    env = {**image_environment(), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    result = subprocess.run(
        ["bash", "-c", step], cwd=tree, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert (tree / "staticfiles" / "admin" / "css" / "base.css").is_file()


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_the_demo_writes_while_the_workers_listen_and_points_to_the_admin() -> None:
    result = manage("demo", "--processes", "1", "--comments", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout

    listening = out.index("worker(s) listening and idle")
    first_write = out.index("demo: alice writes two posts")
    assert listening < first_write  # the writes wait for LISTEN: no start-up drain only
    assert out.count(" ms after the write: ") == 4  # each step's events, handled live
    assert "http://127.0.0.1:8000/admin/eventbus/eventrecord/" in out
    assert "./run manage createsuperuser" in out and "./run manage runserver" in out


def missing_database_url() -> str:
    return f"postgresql://root@127.0.0.1:5432/{MISSING}"


@pytest.mark.parametrize(
    ("command", "prefix"),
    [
        ("migrate", "error"),  # the reference site's manage.py says it
        ("demo", "error"),
        ("events", "CommandError"),  # eventbus's commands say it themselves, in any project
    ],
)
def test_a_database_that_does_not_exist_is_one_line_with_the_remedy(
    command: str, prefix: str
) -> None:
    result = manage(command, env={"DATABASE_URL": missing_database_url()})

    assert result.returncode == 1
    assert result.stderr.strip() == (
        f'{prefix}: database "{MISSING}" does not exist: create it with '
        f"`createdb -h 127.0.0.1 -p 5432 -U root {MISSING}`, then run ./manage.py migrate"
    )


@pytest.mark.parametrize("command", [("events",), ("recover",), ("listen",)])
def test_eventbus_commands_in_any_project_name_the_missing_database_and_the_remedy(
    command: tuple[str, ...],
) -> None:
    """eventbus's own refusal, without the reference site's manage.py handling it."""
    result = manage(
        *command,
        env={
            "DATABASE_URL": missing_database_url(),
            "DJANGO_SETTINGS_MODULE": "tests.bare_settings",
        },
        timeout=60,  # without the refusal, workers would wait for the database forever
    )

    assert result.returncode == 1
    assert result.stderr.strip() == (
        f'CommandError: database "{MISSING}" does not exist: create it with '
        f"`createdb -h 127.0.0.1 -p 5432 -U root {MISSING}`, then run ./manage.py migrate"
    )
