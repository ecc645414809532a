"""harness.evidence and harness.timeline: what a test produced, merged into one ordered, printable record."""

from __future__ import annotations

import json

from faults.base import Fault
from harness import evidence
from harness.records import SyscallRecord
from harness.timeline import Timeline
from harness.wire import Packet, Wire


def record(op: str, t0: float, t1: float, errname: str | None = None) -> SyscallRecord:
    return SyscallRecord(op, "c1", 42, None if errname else 0, 110 if errname else None, errname,
                         "Connection timed out" if errname else None, t0, t1, t0 + 1e9, t1 + 1e9)


class Noted(Fault):
    """A fault that changes nothing, on a host called server."""

    host = type("H", (), {"name": "server"})()

    def _apply(self) -> None:
        pass

    def _heal(self) -> None:
        pass

    def describe(self) -> str:
        return "drop everything on server"


def syn(t: float) -> Packet:
    return Packet(t, t + 1e9, "tcp", "10.0.0.10", "10.0.0.20", 40000, 6666, "S", 1, 0, 0, 64240)


def test_evidence_is_kept_only_while_collecting():
    evidence.note_records("client", record("connect", 1.0, 2.0))
    with evidence.collecting() as collected:
        evidence.note_records("client", record("connect", 1.0, 2.0))
        evidence.note_records("client", [record("send", 2.0, 2.0), record("send", 2.1, 2.1)])
        evidence.note_records("client", {"not": "a record"})
    evidence.note_records("client", record("close", 3.0, 3.0))
    assert [r.op for _, r in collected.records] == ["connect", "send", "send"]
    assert evidence.current() is None


def test_a_fault_is_kept_when_applied_once():
    with evidence.collecting() as collected:
        fault = Noted()
        with fault:
            pass
        fault.apply()
    assert collected.faults == [fault]


def test_timeline_orders_faults_syscalls_and_packets_and_renders_relative_to_the_first_apply():
    with evidence.collecting() as collected:
        fault = Noted()
        fault.applied_at, fault.healed_at = 10.0, 17.5
        evidence.note_fault(fault)
        evidence.note_records("client", record("connect", 10.001, 17.002, "ETIMEDOUT"))
        evidence.note_records("client", record("socket", 10.0005, 10.0006))
        evidence.note_wire(Wire("client", [syn(10.002), syn(11.003), syn(13.004)]))
    timeline = Timeline.of(collected)
    assert [(e.source, e.t) for e in timeline.events] == [
        ("fault", 10.0), ("syscall", 10.0006), ("syscall", 10.001), ("packet", 10.002), ("packet", 11.003),
        ("packet", 13.004), ("syscall", 17.002), ("fault", 17.5)]
    text = timeline.render()
    lines = text.splitlines()
    assert lines[1].split()[:4] == ["+0.000000", "server", "fault", "apply"]
    assert "connect c1 ... (blocks)" in lines[3]
    assert lines[7].split()[:3] == ["+7.002000", "client", "syscall"] and "ETIMEDOUT" in lines[7]
    assert "Flags [S]" in lines[5] and lines[5].startswith("  +1.003000")
    json.dumps(timeline.to_json())


def test_window_and_row_limit():
    timeline = Timeline.of(evidence.Evidence(wires=[Wire("client", [syn(float(i)) for i in range(10)])]))
    assert len(timeline.window(2.0, 4.0)) == 3
    assert len(timeline.window(hosts=["server"])) == 0
    text = timeline.render(t0=0.0, max_rows=4)
    assert "... 6 events omitted ..." in text and len(text.splitlines()) == 6
