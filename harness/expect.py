"""Assertions on evidence whose failure messages show the part of the timeline that matters.

    expect_errno(rec, "ETIMEDOUT", between=(6.9, 7.3))
    expect_schedule(flow.syn_schedule(), syn_timeouts(2), "SYN")
    expect_held(history, "FIN_WAIT1", at_least=2.0)
    expect_left(history, "ESTABLISHED", when=rec)
    expect_no_packet(flow, after=heal_time, kinds=["retransmission"])

Each raises AssertionError naming what was expected and what came, followed by the test's timeline (faults,
syscalls, packets, states) around the events concerned, from the evidence the pytest plugin collects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from . import evidence
from .flows import TcpFlow, Times
from .kernel import wheel_slack
from .records import SyscallRecord
from .sockets import StateHistory
from .timeline import Timeline
from .timing import SCHEDULING_SLACK

# Packet times (pcap, CLOCK_REALTIME) are mapped to CLOCK_MONOTONIC with an offset sampled once per capture;
# NTP slews CLOCK_REALTIME by at most 500 ppm: 2 ms covers a test of a few seconds.
CLOCK_ALIGNMENT = 0.002
# After a kernel timer fired, the softirq that sends the packet (or wakes the blocked syscall) runs within
# milliseconds on an idle machine; 50 ms covers the busiest runs measured on the 2-core CI machine, plus what
# this machine's own sleeps measure late (software emulation: tens of ms).
SOFTIRQ_AND_WAKEUP = 0.05 + SCHEDULING_SLACK
# Context shown around the events of a failed expectation.
MARGIN = 0.5


def _context(start: float | None, end: float | None, extra: str = "") -> str:
    collected = evidence.current()
    parts = [extra] if extra else []
    if collected is not None:
        window = Timeline.of(collected)
        if start is not None and end is not None:
            window = window.window(start - MARGIN, end + MARGIN)
        parts.append("timeline:\n" + window.render())
    return ("\n\n" + "\n\n".join(parts)) if parts else ""


def expect_errno(record: SyscallRecord, errname: str | None, *,
                 between: tuple[float, float] | None = None) -> None:
    """`record` failed with `errname` (None: succeeded) after an elapsed time within `between` seconds."""
    problems = []
    if record.errname != errname:
        problems.append(f"errno {record.errname or 'none (success)'}, expected {errname or 'success'}")
    if between is not None and not between[0] <= record.elapsed <= between[1]:
        problems.append(f"elapsed {record.elapsed:.4f} s, expected {between[0]:.4f} .. {between[1]:.4f} s")
    if problems:
        raise AssertionError(f"{record}: " + "; ".join(problems) + _context(record.t0, record.t1))


def schedule_bounds(timeouts: Sequence[float], extra: float = SOFTIRQ_AND_WAKEUP) -> list[tuple[float, float]]:
    """Where the k-th timer-driven event can fall, relative to the event that armed the first timer.

    Each timer is re-armed when the previous one fired, so lateness adds up: never early (within the clock
    alignment), late by at most the sum of the timer wheel's slack of each timeout so far, plus `extra` for
    the last wake-up.
    """
    bounds, planned, slack = [], 0.0, 0.0
    for timeout in timeouts:
        planned += timeout
        slack += wheel_slack(timeout)
        bounds.append((planned - CLOCK_ALIGNMENT, planned + slack + extra + CLOCK_ALIGNMENT))
    return bounds


def expect_schedule(times: Times, timeouts: Sequence[float], what: str, *, flow: TcpFlow | None = None,
                    extra: float = SOFTIRQ_AND_WAKEUP) -> None:
    """The transmissions in `times` follow `timeouts` (the first is the original; one timeout before each
    retransmission), each within `schedule_bounds`."""
    bounds = schedule_bounds(timeouts, extra)
    offsets = times.offsets[1:]
    problems = []
    if len(offsets) != len(bounds):
        problems.append(f"{len(offsets)} retransmissions of the {what}, expected {len(bounds)}")
    for n, (offset, (low, high)) in enumerate(zip(offsets, bounds), 1):
        if not low <= offset <= high:
            problems.append(f"retransmission {n} of the {what} at +{offset:.4f} s, expected +{low:.4f} .. "
                            f"+{high:.4f} s")
    if problems:
        planned = ", ".join(f"{t:g}" for t in timeouts)
        table = f"flow:\n{flow.render(since=times.times[0])}" if flow is not None else ""
        raise AssertionError(f"{what} schedule (timeouts {planned} s; intervals seen "
                             f"{', '.join(f'{i:.4f}' for i in times.intervals)}): " + "; ".join(problems)
                             + _context(times.times[0], times.times[-1], table))


def expect_no_packet(flow: TcpFlow, *, after: float, kinds: Iterable[str] | None = None,
                     from_client: bool | None = None) -> None:
    """No segment of `flow` (of `kinds`, from one side) at or after `after` (CLOCK_MONOTONIC)."""
    wanted = None if kinds is None else set(kinds)
    late = [s for s in flow.segments if s.t >= after and (wanted is None or s.kind in wanted)
            and (from_client is None or s.from_client == from_client)]
    if late:
        what = "packet" if wanted is None else "/".join(sorted(wanted))
        raise AssertionError(f"{len(late)} {what} segment(s) after the cut-off, the first at "
                             f"+{late[0].t - after:.4f} s" + _context(after, late[-1].t,
                                                                      f"flow:\n{flow.render(since=after)}"))


def expect_held(history: StateHistory, state: str, *, at_least: float | None = None,
                at_most: float | None = None, **where: Any) -> float:
    """A socket of `history` (matching `where`) was in `state` for a span that ended, and what the samples around
    its edges allow for the longest such span (`Span.bounds`, so a late sample widens it by what was measured)
    meets the bounds; returns that span's duration."""
    spans = [span for span in history.spans(state, **where) if span.duration is not None]
    problems = []
    if not spans:
        problems.append(f"no socket was seen in {state}")
    else:
        span = max(spans, key=lambda span: span.duration)
        shortest, longest = span.bounds
        seen = f"{span.duration:.4f} s (between {shortest:.4f} and {'?' if longest is None else f'{longest:.4f}'} s)"
        if at_least is not None and longest is not None and longest < at_least:
            problems.append(f"{state} held {seen} at most, expected at least {at_least:.4f} s")
        if at_most is not None and shortest > at_most:
            problems.append(f"{state} held {seen}, expected at most {at_most:.4f} s")
    if problems:
        raise AssertionError("; ".join(problems) + _context(None, None, f"states:\n{history.table()}"))
    return span.duration


def expect_left(history: StateHistory, state: str, *, when: SyscallRecord, **where: Any) -> None:
    """The first span of a socket (matching `where`) in `state` ended as `when` (the syscall that reported the
    change) returned: the change came between the span's last sample and the next one (`Span.left_after`,
    `left_by`), and the call returned after it, woken within SOFTIRQ_AND_WAKEUP."""
    span = history.first(state, **where)
    if span is None or span.left_by is None:
        raise AssertionError(f"no socket {'was seen in' if span is None else 'left'} {state}"
                             + _context(None, None, f"states:\n{history.table()}"))
    if not span.left_after - CLOCK_ALIGNMENT <= when.t1 <= span.left_by + SOFTIRQ_AND_WAKEUP:
        raise AssertionError(
            f"{state} ended between {span.left_after:.4f} and {span.left_by:.4f}, but {when} returned at "
            f"{when.t1:.4f}" + _context(None, None, f"states:\n{history.table()}"))
