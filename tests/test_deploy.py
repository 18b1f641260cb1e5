"""deploy/ runs what exists: every command in the Dockerfile, compose file, Kubernetes
manifests and systemd unit is a real management command that accepts its arguments, and
each file holds the settings an operator relies on (non-root, replicas, probes, grace
periods longer than the listener's shutdown).

No container engine or cluster runs here: images are not built and pods not started. The
Kubernetes objects are checked against the API's own models (the official client), and
the systemd unit by `systemd-analyze verify` where systemd is installed.
"""

from __future__ import annotations

import configparser
import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import get_commands, load_command_class
from kubernetes import client as k8s

from eventbus import conf
from tests.support import ROOT

DEPLOY = ROOT / "deploy"
GRACE_MARGIN = 5  # seconds beyond SHUTDOWN_TIMEOUT before an orchestrator may SIGKILL


def shutdown_timeout() -> float:
    return conf.get().SHUTDOWN_TIMEOUT


def check_manage_command(argv: list[str]) -> str:
    """`python manage.py NAME ARGS…`: NAME exists and its parser accepts ARGS. Returns NAME."""
    assert argv[:2] in (["python", "manage.py"], [sys.executable, "manage.py"]), argv
    name, args = argv[2], argv[3:]
    commands = get_commands()
    assert name in commands, f"no management command {name!r}"
    parser = load_command_class(commands[name], name).create_parser("manage.py", name)
    parser.parse_args(args)  # raises CommandError on an unknown or malformed argument
    return name


# --- Dockerfile ------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def image_entrypoint() -> list[str]:
    [entrypoint] = [json.loads(rest) for op, rest in dockerfile() if op == "ENTRYPOINT"]
    return entrypoint


def test_the_image_runs_the_listener_as_a_non_root_user() -> None:
    assert check_manage_command(image_entrypoint()) == "listen"
    [user] = [rest for op, rest in dockerfile() if op == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    env = " ".join(rest for op, rest in dockerfile() if op == "ENV")
    assert "EVENTBUS_PROCESSES=" in env, "--processes comes from the environment"


def test_the_image_copies_files_that_exist_and_installs_an_extra_that_exists() -> None:
    for op, rest in dockerfile():
        if op == "COPY":
            *sources, _ = shlex.split(rest)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such path"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    installs = [rest for op, rest in dockerfile() if op == "RUN" and "pip install" in rest]
    for extra in re.findall(r"\.\[(\w+)\]", " ".join(installs)):
        assert extra in extras


def image_tree(root: Path) -> Path:
    """The image's /app, as the Dockerfile's COPY lines fill it, readable by anyone."""
    for op, rest in dockerfile():
        if op == "COPY":
            *sources, target = shlex.split(rest)
            for source in sources:
                destination = root / (target if target not in ("./", ".") else source)
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, destination, dirs_exist_ok=True)
                else:
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / source, destination)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def image_environment() -> dict[str, str]:
    env: dict[str, str] = {}
    for op, rest in dockerfile():
        if op == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(rest))
    return env


AS_NOBODY = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=+dac_read_search",
    "--ambient-caps=+dac_read_search",
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(os.geteuid() != 0, reason="switching to an unprivileged user needs root")
def test_the_images_files_run_the_listener_as_an_unprivileged_user(tmp_path: Path) -> None:
    """What no container engine here can show: the image's files alone, its environment
    and its entrypoint, run as user nobody, handle an event and stop cleanly. Only the
    interpreter and dependencies come from this checkout (under /root, so nobody is
    given the right to read, not write, any file)."""
    from django.contrib.auth.models import User

    from blog.models import Post
    from eventbus.models import EventRecord
    from tests.support import database_url, wait_until

    app = image_tree(tmp_path / "app")
    env = {
        **image_environment(),
        "PATH": os.environ["PATH"],
        "DATABASE_URL": database_url(),
        "EVENTBUS_LISTENER_MODULES": os.environ.get("EVENTBUS_LISTENER_MODULES", ""),
        # as a deployment provides them: the image ships none (see test_secrets.py)
        "DJANGO_SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY", "k" * 50),
        "WEBHOOK_SECRET": os.environ.get("WEBHOOK_SECRET", "w" * 50),
    }
    entrypoint = image_entrypoint()
    process = subprocess.Popen(
        [*AS_NOBODY, sys.executable, *entrypoint[1:]],
        cwd=app,
        env={k: v for k, v in env.items() if v},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        author = User.objects.create_user("image")
        post = Post.objects.create(
            title="from the image", body="four words right here", author=author
        )
        wait_until(
            lambda: (
                EventRecord.objects.filter(channel="post_created", state="done").exists()
                or process.poll() is not None
            ),
            what="the image's listener to handle the post",
        )
        assert process.poll() is None, process.communicate()[0]
        post.refresh_from_db()
        assert post.word_count == 4
        worker = EventRecord.objects.get(channel="post_created").worker
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    assert f"worker {worker} stopped" in output
    assert int(image_environment()["EVENTBUS_PROCESSES"]) == output.count(" started (channels")


def test_the_dockerfiles_usage_is_the_readmes() -> None:
    usage = [
        line.lstrip("# ").strip()
        for line in (DEPLOY / "Dockerfile").read_text().splitlines()
        if line.lstrip("# ").startswith("docker ")
    ]
    assert usage
    readme = (ROOT / "README.md").read_text()
    for command in usage:
        assert command in readme, f"README lacks: {command}"


# --- compose ---------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration))


def test_compose_starts_postgres_migrations_the_web_app_and_two_listeners() -> None:
    services = compose()["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["listener"]["deploy"]["replicas"] == 2
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert context == ROOT
            assert (context / build["dockerfile"]).is_file()


def test_every_compose_command_exists() -> None:
    checked = set()
    for name, service in compose()["services"].items():
        if "build" not in service:
            continue
        argv = (service.get("entrypoint") or image_entrypoint()) + service.get("command", [])
        if argv[0] == "gunicorn":
            assert importlib.util.find_spec(argv[1]) is not None, f"{name}: no {argv[1]}"
        else:
            checked.add(check_manage_command(argv))
        health = service.get("healthcheck", {}).get("test")
        if health:
            assert health[0] == "CMD"
            checked.add(check_manage_command(health[1:]))
    assert checked == {"migrate", "listen", "eventbus_health"}


def test_compose_gives_listeners_time_to_finish_their_batch() -> None:
    listener = compose()["services"]["listener"]
    assert seconds(listener["stop_grace_period"]) >= shutdown_timeout() + GRACE_MARGIN


def test_deploy_files_set_only_environment_variables_that_eventbus_reads() -> None:
    documents = [compose(), *kubernetes_objects()]
    names = set(re.findall(r"EVENTBUS_[A-Z_]+", json.dumps(documents)))
    names |= set(re.findall(r"EVENTBUS_[A-Z_]+", (DEPLOY / "Dockerfile").read_text()))
    known = {f"EVENTBUS_{key}" for key in conf._ENVIRONMENT}
    assert names and names <= known, names - known


# --- Kubernetes ------------------------------------------------------------------------

MODELS = {
    "Deployment": k8s.V1Deployment,
    "Job": k8s.V1Job,
    "PodDisruptionBudget": k8s.V1PodDisruptionBudget,
}


def kubernetes_objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    objects = []
    for resource in kustomization["resources"]:
        objects += list(yaml.safe_load_all((DEPLOY / "k8s" / resource).read_text()))
    return objects


def by_kind(kind: str) -> dict[str, Any]:
    [obj] = [o for o in kubernetes_objects() if o["kind"] == kind]
    return obj


def test_every_manifest_matches_the_kubernetes_api_models() -> None:
    """A misspelt field is dropped by the model: the round trip then differs."""
    for obj in kubernetes_objects():
        model = MODELS[obj["kind"]].from_dict(obj)
        assert k8s.ApiClient().sanitize_for_serialization(model) == obj, obj["kind"]


def test_the_model_check_catches_a_misspelt_field() -> None:
    broken = copy.deepcopy(by_kind("Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    model = k8s.V1Deployment.from_dict(broken)
    assert k8s.ApiClient().sanitize_for_serialization(model) != broken


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_the_listener_stack() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "k8s")], capture_output=True, text=True, check=True
    ).stdout
    kinds = sorted(o["kind"] for o in yaml.safe_load_all(built))
    assert kinds == ["Deployment", "Job", "PodDisruptionBudget"]


def pod_commands(pod_spec: dict[str, Any]) -> list[list[str]]:
    commands = []
    for container in pod_spec["containers"]:
        commands.append(container.get("command") or image_entrypoint() + container.get("args", []))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in container:
                commands.append(container[probe]["exec"]["command"])
    return commands


def test_every_kubernetes_command_exists() -> None:
    names = {
        check_manage_command(argv)
        for obj in kubernetes_objects()
        if "template" in obj["spec"]
        for argv in pod_commands(obj["spec"]["template"]["spec"])
    }
    assert names == {"migrate", "listen", "eventbus_health"}


def test_listener_pods_are_replicated_probed_budgeted_and_stopped_gracefully() -> None:
    deployment = by_kind("Deployment")
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert deployment["spec"]["replicas"] >= 2
    assert {"livenessProbe", "readinessProbe"} <= set(container)
    for probe in ("livenessProbe", "readinessProbe"):
        assert "--this-host" in container[probe]["exec"]["command"], "a pod checks itself"
    assert container["resources"]["requests"].keys() >= {"cpu", "memory"}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["terminationGracePeriodSeconds"] >= shutdown_timeout() + GRACE_MARGIN

    budget = by_kind("PodDisruptionBudget")
    selector = budget["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert budget["spec"].get("maxUnavailable", 0) < deployment["spec"]["replicas"]


# --- systemd ---------------------------------------------------------------------------

UNIT = DEPLOY / "eventbus-listen.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_the_unit_runs_the_listener_restarts_it_and_waits_for_its_shutdown() -> None:
    service = unit()["Service"]
    python, *rest = shlex.split(service["ExecStart"])
    assert python.endswith("/python")
    assert check_manage_command(["python", *rest]) == "listen"
    assert service["Restart"] in ("always", "on-failure")
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) >= shutdown_timeout() + GRACE_MARGIN
    assert service["User"] not in ("root", "0")


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """verify also checks that ExecStart's binary exists: point it at this checkout's."""
    python, *_ = shlex.split(unit()["Service"]["ExecStart"])
    copy_ = tmp_path / UNIT.name
    copy_.write_text(UNIT.read_text().replace(python, sys.executable))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy_)],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )
