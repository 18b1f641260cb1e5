"""Chains: steps in order, a dead step stops the chain, a retry resumes at the failed step,
and the end callback always runs, on success and on death."""

from __future__ import annotations

from collections import Counter
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from eventbus import Chain, ChainEnd, Event, RetryPolicy
from eventbus.models import EventRecord
from eventbus.operating import status
from eventbus.testing import run_events

pytestmark = pytest.mark.django_db

ran: Counter[str] = Counter()
ends: list[ChainEnd] = []
install_fails = {"now": False}

certificate = Chain("chain_certificate", retry=RetryPolicy(max_attempts=2, base_delay=0))


@certificate.step
def request_certificate(data: dict[str, Any], event: Event) -> dict[str, Any]:
    ran["request_certificate"] += 1
    return {"order": f"order-for-{data['domain']}"}


@certificate.step
def install_certificate(data: dict[str, Any], event: Event) -> dict[str, Any]:
    ran["install_certificate"] += 1
    if install_fails["now"]:
        raise RuntimeError(f"the server refused {data['order']}")
    return {"installed": True}


@certificate.step
def announce(data: dict[str, Any], event: Event) -> None:
    ran["announce"] += 1


@certificate.on_end
def _ended(end: ChainEnd) -> None:
    ends.append(end)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    ran.clear()
    ends.clear()
    install_fails["now"] = False


def test_steps_run_in_order_with_each_steps_results_and_the_end_reports_done() -> None:
    start = certificate.start({"domain": "blog.example"}, key="blog.example")
    run_events(["chain_certificate"])
    assert ran == {"request_certificate": 1, "install_certificate": 1, "announce": 1}
    [end] = ends
    assert (end.state, end.step, end.error) == ("done", None, None)
    assert end.data == {
        "domain": "blog.example",
        "order": "order-for-blog.example",
        "installed": True,
    }
    found = status.collection(start)
    assert found["state"] == "done" and len(found["events"]) == 4  # 3 steps and the end
    assert [e["caused_by"] for e in found["events"]] == [
        None,
        *[e["id"] for e in found["events"][:3]],
    ]


def test_a_dead_step_stops_the_chain_and_the_end_reports_it() -> None:
    install_fails["now"] = True
    start = certificate.start({"domain": "a.example"})
    run_events(["chain_certificate"], retries=True)
    assert ran == {"request_certificate": 1, "install_certificate": 2}  # never announce
    [end] = ends
    assert (end.state, end.step) == ("dead", "install_certificate")
    assert end.error == "RuntimeError: the server refused order-for-a.example"
    assert status.collection(start)["state"] == "dead"


def test_retrying_the_collection_resumes_at_the_failed_step() -> None:
    install_fails["now"] = True
    start = certificate.start({"domain": "b.example"})
    other = certificate.start({"domain": "other.example"})  # another chain, dead too
    run_events(["chain_certificate"], retries=True)
    install_fails["now"] = False
    out = StringIO()
    call_command("events", "retry", "--collection", str(start), stdout=out)
    assert "re-queued 1 event(s)" in out.getvalue()  # the dead step only
    run_events(["chain_certificate"])
    assert ran == {"request_certificate": 2, "install_certificate": 5, "announce": 1}
    assert [e.state for e in ends] == ["dead", "dead", "done"]  # the end ran again
    assert status.collection(start)["state"] == "done"
    assert status.collection(other)["state"] == "dead"


def test_a_step_that_no_longer_exists_is_dead_with_a_reason() -> None:
    event_id = certificate.channel.publish({"step": "renamed_step", "data": {}})
    run_events(["chain_certificate"])
    record = EventRecord.objects.get(pk=event_id)
    assert record.state == "dead"
    assert "chain_certificate has no step 'renamed_step'" in record.last_error
    assert [e.state for e in ends] == ["dead"]


def test_events_tree_shows_the_chain_under_its_start() -> None:
    install_fails["now"] = True
    start = certificate.start({"domain": "c.example"})
    run_events(["chain_certificate"], retries=True)
    out = StringIO()
    call_command("events", "tree", str(start), stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == f"collection {start}: dead (3 event(s))"
    assert lines[1] == f"{start} chain_certificate: done (1 attempt)"
    assert (
        lines[2].startswith("  ")
        and "chain_certificate: dead (2 attempts): RuntimeError" in lines[2]
    )
    assert lines[3].startswith("    ") and lines[3].endswith("chain_certificate: done (1 attempt)")


def test_a_chain_whose_steps_are_not_imported_has_no_handler_and_a_partial_one_fails_checks() -> (
    None
):
    from eventbus.declaring import chains, registry

    declared = Chain("chain_declared_only", steps=["first", "second"])
    try:
        with pytest.raises(registry.UnknownChannel):  # the wiring checks name its channel
            registry.handler_for("chain_declared_only")
        assert chains.check_chain_steps() == []

        @declared.step
        def first(data: dict[str, Any], event: Event) -> None:
            pass

        assert registry.handler_for("chain_declared_only") is not None
        [error] = chains.check_chain_steps()
        assert (error.id, error.msg) == (
            "eventbus.E030",
            "chain chain_declared_only declares steps with no function: second",
        )
        with pytest.raises(ValueError, match="declares no step 'third'"):

            @declared.step
            def third(data: dict[str, Any], event: Event) -> None:
                pass
    finally:
        chains._chains.remove(declared)
