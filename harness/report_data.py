"""What the HTML report shows of one evidence bundle: the summary figures and the timeline's events.

Figures come from the bundle's files alone (outcome.json, timeline.json), so a run can be reported anywhere:
- the key syscall (harness.timeline.key_syscall, shared with `netfault compare`): its errno and elapsed time
  (t1 - t0) are the summary's;
- retransmissions: TCP segments classified as retransmissions (harness.flows) in each host's captured
  packets, a segment seen by both hosts' captures counted once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .flows import Kind, tcp_flows
from .results import TESTS, TIMELINE
from .results_reader import Bundle
from .timeline import Event, Timeline, key_syscall
from .wire import Packet

RETRANSMISSIONS = frozenset({Kind.SYN_RETRANSMISSION, Kind.SYNACK_RETRANSMISSION, Kind.RETRANSMISSION,
                             Kind.FIN_RETRANSMISSION})
_SCENARIO = re.compile(r"test_(s\d\d)_", re.IGNORECASE)


@dataclass(frozen=True)
class BundleReport:
    """One test's row in the summary and the events of its timeline picture."""

    nodeid: str
    scenario: str
    outcome: str
    duration: float
    errname: str | None
    elapsed: float | None
    retransmissions: int
    message: str | None
    timeline: Timeline
    retransmitted: frozenset[int]
    files: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        """The test's name and parameters (the nodeid without its file)."""
        return self.nodeid.partition("::")[2] or self.nodeid


def scenario_of(nodeid: str) -> str:
    """The scenario id (S02) a test's name carries, "-" if none."""
    match = _SCENARIO.search(nodeid)
    return match.group(1).upper() if match else "-"


def packet_of(event: Event) -> Packet:
    """The captured packet a timeline event of source "packet" holds (its data is the Packet's fields)."""
    return Packet(**{**event.data, "sack": tuple(tuple(edges) for edges in event.data.get("sack", ()))})


def retransmitted(timeline: Timeline) -> frozenset[int]:
    """The indexes in timeline.events of packets that are TCP retransmissions, judged per capturing host."""
    found: set[int] = set()
    for host in {e.host for e in timeline.events if e.source == "packet"}:
        indexed = {i: packet_of(e) for i, e in enumerate(timeline.events) if e.source == "packet" and e.host == host}
        again = {id(s.packet) for flow in tcp_flows(indexed.values()) for s in flow.segments
                 if s.kind in RETRANSMISSIONS}
        found |= {i for i, packet in indexed.items() if id(packet) in again}
    return frozenset(found)


def count_retransmissions(timeline: Timeline, indexes: frozenset[int]) -> int:
    """How many distinct segments `indexes` are: the same one seen on both ends has the same IP id and bytes."""
    keys = {tuple(timeline.events[i].data[k] for k in ("src", "sport", "dst", "dport", "seq", "ip_id", "tsval"))
            for i in indexes}
    return len(keys)


def message_of(outcome: dict[str, Any]) -> str | None:
    """The failure (or skip) message with the phase it came from, None for a test without one."""
    longrepr = outcome["longrepr"]
    return f"{longrepr['phase']}: {longrepr['summary']}" if longrepr else None


def bundle_report(bundle: Bundle) -> BundleReport:
    """The report's view of one bundle."""
    outcome = bundle.outcome
    timeline = Timeline(Event(**e) for e in json.loads((bundle.path / TIMELINE).read_text()))
    key = key_syscall(timeline.events)
    again = retransmitted(timeline)
    return BundleReport(
        nodeid=outcome["nodeid"], scenario=scenario_of(outcome["nodeid"]), outcome=outcome["outcome"],
        duration=outcome["duration"], errname=key.data["errname"] if key else None,
        elapsed=key.data["t1"] - key.data["t0"] if key else None,
        retransmissions=count_retransmissions(timeline, again), message=message_of(outcome),
        timeline=timeline, retransmitted=again, files=evidence_files(bundle))


def evidence_files(bundle: Bundle) -> tuple[tuple[str, str], ...]:
    """(label, path from the run directory) of a bundle's pcaps and programs' output files."""
    outcome, where = bundle.outcome, f"{TESTS}/{bundle.path.name}"
    files = [(pcap["file"], f"{where}/{pcap['file']}") for pcap in outcome["pcaps"]]
    for program in outcome.get("programs", ()):
        files += [(f"{program['name']} on {program['host']}: {stream}", f"{where}/{program[stream]}")
                  for stream in ("stdout", "stderr") if program[stream]]
    return tuple(files)
