"""Composition and timelines: several faults at once, after a delay, for a duration, while the workload runs.

    schedule = Schedule().add(Netem(server, delay_ms=50)).add(LinkDown(client), at=0.5, duration=1.0)
    with schedule:
        ...the workload...
    schedule.records()    # planned and actual apply/heal times of each fault, CLOCK_MONOTONIC

Times are seconds after the block starts. Faults with a `prepare()` method (reading what apply needs from
the host, warming its agent) are prepared before the clock starts, so one-time costs do not shift the plan.
Time 0 is when the block's body begins: faults at 0 are applied just before, in order, so they are all in
force then; the others are applied and healed by a background thread. When the block ends, everything
applied is healed (in reverse order), also when the body raised.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from .base import Fault


class ScheduleError(Exception):
    """A fault of the schedule failed to apply or to heal (the original error is the cause)."""


@dataclass
class _Step:
    fault: Fault
    at: float
    duration: float | None
    apply_started: float | None = None
    heal_started: float | None = None
    applied: bool = False
    healed: bool = False


class Schedule:
    """Faults on a timeline relative to the start of a `with` block; all healed when it ends.

    `on_done(action, fault)` is called after each apply or heal that succeeded (action "apply" or "heal").
    """

    def __init__(self, on_done: Callable[[str, Fault], None] | None = None) -> None:
        self.on_done = on_done
        self.steps: list[_Step] = []
        self.started_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors: list[tuple[str, BaseException]] = []

    def add(self, fault: Fault, at: float = 0.0, duration: float | None = None) -> Self:
        """Apply `fault` `at` seconds after the start; heal it `duration` seconds later (None: at the end)."""
        if self.started_at is not None:
            raise RuntimeError("the schedule runs already: add faults before entering it")
        if any(step.fault is fault for step in self.steps):
            raise ValueError(f"fault {fault.describe()!r} is in the schedule already (a fault applies once)")
        if isinstance(at, bool) or not isinstance(at, (int, float)) or at < 0:
            raise ValueError(f"at must be seconds >= 0 after the start, got {at!r}")
        if duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float))
                                     or duration <= 0):
            raise ValueError(f"duration must be seconds > 0 or None (until the end), got {duration!r}")
        self.steps.append(_Step(fault, float(at), None if duration is None else float(duration)))
        return self

    def _events(self) -> list[tuple[float, int, str, _Step]]:
        events = []
        for order, step in enumerate(self.steps):
            events.append((step.at, order, "apply", step))
            if step.duration is not None:
                events.append((step.at + step.duration, order, "heal", step))
        return sorted(events, key=lambda e: (e[0], e[2] == "apply", e[1]))

    def _run(self, step: _Step, action: str) -> None:
        try:
            if action == "apply":
                step.apply_started = time.monotonic()
                step.fault.apply()
                step.applied = True
            else:
                step.heal_started = time.monotonic()
                step.fault.heal()
                step.healed = True
            if self.on_done is not None:
                self.on_done(action, step.fault)
        except BaseException as exc:  # noqa: BLE001 - raised again when the block ends
            self._errors.append((f"{action} of {step.fault.describe()}", exc))

    def _background(self, start: float, events: list[tuple[float, int, str, _Step]]) -> None:
        for offset, _, action, step in events:
            if self._stop.wait(max(0.0, start + offset - time.monotonic())):
                return
            if action == "apply" or step.applied:
                self._run(step, action)
            if self._errors:
                return

    def __enter__(self) -> Self:
        for step in self.steps:
            prepare = getattr(step.fault, "prepare", None)
            if prepare is not None:
                prepare()
        events = self._events()
        now = [e for e in events if e[0] == 0 and e[2] == "apply"]
        for _, _, action, step in now:
            self._run(step, action)
            if self._errors:
                self._heal_all()
                self._raise()
        self.started_at = time.monotonic()
        later = [e for e in events if e not in now]
        self._thread = threading.Thread(target=self._background, args=(self.started_at, later),
                                        name="fault-schedule", daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> None:
        """Block until every timed apply and heal happened (or one failed)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _heal_all(self) -> None:
        applied = [s for s in self.steps if s.applied and not s.healed]
        for step in sorted(applied, key=lambda s: s.apply_started or 0, reverse=True):
            self._run(step, "heal")

    def _raise(self) -> None:
        errors, self._errors = self._errors, []
        if errors:
            what, first = errors[0]
            others = "".join(f"; then {w}: {e!r}" for w, e in errors[1:])
            raise ScheduleError(f"{what} failed: {first!r}{others}") from first

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._heal_all()
        if exc is None:
            self._raise()
        else:
            for what, error in self._errors:
                exc.add_note(f"netfault schedule: {what} failed too: {error!r}")
            self._errors = []

    def records(self) -> list[dict[str, Any]]:
        """Each fault's record with its plan: `planned_apply`/`planned_heal` and when apply/heal were started."""
        start = self.started_at
        return [{**step.fault.record(), "at": step.at, "duration": step.duration,
                 "planned_apply": None if start is None else start + step.at,
                 "planned_heal": None if start is None or step.duration is None else start + step.at + step.duration,
                 "apply_started": step.apply_started, "heal_started": step.heal_started}
                for step in self.steps]
