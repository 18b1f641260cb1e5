"""The built wheel is the product: it installs on its own and runs in someone else's project.

The wheel is built once per module, and installed once per wheel content into a virtual
environment cached under ``.eventbus/`` (pip downloads Django and the rest from its index,
through pip's own cache). Each spec then works in a fresh ``django-admin startproject``
with a database of its own.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.db import connection
from psycopg import sql

from tests.support import ROOT, database_url, wait_until

pytestmark = pytest.mark.slow

# Everything of the repository that is the reference site or its tooling, not the engine.
REFERENCE_SITE = ("blog", "channels", "listeners", "config", "migrations", "tests", "bench")
REFERENCE_SITE += ("deploy",)

SHOP_MODELS = """
from django.db import models

from eventbus import INSERT, Channel

order_placed = Channel("order_placed", operations=[INSERT], key="id")


class Order(models.Model):
    item = models.CharField(max_length=50)

    class Meta:
        triggers = order_placed.triggers()


class Receipt(models.Model):
    order_id = models.IntegerField(unique=True)
    item = models.CharField(max_length=50)
"""

SHOP_HANDLERS = """
from eventbus import Event

from shop.models import Receipt, order_placed


@order_placed.on
def write_receipt(event: Event) -> None:
    Receipt.objects.create(order_id=event.new["id"], item=event.new["item"])
"""

SETTINGS_TAIL = """
import dj_database_url

INSTALLED_APPS += ["pgtrigger", "eventbus", "shop"]
DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"])}
EVENTBUS = {"LISTENER_MODULES": ["shop.handlers"]}
"""


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m build` of this checkout: the sdist, and the wheel built from the sdist.

    From the sdist, as pip does, so a stale ``build/`` in the checkout cannot leak in.
    """
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert "deprecat" not in (built.stdout + built.stderr).lower(), (
        "the build warns of a deprecation"
    )
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    (built,) = dist.glob("eventbus-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path) -> Path:
    """A virtual environment with the wheel installed, and nothing of this repository."""
    cache = ROOT / ".eventbus"
    path = cache / f"wheel-venv-{_content_hash(wheel)}"
    if (path / "ready").exists():
        return path
    for stale in cache.glob("wheel-venv-*"):  # older wheels', or a half-made one
        shutil.rmtree(stale)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    pip = [str(path / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "-q", str(wheel)], check=True, timeout=600)
    (path / "ready").touch()
    return path


@pytest.fixture
def project(venv: Path, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A new project (startproject, startapp) on a database of its own; dropped after."""
    python = str(venv / "bin" / "python")
    home = tmp_path / "site"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
    startproject = [python, "-m", "django", "startproject", "shop_site", str(home)]
    subprocess.run(startproject, cwd=tmp_path, env=env, check=True)
    subprocess.run([python, "manage.py", "startapp", "shop"], cwd=home, env=env, check=True)
    (home / "shop" / "models.py").write_text(textwrap.dedent(SHOP_MODELS).lstrip())
    (home / "shop" / "handlers.py").write_text(textwrap.dedent(SHOP_HANDLERS).lstrip())
    settings = home / "shop_site" / "settings.py"
    settings.write_text("import os\n" + settings.read_text() + SETTINGS_TAIL)

    # The project's database sits on the server of this session's, named after it.
    server = _with_database(database_url(), "postgres")
    name = f"{connection.settings_dict['NAME'].removeprefix('test_')}_wheel"
    _admin(server, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)"), name)
    _admin(server, sql.SQL("CREATE DATABASE {}"), name)
    env["DATABASE_URL"] = _with_database(server, name)
    try:
        yield home, env
    finally:
        _admin(server, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)"), name)


def test_the_distributions_pass_twine_check(dist: Path) -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, sorted(dist.iterdir()))],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 2, checked.stdout


def test_the_wheel_holds_the_engine_and_none_of_the_reference_site(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "eventbus/migrations/0001_initial.py" in names
    assert "eventbus/management/commands/listen.py" in names
    assert "eventbus/templates/admin/eventbus/eventrecord/change_form.html" in names
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"eventbus", wheel.name.split("-py3")[0] + ".dist-info"}
    assert (
        "License-Expression: MIT"
        in zipfile.ZipFile(wheel).read(f"{wheel.name.split('-py3')[0]}.dist-info/METADATA").decode()
    )


def test_a_new_project_with_the_installed_wheel_handles_its_events(
    venv: Path, project: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    home, env = project
    python = str(venv / "bin" / "python")

    def manage(*args: str) -> str:
        done = subprocess.run(
            [python, "manage.py", *args], cwd=home, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"manage.py {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done.stdout

    # The engine comes from the venv, at its released version; the reference site is absent.
    found = manage(
        "shell",
        "-c",
        "import eventbus, importlib.metadata as m, importlib.util as u; "
        "print(eventbus.__file__); print(eventbus.__version__, m.version('eventbus')); "
        f"print([n for n in {REFERENCE_SITE!r} if u.find_spec(n)])",
    ).splitlines()[-3:]  # after what Django 5.2's shell says it imported
    assert found[0].startswith(str(venv)), found
    version, installed = found[1].split()
    assert version == installed
    assert found[2] == "[]", f"importable from the reference site: {found[2]}"

    assert "shop/migrations/0001_initial.py" in manage("makemigrations", "shop")
    manage("migrate")

    log = tmp_path / "listen.log"
    with log.open("w") as out:
        listener = subprocess.Popen(
            [python, "manage.py", "listen"],
            cwd=home,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        manage("shell", "-c", "from shop.models import Order; Order.objects.create(item='book')")
        with psycopg.connect(env["DATABASE_URL"], autocommit=True) as db:
            receipts = wait_until(
                lambda: db.execute("SELECT item FROM shop_receipt").fetchall(),
                timeout=60,
                what=f"the handler's receipt; listen log:\n{log.read_text()}",
            )
            events = db.execute("SELECT channel, state FROM eventbus_event").fetchall()
        assert receipts == [("book",)]
        assert events == [("order_placed", "done")]
        listener.send_signal(signal.SIGTERM)
        assert listener.wait(30) == 0, log.read_text()
    finally:
        if listener.poll() is None:
            os.killpg(listener.pid, signal.SIGKILL)
            listener.wait()


def _content_hash(wheel: Path) -> str:
    """The wheel's files, not its zip timestamps: a rebuild of the same code hashes the same."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            digest.update(name.encode() + b"\0" + archive.read(name) + b"\0")
    return digest.hexdigest()[:16]


def _admin(server_url: str, statement: sql.SQL, database: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as db:
        db.execute(statement.format(sql.Identifier(database)))


def _with_database(url: str, name: str) -> str:
    """``url`` with its database name replaced (any ``?host=`` query kept)."""
    head, _, query = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{query}" if query else "")
