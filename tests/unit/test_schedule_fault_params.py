"""Schedule: faults at times relative to the block's start, healed at their end or the block's, whatever happens."""

from __future__ import annotations

import time

import pytest

from faults import Fault, Schedule, ScheduleError
from harness.timing import assert_on_time

# Fake faults take no time: lateness is the schedule thread's wake-up, 0.1 ms median when the machine is not
# starved. A machine whose 10 ms sleeps wake later than this makes the check an expected failure.
TOLERANCE = 0.05


class FakeFault(Fault):
    def __init__(self, name: str, log: list[tuple[str, str]], fail: str | None = None) -> None:
        self.name, self.log, self.fail = name, log, fail
        self.in_force = False

    def _apply(self) -> None:
        if self.fail == "apply":
            raise OSError(f"{self.name} cannot apply")
        self.in_force = True
        self.log.append(("apply", self.name))

    def _heal(self) -> None:
        if self.fail == "heal" and self.in_force:
            raise OSError(f"{self.name} cannot heal")
        if self.in_force:
            self.log.append(("heal", self.name))
        self.in_force = False

    def describe(self) -> str:
        return f"fake {self.name}"


def test_timeline_applies_and_heals_on_time():
    log: list[tuple[str, str]] = []
    now, later, window = FakeFault("now", log), FakeFault("later", log), FakeFault("window", log)
    schedule = Schedule().add(now).add(later, at=0.3).add(window, at=0.1, duration=0.3)
    with schedule:
        assert now.in_force and not window.in_force, "faults at 0 are in force when the body starts"
        schedule.wait()
        assert later.in_force and not window.in_force
    start = schedule.started_at
    times = {r["describe"]: (r["applied_at"] - start, r["healed_at"] - start) for r in schedule.records()}
    assert now.applied_at <= start, f"faults at 0 are applied before the body begins: {times}"
    assert log == [("apply", "now"), ("apply", "window"), ("apply", "later"), ("heal", "window"),
                   ("heal", "later"), ("heal", "now")], "healed in reverse order of application at the end"
    records = {r["describe"]: r for r in schedule.records()}
    assert records["fake window"]["planned_heal"] == pytest.approx(start + 0.4)
    assert records["fake later"]["planned_heal"] is None
    for what, actual, planned in (("window applied", window.applied_at, 0.1), ("window healed", window.healed_at, 0.4),
                                  ("later applied", later.applied_at, 0.3)):
        assert_on_time(actual, start + planned, TOLERANCE, what, f"\n{times}")


def test_body_raising_heals_everything_and_keeps_its_exception():
    log: list[tuple[str, str]] = []
    a, b = FakeFault("a", log), FakeFault("b", log)
    with pytest.raises(KeyError, match="from the body"), Schedule().add(a).add(b, at=0.05):
        time.sleep(0.1)
        raise KeyError("from the body")
    assert not a.in_force and not b.in_force
    assert log[-2:] == [("heal", "b"), ("heal", "a")]


def test_unreached_faults_are_never_applied():
    log: list[tuple[str, str]] = []
    late = FakeFault("late", log)
    with Schedule().add(late, at=30):
        pass
    assert log == [] and late.applied_at is None


def test_background_apply_failure_is_raised_at_the_end_after_healing():
    log: list[tuple[str, str]] = []
    first, broken = FakeFault("first", log), FakeFault("broken", log, fail="apply")
    schedule = Schedule().add(first).add(broken, at=0.05)
    with pytest.raises(ScheduleError, match="apply of fake broken failed: OSError") as raised, schedule:
        schedule.wait()
    assert isinstance(raised.value.__cause__, OSError)
    assert log == [("apply", "first"), ("heal", "first")]


def test_heal_failure_with_a_raising_body_is_noted_on_the_body_exception():
    log: list[tuple[str, str]] = []
    with pytest.raises(ValueError) as raised, Schedule().add(FakeFault("sticky", log, fail="heal")):
        raise ValueError("body")
    assert any("heal of fake sticky failed too" in note for note in raised.value.__notes__), raised.value.__notes__


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"at": -1}, "at must be seconds >= 0"),
    ({"duration": 0}, "duration must be seconds > 0 or None"),
    ({"at": "soon"}, "at must be seconds >= 0"),
])
def test_invalid_times(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Schedule().add(FakeFault("x", []), **kwargs)


def test_a_fault_is_scheduled_once():
    fault = FakeFault("x", [])
    with pytest.raises(ValueError, match="in the schedule already"):
        Schedule().add(fault).add(fault, at=1)


def test_faults_are_prepared_before_the_clock_starts():
    log: list[tuple[str, str]] = []

    class Prepared(FakeFault):
        def prepare(self) -> None:
            time.sleep(0.2)
            log.append(("prepare", self.name))

    fault = Prepared("slow-to-prepare", log)
    schedule = Schedule().add(fault, at=0.1)
    with schedule:
        schedule.wait()
    assert log[:2] == [("prepare", "slow-to-prepare"), ("apply", "slow-to-prepare")]
    assert_on_time(fault.applied_at, schedule.started_at + 0.1, TOLERANCE, "applied after a 0.2 s prepare")
