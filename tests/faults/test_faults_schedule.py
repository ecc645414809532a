"""A fault on a timeline: LinkDown of the client from +0.5 s for 1 s while the workload runs; its apply and
heal times, and what a connect sees inside the window and after it. Plus two faults in force at once."""

from __future__ import annotations

import errno
import time

import pytest

from faults import LinkDown, Schedule, Sysctls
from harness.timing import assert_on_time

pytestmark = pytest.mark.faults

PORT = 7006
AT, FOR = 0.5, 1.0
# Apply and heal are never early. Late by the schedule thread's wake-up (0.1 ms median when the machine is
# not starved) plus one agent round trip (link_set: 1.6 ms down, 3.4 ms up with the default route restored,
# measured in the agent; 3-10 ms with the exec stream). 0.1 s covers that; a machine whose own 10 ms sleeps
# wake later than that makes the check an expected failure (harness.timing).
TOLERANCE = 0.1


def test_link_down_window_on_a_timeline(pair):
    client, server = pair.client, pair.server
    listener = server.listen(port=PORT, accept=True, backlog=16)
    assert listener.ok, listener
    fault = LinkDown(client)
    schedule = Schedule().add(fault, at=AT, duration=FOR)
    with schedule:
        start = schedule.started_at
        before = client.connect(server.addr, PORT)
        while fault.applied_at is None:
            time.sleep(0.01)
        during = client.connect(server.addr, PORT)
        schedule.wait()
        after = client.connect(server.addr, PORT)
    record = schedule.records()[0]
    timeline = {name: round(record[name] - start, 4) for name in
                ("apply_started", "applied_at", "heal_started", "healed_at")}
    evidence = f"\ntimeline (s after start) {timeline}\n{record}\nbefore {before}\nduring {during}\nafter {after}"

    assert before.ok and before.t1 < fault.applied_at, evidence
    assert after.ok and after.t0 > fault.healed_at, evidence
    assert_on_time(fault.applied_at, start + AT, TOLERANCE, "LinkDown in force", evidence)
    assert_on_time(fault.healed_at, start + AT + FOR, TOLERANCE, "LinkDown healed", evidence)
    # The body polls every 10 ms for the fault to be in force; a starved machine can miss the whole window.
    assert_on_time(during.t0, fault.applied_at, FOR / 2, "the connect inside the window", evidence)
    link_down, link_up = fault.transitions[0]["t1"], fault.transitions[1]["t0"]
    assert link_down <= during.t0 and during.t1 <= link_up, evidence
    assert during.errno == errno.ENETUNREACH, evidence


def test_faults_in_force_together(pair):
    """A one-port ephemeral range and the link down, both from the start: the first connect fails with
    ENETUNREACH; at heal of the link (1 s) the range is still in force, so the next connect uses that port."""
    client, server = pair.client, pair.server
    listener = server.listen(port=PORT, accept=True, backlog=16)
    assert listener.ok, listener
    schedule = (Schedule().add(Sysctls(client, {"net.ipv4.ip_local_port_range": "45679 45679"}))
                .add(LinkDown(client), duration=1.0))
    with schedule:
        refused = client.connect(server.addr, PORT)
        schedule.wait()
        connected = client.connect(server.addr, PORT)
        port = [s["sport"] for s in client.sockets(dport=PORT) if s["handle"] == connected.handle]
    records = schedule.records()
    assert refused.errno == errno.ENETUNREACH, f"{refused}\n{records}"
    assert connected.ok and port == [45679], f"{connected} {port}\n{records}"
    assert all(r["healed_at"] is not None for r in records), records
