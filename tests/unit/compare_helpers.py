"""Fixture runs for the comparisons (`netfault compare`, the kernel matrix), written with the results writer (no
Docker): per test a Scenario says its outcome, its failed connect, its SYN times and its client's states."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.evidence import Evidence
from harness.records import SyscallRecord
from harness.results import CompletedTest, write_bundle, write_json
from harness.sockets import StateHistory
from harness.wire import Packet, Wire

from test_results_reader import MANIFEST


@dataclass
class Scenario:
    """What one fixture test did: its outcome, its failed connect, its SYN times and its client's states; the
    sysctls it pinned; a skipped one (with `reason`) has no evidence."""

    outcome: str = "passed"
    errname: str = "ECONNREFUSED"
    elapsed: float = 1.0
    syns: tuple[float, ...] = (0.0, 1.0, 3.0, 7.0)
    states: tuple[str, ...] = ("SYN_SENT",)
    state_spacing: float = 1.0
    sysctls: dict[str, dict[str, Any]] = field(default_factory=dict)
    reason: str | None = None


def _record(op: str, errname: str | None, t0: float, t1: float) -> SyscallRecord:
    return SyscallRecord(op=op, handle="c1", pid=7, ret=None if errname else 0, errno=111 if errname else None,
                         errname=errname, strerror=errname, t0=t0, t1=t1, t0_real=1e9 + t0, t1_real=1e9 + t1)


def _syn(t: float) -> Packet:
    return Packet(t=t, t_real=1e9 + t, proto="tcp", src="10.0.0.1", dst="10.0.0.2", sport=40000, dport=6666,
                  flags="S", seq=1000, win=64240)


def _history(states: tuple[str, ...], spacing: float = 1.0) -> StateHistory:
    history = StateHistory("client")
    entry = {"t": 100.0, "t_end": 100.001, "t_real": 1.7e9, "prev_t": None, "change": "new", "proto": "tcp",
             "family": "inet", "src": "10.0.0.1", "sport": 40000, "dst": "10.0.0.2", "dport": 6666,
             "state": "SYN_SENT", "cookie": 1, "inode": 5, "recv_q": 0, "send_q": 0, "timer": 1, "timer_name": "on",
             "retrans": 0, "expires_ms": 1000, "tcp_info": None, "handle": "c1"}
    entries = [{**entry, "t": 100.0 + i * spacing, "prev_t": None if i == 0 else 100.0 + (i - 1) * spacing,
                "change": "new" if i == 0 else "state", "state": state}
               for i, state in enumerate(states)]
    history.load({"entries": entries, "samples": 10, "missed": 0, "t_first": 100.0, "t_last": 110.0,
                  "period_ms": 10.0, "interval_ms": None, "error": None})
    return history


def _evidence(s: Scenario) -> Evidence:
    evidence = Evidence()
    if s.outcome == "skipped":
        return evidence
    evidence.add_records("client", [_record("socket", None, 99.0, 99.0001),
                                    _record("connect", "EINPROGRESS", 99.5, 99.5001),
                                    _record("connect", s.errname, 100.0, 100.0 + s.elapsed)])
    evidence.add_wire(Wire("client", [_syn(100.0 + t) for t in s.syns]))
    evidence.add_history("client", _history(s.states, s.state_spacing))
    return evidence


def make_run(root: Path, name: str, scenarios: dict[str, Scenario], **manifest: object) -> Path:
    """A complete run in root/name with one bundle per scenario; `manifest` overrides the manifest's fields."""
    run_dir = root / name
    tests = []
    for nodeid, s in scenarios.items():
        bundle, _ = write_bundle(run_dir, CompletedTest(
            nodeid=nodeid, run_id=name, worker="main", outcome=s.outcome, duration=1.0,
            phases={"setup": {"outcome": "skipped" if s.outcome == "skipped" else "passed", "duration": 0.5},
                    "teardown": {"outcome": "passed", "duration": 0.5}},
            longrepr=s.reason and {"phase": "setup" if s.outcome == "skipped" else "call", "summary": s.reason},
            sysctls=s.sysctls, evidence=_evidence(s)))
        tests.append({"nodeid": nodeid, "bundle": bundle.name})
    write_json(run_dir / "manifest.json", {**MANIFEST, "run_id": name, "tests": tests, **manifest})
    return run_dir
