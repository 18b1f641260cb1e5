"""Chains: steps that must run in order, each an event, and a callback that always ends them.

Request a certificate, then install it: the second step must never start when the first
has died, a retry must not repeat what succeeded, and someone must hear how it ended.
A chain is a publish-only channel whose events each run one step. A step that succeeds
publishes the next step's event in its own claim transaction, so the next step exists
exactly when this one committed; one that dies publishes nothing further, and its
channel's ``on_dead`` hook publishes the end instead. The end is an event too, so the
callback runs with retries, in the listener, like any handler. All of a chain's events
share one collection (``eventbus.declaring.collections``), so ``events tree`` shows it,
``events retry --collection`` resumes it at the failed step, and its state is the worst
of its events'.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.core import checks

from eventbus.declaring.channel import Channel
from eventbus.errors import MalformedEvent
from eventbus.event import DEAD, DONE, Event

Step = Callable[[dict[str, Any], Event], "dict[str, Any] | None"]


@dataclass(frozen=True)
class ChainEnd:
    """What the end callback receives: how the chain ended, and where."""

    state: str  # "done", or "dead" when a step died
    data: dict[str, Any]  # the start's data with every finished step's results merged in
    step: str | None = None  # the step that died
    error: str | None = None  # its error's first line
    event: Event | None = field(default=None, compare=False)  # the end's own event


class Chain:
    """Declare steps with ``@chain.step`` (in order) and the end with ``@chain.on_end``.

    A step is ``def step(data: dict, event: Event) -> dict | None``: `data` is what the
    chain was started with, plus every earlier step's returned dict; what it returns is
    merged in for the next. A step that raises is retried under the chain's retry
    policy like any handler; when it dies, no later step runs and the end callback gets
    ``ChainEnd(state="dead", step=..., error=...)``. After the last step it gets
    ``state="done"``. Retrying the dead step's event (``events retry ID``, or ``events
    retry --collection ID``) resumes the chain there; the end then runs again.

    ``name`` is the chain's channel; other keyword arguments are the channel's
    (``retry``, ``timeout``, ``isolation``). Every step of a chain runs under them.
    ``steps`` names the steps in order, so a process that only starts the chain (a web
    process) need not import the steps' code; then ``@chain.step`` must name one of them.
    Without it, the steps run in the order they are decorated.
    """

    def __init__(self, name: str, steps: list[str] | None = None, **channel_options: Any) -> None:
        self.name = name
        self.channel = Channel(name, operations=(), **channel_options)
        self.declared = list(steps) if steps is not None else None
        if self.declared is not None and len(set(self.declared)) != len(self.declared):
            raise ValueError(f"chain {name}: step names repeat: {self.declared}")
        self.steps: dict[str, Step] = {}
        self.end: Callable[[ChainEnd], Any] | None = None
        _chains.append(self)

    @property
    def order(self) -> list[str]:
        """The steps' names, in the order they run."""
        return self.declared if self.declared is not None else list(self.steps)

    def step(self, function: Step) -> Step:
        """Decorator: a step of the chain, named by the function's name (the next one,
        unless the chain declared its ``steps``)."""
        name = function.__name__
        if name in self.steps:
            raise ValueError(f"chain {self.name}: a step named {name!r} exists already")
        if self.declared is not None and name not in self.declared:
            raise ValueError(
                f"chain {self.name} declares no step {name!r} (steps: {', '.join(self.declared)})"
            )
        if not self.steps:
            # Its handler exists once its steps' code is imported: a listener that forgot
            # that module is told so by the wiring checks, as for any channel's handler.
            self.channel.on(self._run)
            self.channel.on_dead(self._died)
        self.steps[name] = function
        return function

    def on_end(self, callback: Callable[[ChainEnd], Any]) -> Callable[[ChainEnd], Any]:
        """Decorator: called once the chain ends, done or dead, as an event of its own."""
        self.end = callback
        return callback

    def start(
        self, data: dict[str, Any] | None = None, key: str | int | None = None, **publish: Any
    ) -> int:
        """Publish the first step's event in the caller's transaction; returns its id, which
        is also the chain's collection id unless the caller opened a collection."""
        if not self.order:
            raise ValueError(f"chain {self.name} has no steps")
        first = self.order[0]
        return self.channel.publish({"step": first, "data": data or {}}, key=key, **publish)

    # --- The chain's handlers ---------------------------------------------------------

    def _run(self, event: Event) -> None:
        payload = event.new or {}
        data = payload.get("data")
        if not isinstance(data, dict):
            raise MalformedEvent(f"event {event.id} of chain {self.name} has no data object")
        if "end" in payload:
            if self.end is not None:
                self.end(_end_of(payload, data, event))
            return
        name = payload.get("step")
        step = self.steps.get(name) if isinstance(name, str) else None
        if step is None:
            known = ", ".join(self.steps) or "none"
            raise MalformedEvent(
                f"chain {self.name} has no step {name!r} in this process (steps: {known})"
            )
        result = step(dict(data), event)
        if result is not None and not isinstance(result, dict):
            raise MalformedEvent(f"step {name} of chain {self.name} returned {type(result)}")
        merged = {**data, **(result or {})}
        try:  # checked before anything is published: a retry would run the step again
            json.dumps(merged)
        except (TypeError, ValueError) as exc:
            raise MalformedEvent(
                f"step {name} of chain {self.name} returned data that is not JSON ({exc}); "
                "return strings, numbers, lists and dicts (a date as its isoformat())"
            ) from None
        names = self.order
        index = names.index(name)
        if index + 1 < len(names):
            self.channel.publish({"step": names[index + 1], "data": merged}, key=event.key)
        else:
            self._publish_end(DONE, merged, event.key)

    def _died(self, event: Event, error: str) -> None:
        payload = event.new or {}
        if "end" in payload:
            return  # the end itself died: it is dead like any event, for operators
        data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
        first_line = (error.strip().splitlines() or [""])[0]
        self._publish_end(DEAD, data, event.key, step=payload.get("step"), error=first_line)

    def _publish_end(self, state: str, data: dict[str, Any], key: str | None, **why: Any) -> None:
        if self.end is not None:
            self.channel.publish({"end": state, "data": data, **why}, key=key)


_chains: list[Chain] = []


@checks.register("eventbus")
def check_chain_steps(**kwargs: Any) -> list[checks.CheckMessage]:
    """eventbus.E030: a chain whose steps' code is imported has a function for every step
    it declares (a missing one would make its events dead)."""
    errors = []
    for chain in _chains:
        missing = [n for n in chain.declared or () if n not in chain.steps]
        if chain.steps and missing:
            errors.append(
                checks.Error(
                    f"chain {chain.name} declares steps with no function: {', '.join(missing)}",
                    hint="Decorate a function of that name with @chain.step, in a module "
                    'that EVENTBUS["LISTENER_MODULES"] imports.',
                    id="eventbus.E030",
                )
            )
    return errors


def _end_of(payload: dict[str, Any], data: dict[str, Any], event: Event) -> ChainEnd:
    return ChainEnd(
        state=str(payload["end"]),
        data=data,
        step=payload.get("step"),
        error=payload.get("error"),
        event=event,
    )
