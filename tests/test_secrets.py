"""With DEBUG off the reference site and its listener refuse development or empty secrets
(issue 13): a forgotten variable must not put a forgeable site on the internet."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from django.test import override_settings

from blog.checks import secrets_are_set
from tests.support import ROOT, manage, manage_env

DEVELOPMENT = {
    "DJANGO_SECRET_KEY": "dev-only-not-secret",
    "WEBHOOK_SECRET": "dev-only-webhook-secret",
}


@pytest.mark.parametrize(
    ("setting", "value", "variable"),
    [
        ("SECRET_KEY", DEVELOPMENT["DJANGO_SECRET_KEY"], "DJANGO_SECRET_KEY"),
        ("SECRET_KEY", "", "DJANGO_SECRET_KEY"),
        ("WEBHOOK_SECRET", DEVELOPMENT["WEBHOOK_SECRET"], "WEBHOOK_SECRET"),
        ("WEBHOOK_SECRET", "", "WEBHOOK_SECRET"),
    ],
)
def test_a_development_or_empty_secret_is_an_error_naming_its_variable(
    setting: str, value: str, variable: str
) -> None:
    with override_settings(DEBUG=False, **{setting: value}):
        errors = secrets_are_set()
    assert [e.msg.split()[0] for e in errors] == [variable]
    with override_settings(DEBUG=True, **{setting: value}):
        assert secrets_are_set() == [], "a development machine may use them"


def test_real_secrets_pass() -> None:
    with override_settings(DEBUG=False, SECRET_KEY="k" * 50, WEBHOOK_SECRET="w" * 50):
        assert secrets_are_set() == []


def test_the_listener_refuses_to_start_on_the_development_webhook_secret() -> None:
    result = manage("listen", env={"WEBHOOK_SECRET": DEVELOPMENT["WEBHOOK_SECRET"]}, timeout=60)
    assert result.returncode != 0
    assert "blog.E002" in result.stderr and "WEBHOOK_SECRET is its development default" in (
        result.stderr
    )


def test_the_site_refuses_to_serve_on_the_development_secret_key() -> None:
    """A WSGI server runs no system checks: config/wsgi.py runs the security ones."""
    result = subprocess.run(
        [sys.executable, "-c", "import config.wsgi"],
        cwd=ROOT,
        env=manage_env(DJANGO_SECRET_KEY=DEVELOPMENT["DJANGO_SECRET_KEY"]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is its development default" in result.stderr


def test_deploy_ships_no_usable_secret() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    for service in compose["services"].values():
        environment = service.get("environment") or {}
        for variable in ("WEBHOOK_SECRET", "DJANGO_SECRET_KEY"):
            if variable in environment:
                assert environment[variable].startswith("${" + variable + ":?"), environment
