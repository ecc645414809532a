"""A small finished run written with the results writer's own functions: two tests, S02 passed (a SYN
retransmitted twice, seen by both hosts' captures, under a Drop on the server) and S01 failed (refused, a
program's error output kept)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from harness.evidence import Evidence
from harness.programs import ProgramResult
from harness.records import SyscallRecord
from harness.results import CompletedTest, write_bundle, write_json
from harness.sockets import StateHistory
from harness.wire import Packet, Wire

RUN_ID = "20260101-000000-abcdef"
PASSED = "tests/faults/test_s02_syn_blackhole.py::test_s02_connect_times_out"
FAILED = "tests/faults/test_s01_no_listener.py::test_s01_connect_is_refused"
FAILURE = "AssertionError: connect s1 -> -1 ECONNREFUSED: errno ECONNREFUSED, expected ETIMEDOUT"
CLIENT, SERVER = "10.0.0.10", "10.0.0.20"
PROBE_ERROR = b"connect: Connection refused\n"
MANIFEST = {
    "format": 1, "run_id": RUN_ID,
    "start": {"utc": "2026-01-01T00:00:00+00:00", "epoch": 1767225600.0},
    "end": {"utc": "2026-01-01T00:01:00+00:00", "epoch": 1767225660.0},
    "harness": {"version": "0.1.0", "git_commit": "unknown"}, "python": "3.11.2", "pytest": "8.3.0",
    "command_line": {"argv": ["pytest"], "pytest_args": [], "dir": "/work"},
    "engine": {"server_version": "27.0", "kernel_version": "6.1.0", "operating_system": "Debian", "error": None},
    "hosts": [{"worker": "main", "host": "client", "kernel_release": "6.1.0",
               "sysctls": {"net.ipv4.tcp_syn_retries": "6", "net.ipv4.tcp_retries2": "15",
                           "net.ipv4.tcp_congestion_control": "cubic"}}],
    "workers": ["main"], "exit_status": 1, "tests": [],
    "totals": {"tests": 2, "files": 8, "bytes": 1000, "pcap_files": 0, "pcap_bytes": 0, "pcaps_truncated": 0,
               "half_written": 0},
}


class Drop:
    """A fault as the evidence holds it: a host and a record."""

    host = SimpleNamespace(name="server")

    def __init__(self, applied: float, healed: float | None) -> None:
        self.applied, self.healed = applied, healed

    def record(self) -> dict[str, Any]:
        return {"fault": "Drop", "describe": "Drop on server: in tcp dport 6666 -> drop", "applied_at": self.applied,
                "healed_at": self.healed}


def syscall(op: str, t0: float, t1: float, errname: str | None = None, handle: str = "s1") -> SyscallRecord:
    return SyscallRecord(op, handle, 8, None if errname else 0, 1 if errname else None, errname,
                         errname and "error", t0, t1, t0 + 1e9, t1 + 1e9)


def tcp(t: float, src: str, dst: str, flags: str, seq: int, ip_id: int, length: int = 0, ack: int = 0) -> Packet:
    sport, dport = (40000, 6666) if src == CLIENT else (6666, 40000)
    return Packet(t, t + 1e9, "tcp", src, dst, sport, dport, flags, seq, ack, length, 64240, ip_id=ip_id)


def state(t: float, change: str, name: str) -> dict[str, Any]:
    return {"t": t, "t_end": t + 0.001, "t_real": t + 1e9, "prev_t": None, "change": change, "proto": "tcp",
            "family": "inet", "src": CLIENT, "sport": 40000, "dst": SERVER, "dport": 6666, "state": name,
            "cookie": 1, "inode": 5, "recv_q": 0, "send_q": 1, "timer": 1, "timer_name": "on", "retrans": 0,
            "expires_ms": 1000, "tcp_info": None, "handle": "s1"}


def history(host: str, entries: list[dict[str, Any]]) -> StateHistory:
    loaded = StateHistory(host)
    loaded.load({"entries": entries, "samples": 10, "missed": 0, "t_first": 100.0, "t_last": 120.0,
                 "period_ms": 10.0, "interval_ms": None, "error": None})
    return loaded


def blackhole() -> Evidence:
    """S02: connect blocks 7 s and times out; the SYN goes out three times, both captures see each."""
    syns = [tcp(100.01 + delay, CLIENT, SERVER, "S", 1000, 7 + n) for n, delay in enumerate((0.0, 1.0, 3.0))]
    evidence = Evidence(records=[("client", syscall("socket", 100.004, 100.0041)),
                                 ("client", syscall("connect", 100.005, 107.005, "ETIMEDOUT"))],
                        faults=[Drop(100.0, 107.5)],
                        wires=[Wire("client", syns), Wire("server", [replace(p, t=p.t + 1e-4) for p in syns])])
    evidence.histories.append(("client", history("client", [state(100.006, "new", "SYN_SENT"),
                                                            state(107.006, "gone", "SYN_SENT")])))
    return evidence


def refused() -> Evidence:
    """S01: connect is refused at once: a SYN, the server's RST, both captured on both hosts; a program on the
    client printed the error."""
    packets = [tcp(200.00005, CLIENT, SERVER, "S", 5, 1), tcp(200.00015, SERVER, CLIENT, "R.", 0, 0, ack=6)]
    evidence = Evidence(records=[("client", syscall("connect", 200.0, 200.0002, "ECONNREFUSED"))],
                        wires=[Wire("client", packets), Wire("server", [replace(p, t=p.t + 1e-5) for p in packets])])
    evidence.add_output(ProgramResult("client", "probe", ("probe",), 1, None, b"", PROBE_ERROR, 0, len(PROBE_ERROR),
                                      199.9, 200.001))
    return evidence


def _phases(call: str) -> dict[str, dict[str, Any]]:
    return {"setup": {"outcome": "passed", "duration": 0.5}, "call": {"outcome": call, "duration": 7.0},
            "teardown": {"outcome": "passed", "duration": 0.1}}


def write_run(results: Path) -> Path:
    """results/<RUN_ID>/ with its manifest and the two tests' bundles."""
    run_dir = results / RUN_ID
    tests = []
    for nodeid, outcome, longrepr, evidence in (
            (PASSED, "passed", None, blackhole()),
            (FAILED, "failed", {"phase": "call", "summary": FAILURE}, refused())):
        bundle, _ = write_bundle(run_dir, CompletedTest(
            nodeid=nodeid, run_id=RUN_ID, worker="main", outcome=outcome, duration=7.6, phases=_phases(outcome),
            longrepr=longrepr, sysctls={}, evidence=evidence))
        tests.append({"nodeid": nodeid, "bundle": bundle.name})
    write_json(run_dir / "manifest.json", {**MANIFEST, "tests": tests})
    return run_dir
