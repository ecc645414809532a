"""One ordered record of a test: faults applied and healed, syscalls, packets and socket-state changes.

All times are CLOCK_MONOTONIC seconds: the containers share the kernel of the machine running pytest, so the
agents' records, the faults' times and the captures (whose realtime stamps are mapped once per host with
`realtime_minus_monotonic`) are on one clock. Rendered as an aligned text table for failure messages,
serialisable to JSON for the results.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .evidence import Evidence
from .records import SyscallRecord

# A syscall that took longer than this shows as two events (the call, and its return) so that what happened
# while it blocked falls between them.
BLOCKED = 0.001
# Rendered timelines keep the first and last events when there are more than this.
MAX_ROWS = 200


@dataclass(frozen=True)
class Event:
    """Something that happened at `t` on `host`: `source` is fault, syscall, packet, state or program."""

    t: float
    host: str
    source: str
    text: str
    data: dict[str, Any] = field(default_factory=dict, compare=False)


def syscall_events(host: str, record: SyscallRecord) -> list[Event]:
    """A quick call as one event at its return; a blocking one as its start and its return."""
    data = {"op": record.op, "handle": record.handle, "pid": record.pid, "ret": record.ret,
            "errname": record.errname, "t0": record.t0, "t1": record.t1, **record.extra}
    done = Event(record.t1, host, "syscall", str(record), data)
    if record.elapsed <= BLOCKED:
        return [done]
    return [Event(record.t0, host, "syscall", f"{record.op} {record.handle or '-'} ... (blocks)", data), done]


def fault_events(fault: Any) -> list[Event]:
    """The apply and heal of a fault (its record), on the host it acts on ("*" for several)."""
    record = fault.record()
    host = getattr(getattr(fault, "host", None), "name", "*")
    events = []
    if record["applied_at"] is not None:
        events.append(Event(record["applied_at"], host, "fault", f"apply  {record['describe']}", record))
    if record["healed_at"] is not None:
        events.append(Event(record["healed_at"], host, "fault", f"heal   {record['describe']}", record))
    return events


# Errnos that only say "not yet" (a non-blocking call, a timeout of the caller's own): not what a test is about.
NOT_YET = frozenset({"EAGAIN", "EWOULDBLOCK", "EINPROGRESS"})


def key_syscall(events: Iterable[Event]) -> Event | None:
    """The syscall a test is about, as the return event of it: the first that failed with an errno other than
    a "not yet" one (NOT_YET), else the one that took longest; None without syscalls. The report's summary and
    `netfault compare` both use it."""
    returns = [e for e in events if e.source == "syscall" and e.t == e.data.get("t1")]
    failed = [e for e in returns if e.data.get("errname") and e.data["errname"] not in NOT_YET]
    if failed:
        return failed[0]
    return max(returns, key=lambda e: e.data["t1"] - e.data["t0"], default=None)


class Timeline:
    """Events of every host, in time order."""

    def __init__(self, events: Iterable[Event]) -> None:
        self.events = sorted(events, key=lambda e: e.t)

    @classmethod
    def of(cls, evidence: Evidence) -> Timeline:
        """The timeline of a test's evidence."""
        events: list[Event] = []
        for host, record in evidence.records:
            events += syscall_events(host, record)
        for fault in evidence.faults:
            events += fault_events(fault)
        for wire in evidence.wires:
            events += [Event(p.t, wire.host, "packet", str(p), asdict(p)) for p in wire]
        for host, history in evidence.histories:
            events += [Event(t, host, "state", text, data) for t, text, data in history.events()]
        events += [Event(t, host, "program", text, data) for host, t, text, data in evidence.programs]
        return cls(events)

    def __len__(self) -> int:
        return len(self.events)

    @property
    def t0(self) -> float | None:
        """The origin of printed times: the first fault's apply, else the first event."""
        applies = [e.t for e in self.events if e.source == "fault" and e.text.startswith("apply")]
        return min(applies) if applies else (self.events[0].t if self.events else None)

    def window(self, start: float | None = None, end: float | None = None, *, hosts: Iterable[str] | None = None,
               sources: Iterable[str] | None = None) -> Timeline:
        """The events in [start, end] (monotonic seconds), of some hosts or sources."""
        hosts, sources = (None if v is None else set(v) for v in (hosts, sources))
        return Timeline(e for e in self.events
                        if (start is None or e.t >= start) and (end is None or e.t <= end)
                        and (hosts is None or e.host in hosts) and (sources is None or e.source in sources))

    def render(self, t0: float | None = None, max_rows: int = MAX_ROWS) -> str:
        """An aligned table; times relative to `t0` (default: the first fault's apply)."""
        if not self.events:
            return "(no events)"
        origin = self.t0 if t0 is None else t0
        rows = [f"{e.t - origin:+11.6f}  {e.host:<8} {e.source:<7}  {e.text}" for e in self.events]
        if len(rows) > max_rows:
            half = max_rows // 2
            rows = rows[:half] + [f"{'':11}  ... {len(rows) - 2 * half} events omitted ..."] + rows[-half:]
        return "\n".join([f"{'t (s)':>11}  {'host':<8} {'source':<7}  event (t=0: CLOCK_MONOTONIC {origin:.6f})",
                          *rows])

    def to_json(self) -> list[dict[str, Any]]:
        """The events as JSON-serialisable dicts."""
        return [asdict(e) for e in self.events]
