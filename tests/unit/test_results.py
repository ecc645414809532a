"""The results writer's pieces on constructed evidence (no Docker): bundle names, the pcap cap, bundles checked
against their schemas, totals, outcomes from pytest reports, the manifest's facts."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dpkt
import jsonschema
import pytest

from harness import manifest
from harness.errors import EngineUnavailable
from harness.evidence import Evidence
from harness.programs import ProgramResult
from harness.results import (NAME_MAX, CompletedTest, bundle_name, point_latest, totals, truncate_pcap,
                             write_bundle)
from harness.results_plugin import outcome_of
from harness.results_schema import OUTCOME_SCHEMA, SOCKETS_SCHEMA, TIMELINE_SCHEMA
from harness.sockets import StateHistory
from harness.wire import Wire, parse_pcap


def _pcap(count: int, payload: int = 100) -> bytes:
    out = io.BytesIO()
    writer = dpkt.pcap.Writer(out, linktype=dpkt.pcap.DLT_EN10MB)
    for i in range(count):
        tcp = dpkt.tcp.TCP(sport=40000, dport=6666, flags=dpkt.tcp.TH_ACK, seq=i, data=b"x" * payload)
        ip = dpkt.ip.IP(src=bytes([10, 0, 0, 1]), dst=bytes([10, 0, 0, 2]), p=dpkt.ip.IP_PROTO_TCP, data=tcp)
        ip.len += len(tcp)
        writer.writepkt(bytes(dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=ip)), ts=100.0 + i)
    return out.getvalue()


def _packets_in(data: bytes) -> int:
    return len(list(dpkt.pcap.Reader(io.BytesIO(data))))


def test_bundle_names_are_safe_unique_and_stable():
    ids = ["tests/faults/test_s01_x.py::test_a[client-True]", "tests/faults/test_s01_x.py::test_a[client/True]",
           "other/test_s01_x.py::test_a[client-True]", "t.py::test_" + "long" * 60]
    names = [bundle_name(nodeid) for nodeid in ids]
    assert names[0].startswith("test_s01_x.test_a_client-True-"), names[0]
    assert len(set(names)) == len(ids), names
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) and len(name) <= NAME_MAX + 9 for name in names), names
    assert [bundle_name(nodeid) for nodeid in ids] == names


def test_a_pcap_over_the_cap_is_cut_at_a_packet_boundary():
    data = _pcap(10)
    record = (len(data) - 24) // 10
    assert truncate_pcap(data, len(data)) == data
    cut = truncate_pcap(data, 24 + 3 * record + record // 2)
    assert len(cut) == 24 + 3 * record and _packets_in(cut) == 3
    assert truncate_pcap(data, 24) == data[:24] and _packets_in(truncate_pcap(data, 30)) == 0
    assert truncate_pcap(data, 10) == b""
    with pytest.raises(ValueError, match="not a pcap file"):
        truncate_pcap(b"\x00" * 100, 50)


class _Fault:
    def __init__(self, applied: float, healed: float) -> None:
        self.applied, self.healed = applied, healed

    def record(self) -> dict[str, Any]:
        return {"fault": "Drop", "describe": "Drop on server: in tcp dport 6666 -> drop", "applied_at": self.applied,
                "healed_at": self.healed, "rules": ("in", "drop")}


def _history(host: str) -> StateHistory:
    entry = {"t": 100.0, "t_end": 100.001, "t_real": 1.7e9, "prev_t": None, "change": "new", "proto": "tcp",
             "family": "inet", "src": "10.0.0.1", "sport": 40000, "dst": "10.0.0.2", "dport": 6666,
             "state": "SYN_SENT", "cookie": 1, "inode": 5, "recv_q": 0, "send_q": 0, "timer": 1, "timer_name": "on",
             "retrans": 0, "expires_ms": 1000, "tcp_info": None, "handle": "s1"}
    history = StateHistory(host)
    history.load({"entries": [entry], "samples": 10, "missed": 0, "t_first": 100.0, "t_last": 100.1,
                  "period_ms": 10.0, "interval_ms": None, "error": None})
    return history


def _evidence(pcap_sizes: list[int]) -> Evidence:
    evidence = Evidence()
    for i, count in enumerate(pcap_sizes):
        wire = Wire("client" if i % 2 == 0 else "server")
        wire.pcap = _pcap(count)
        wire.packets = parse_pcap(wire.pcap)
        evidence.add_wire(wire)
    evidence.add_fault(_Fault(100.0, 103.0))
    evidence.add_history("client", _history("client"))
    return evidence


def _result(evidence: Evidence | None, nodeid: str = "t.py::test_x[1]") -> CompletedTest:
    return CompletedTest(nodeid=nodeid, run_id="r1", worker="gw0", outcome="failed", duration=1.5,
                      phases={"setup": {"outcome": "passed", "duration": 0.5},
                              "call": {"outcome": "failed", "duration": 1.0},
                              "teardown": {"outcome": "passed", "duration": 0.0}},
                      longrepr={"phase": "call", "summary": "AssertionError: errno ETIMEDOUT"},
                      sysctls={"client": {"net.ipv4.tcp_syn_retries": 2}}, evidence=evidence,
                      agent_logs={"client": "agent started", "server": ""}, properties={"kernel_wait": 7.0})


def test_a_bundle_holds_every_piece_of_evidence_and_matches_its_schemas(tmp_path: Path):
    bundle, written = write_bundle(tmp_path, _result(_evidence([3, 2, 4])))
    assert bundle == tmp_path / "tests" / bundle_name("t.py::test_x[1]")
    outcome = json.loads((bundle / "outcome.json").read_text())
    assert outcome["pcaps"] == written["pcaps"] and outcome["nodeid"] == written["nodeid"]
    jsonschema.validate(outcome, OUTCOME_SCHEMA)
    assert [(p["file"], p["packets"], p["truncated"]) for p in outcome["pcaps"]] == [
        ("client-1.pcap", 3, False), ("server-1.pcap", 2, False), ("client-2.pcap", 4, False)]
    assert _packets_in((bundle / "client-2.pcap").read_bytes()) == 4
    timeline = json.loads((bundle / "timeline.json").read_text())
    jsonschema.validate(timeline, TIMELINE_SCHEMA)
    assert [e["source"] for e in timeline].count("packet") == 9 and timeline[0]["source"] == "fault"
    jsonschema.validate(json.loads((bundle / "sockets-client-1.json").read_text()), SOCKETS_SCHEMA)
    assert (bundle / "agent-client.log").read_text() == "agent started\n"
    assert outcome["faults"][0]["rules"] == ["in", "drop"] and outcome["counts"] == {
        "syscalls": 0, "packets": 9, "state_changes": 1}
    assert outcome["sysctls"] == {"client": {"net.ipv4.tcp_syn_retries": 2}}


def test_programs_output_goes_to_files_named_in_the_outcome(tmp_path: Path):
    evidence = Evidence()
    evidence.add_output(ProgramResult("client", "curl", ("curl", "-sS", "http://x/"), 28, None, b"", b"timed out\n",
                                      0, 10, 10.0, 18.0))
    evidence.add_output(ProgramResult("client", "curl", ("curl",), -9, "SIGKILL", b"x" * 5, b"", 7, 0, 20.0, 21.0))
    evidence.add_output(ProgramResult("server", "nginx: master", ("nginx",), None, None, b"", b"", 0, 0, None, None))
    bundle, outcome = write_bundle(tmp_path, _result(evidence))
    jsonschema.validate(outcome, OUTCOME_SCHEMA)
    first, second, running = outcome["programs"]
    assert (first["status"], first["stdout"], first["stderr"], first["stderr_size"]) == (
        "exited with status 28", None, "program-client-curl-1.stderr", 10)
    assert (bundle / "program-client-curl-1.stderr").read_bytes() == b"timed out\n"
    assert (second["stdout"], second["signal"], second["truncated"]) == ("program-client-curl-2.stdout", "SIGKILL",
                                                                         ["stdout"])
    assert (bundle / "program-client-curl-2.stdout").read_bytes() == b"xxxxx"
    assert (running["status"], running["returncode"], running["stdout"]) == ("running", None, None)
    assert not list(bundle.glob("program-server-*")), "nothing written for streams a program left empty"


def test_pcaps_past_the_budget_are_truncated_counted_and_marked(tmp_path: Path):
    sizes = [len(_pcap(n)) for n in (5, 5, 5)]
    bundle, outcome = write_bundle(tmp_path, _result(_evidence([5, 5, 5])), pcap_budget=sizes[0] + sizes[1] // 2)
    assert [(p["truncated"], p["bytes"]) for p in outcome["pcaps"]] == [(False, sizes[0]), (True, sizes[1]),
                                                                        (True, sizes[2])]
    assert outcome["pcaps_truncated"] == 2
    assert _packets_in((bundle / "server-1.pcap").read_bytes()) == 2
    assert _packets_in((bundle / "client-2.pcap").read_bytes()) == 0
    assert sum(p["bytes_written"] for p in outcome["pcaps"]) <= outcome["pcap_budget"]
    assert totals(tmp_path)["pcaps_truncated"] == 2


def test_a_test_without_evidence_still_gets_a_bundle(tmp_path: Path):
    bundle, outcome = write_bundle(tmp_path, _result(None))
    jsonschema.validate(outcome, OUTCOME_SCHEMA)
    assert json.loads((bundle / "timeline.json").read_text()) == []
    assert outcome["pcaps"] == [] and outcome["faults"] == []


def test_totals_count_the_bundles_files_bytes_and_half_written_ones(tmp_path: Path):
    write_bundle(tmp_path, _result(_evidence([3]), "t.py::a"))
    write_bundle(tmp_path, _result(_evidence([2, 2]), "t.py::b"))
    (tmp_path / "tests" / "killed-0000").mkdir()
    figures = totals(tmp_path)
    files = [p for p in (tmp_path / "tests").rglob("*") if p.is_file()]
    assert figures == {"tests": 3, "files": len(files), "bytes": sum(p.stat().st_size for p in files),
                       "pcap_files": 3, "pcap_bytes": sum(p.stat().st_size for p in files if p.suffix == ".pcap"),
                       "pcaps_truncated": 0, "half_written": 1}


def test_latest_points_at_the_newest_run(tmp_path: Path):
    for run_id in ("run-1", "run-2"):
        (tmp_path / run_id).mkdir()
        point_latest(tmp_path, run_id)
    assert (tmp_path / "latest").resolve() == tmp_path / "run-2"


def _report(when: str, outcome: str, longrepr: Any = None, **extra: Any) -> Any:
    return SimpleNamespace(when=when, outcome=outcome, failed=outcome == "failed", skipped=outcome == "skipped",
                           longrepr=longrepr, longreprtext=str(longrepr or ""), duration=0.1, **extra)


def _crash(message: str) -> Any:
    return SimpleNamespace(reprcrash=SimpleNamespace(message=message))


@pytest.mark.parametrize("reports, expected", [
    ([("setup", "passed"), ("call", "passed"), ("teardown", "passed")], ("passed", None)),
    ([("setup", "passed"), ("call", "failed", _crash("AssertionError: boom")), ("teardown", "passed")],
     ("failed", {"phase": "call", "summary": "AssertionError: boom"})),
    ([("setup", "failed", _crash("ConfigError: bad")), ("teardown", "passed")],
     ("error", {"phase": "setup", "summary": "ConfigError: bad"})),
    ([("setup", "skipped", ("f.py", 3, "Skipped: no engine")), ("teardown", "passed")],
     ("skipped", {"phase": "setup", "summary": "Skipped: no engine"})),
    ([("setup", "passed"), ("call", "passed"), ("teardown", "failed", _crash("left rules behind"))],
     ("error", {"phase": "teardown", "summary": "left rules behind"})),
])
def test_outcomes_are_counted_as_pytest_counts_them(reports: list[tuple], expected: tuple):
    assert outcome_of({r[0]: _report(*r) for r in reports}) == expected


def test_expected_failures_are_xfailed_and_xpassed():
    xfail = _report("call", "skipped", ("f.py", 1, "known bug"), wasxfail="known bug")
    xpass = _report("call", "passed", wasxfail="known bug")
    setup = _report("setup", "passed")
    assert outcome_of({"setup": setup, "call": xfail})[0] == "xfailed"
    assert outcome_of({"setup": setup, "call": xpass}) == ("xpassed", None)


class _Host:
    name = "client"
    kernel_release = "6.1.0-test"
    driver = SimpleNamespace(backend=SimpleNamespace(name="netns"))

    def __init__(self, has: set[str]) -> None:
        self.has = has
        self.asked: list[str] = []

    def has_sysctl(self, key: str) -> bool:
        return key in self.has

    def sysctl_get(self, keys: list[str]) -> dict[str, str]:
        self.asked = list(keys)
        return {key: "1" for key in keys}


@pytest.mark.parametrize("linear", [True, False])
def test_host_facts_read_the_baseline_sysctls_and_optional_ones_only_where_present(linear: bool):
    has = {"net.ipv4.tcp_syn_linear_timeouts"} if linear else set()
    facts = manifest.host_facts("gw1", _Host(has))
    assert facts["worker"] == "gw1" and facts["host"] == "client" and facts["kernel_release"] == "6.1.0-test"
    assert facts["backend"] == "netns"
    assert set(facts["sysctls"]) == set(manifest.BASELINE_SYSCTLS) | has
    assert "net.ipv4.tcp_keepalive_intvl" in facts["sysctls"] and "net.ipv4.icmp_ratelimit" in facts["sysctls"]


def test_engine_facts_come_from_docker_info_or_say_why_not(monkeypatch: pytest.MonkeyPatch):
    info = {"ServerVersion": "27.0.1", "KernelVersion": "6.1.0", "OperatingSystem": "Debian", "Driver": "overlay2"}
    monkeypatch.setattr(manifest, "connect_docker", lambda timeout: SimpleNamespace(info=lambda: info))
    assert manifest.engine_facts() == {"server_version": "27.0.1", "kernel_version": "6.1.0",
                                       "operating_system": "Debian", "error": None}

    def unreachable(timeout: int) -> Any:
        raise EngineUnavailable("Docker engine not reachable at unix:///x.sock")
    monkeypatch.setattr(manifest, "connect_docker", unreachable)
    facts = manifest.engine_facts()
    assert facts["server_version"] is None and facts["error"] == "Docker engine not reachable at unix:///x.sock"


def test_git_commit_is_the_checkouts_or_unknown(tmp_path: Path):
    assert re.fullmatch(r"[0-9a-f]{40}", manifest.git_commit()), manifest.git_commit()
    assert manifest.git_commit(tmp_path) == "unknown"
