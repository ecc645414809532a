"""Link faults: eth0 of a host down (and flapping), checked through `ip -j` and sysfs, not through the agent op
that set it; what a connect and a send see while the link is down."""

from __future__ import annotations

import errno
import json

import pytest
import tenacity

from faults import LinkDown, LinkFlap
from harness.timing import assert_on_time

pytestmark = pytest.mark.faults

PORT = 7001
POLL = 0.02
# How long to wait for an event (not a timing assertion): after heal the data leaves at the next probe timer,
# which backs off from 200 ms (1.8 s after heal measured after a 4 s outage), plus a loaded machine's slack.
DELIVERY = 10
# A failed route lookup answers connect() from the syscall itself: 30 us measured; 50 ms covers scheduling
# on a busy machine (a starved one, whose own sleeps wake later than that, makes it an expected failure).
NO_ROUTE = 0.05
# Flap transitions are never early; late by the flapping thread's wake-up (0.1 ms median) plus one agent
# round trip (1.6-3.4 ms in the agent, a few ms more through the exec stream).
FLAP_TOLERANCE = 0.1


def _ip(host, *args: str):
    return json.loads(host.run(["ip", "-j", *args], check=True).stdout)


def _state(host) -> dict:
    """eth0 as iproute2 sees it: flags, addresses, routes (all tables), and the sysfs carrier-down count."""
    link = _ip(host, "addr", "show", "dev", "eth0")[0]
    return {"flags": link["flags"],
            "addrs": sorted((a["family"], a["local"], a["prefixlen"]) for a in link["addr_info"]),
            "routes": sorted(json.dumps(r, sort_keys=True) for r in _ip(host, "route", "show", "table", "all")),
            "carrier_down_count": int(host.run(["cat", "/sys/class/net/eth0/carrier_down_count"], check=True).stdout)}


def _listen(server) -> str:
    listener = server.listen(port=PORT, accept=True, backlog=16)
    assert listener.ok, listener
    return listener.handle


def _mine(host, handle: str) -> dict:
    """The sock_diag entry of the socket `handle` (other tests' sockets may linger in TIME_WAIT)."""
    found = [s for s in host.sockets(port=PORT) if s["handle"] == handle]
    assert len(found) == 1, f"{handle}: {host.sockets(port=PORT)}"
    return found[0]


def _default_gateway(state: dict) -> str:
    return [json.loads(r) for r in state["routes"] if '"dst": "default"' in r][0]["gateway"]


def test_link_down_in_force_connect_fails_and_heal_restores(pair):
    """While eth0 is down the host has no route: connect() fails at once with ENETUNREACH; heal brings back
    the link and every route (the default route is the one the kernel does not re-create by itself)."""
    client, server = pair.client, pair.server
    _listen(server)
    before = _state(client)
    assert "UP" in before["flags"] and any('"dst": "default"' in r for r in before["routes"]), before

    fault = LinkDown(client).apply()
    during = _state(client)
    refused = client.connect(server.addr, PORT)
    fault.heal()
    after = _state(client)
    fault.heal()
    again = _state(client)
    connected = client.connect(server.addr, PORT)
    evidence = f"\n{fault.record()}\nbefore {before}\nduring {during}\nafter {after}"

    assert "UP" not in during["flags"], "ip -j link shows eth0 down while the fault is in force" + evidence
    assert not [r for r in during["routes"] if '"dev": "eth0"' in r and '"table": "local"' not in r], (
        "no route through eth0 but the local table's" + evidence)
    assert during["carrier_down_count"] == before["carrier_down_count"] + 1, evidence
    assert refused.errno == errno.ENETUNREACH, f"{refused}" + evidence
    assert "UP" in after["flags"] and after["addrs"] == before["addrs"], evidence
    assert after["routes"] == before["routes"], "every route is back, default route included" + evidence
    restored = fault.transitions[-1]["restored"]["routes"]
    assert [(r["dst"], r["gateway"]) for r in restored] == [(None, _default_gateway(before))], evidence
    assert again == after and len(fault.transitions) == 2, "a second heal changes nothing" + evidence
    assert connected.ok, f"{connected}" + evidence
    assert_on_time(refused.t1, refused.t0, NO_ROUTE, "ENETUNREACH", evidence)


def test_established_connection_survives_an_outage(pair):
    """A send during the outage succeeds: the data is queued but never leaves (no route: nothing unacked, no
    retransmission), and the socket waits on the probe timer, backing off. No error reaches the application;
    after heal the next probe timer sends the data and the connection lives on."""
    client, server = pair.client, pair.server
    listener = _listen(server)
    conn = client.connect(server.addr, PORT)
    assert conn.ok, conn

    with LinkDown(client) as fault:
        sent = client.send(conn.handle, size=1000)
        for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(DELIVERY), wait=tenacity.wait_fixed(POLL),
                                         reraise=True):
            with attempt:
                stalled = _mine(client, conn.handle)
                assert stalled["tcp_info"]["probes"] >= 1, stalled
    accepted = server.accepted(listener)
    received = server.recv(accepted[0].handle, size=2000, timeout=DELIVERY)
    alive = _mine(client, conn.handle)
    evidence = f"\n{fault.record()}\nsend {sent}\nduring {stalled}\nafter {alive}\nrecv {received}"

    assert sent.ok and sent.ret == 1000, "send() during the outage succeeds: it only queues" + evidence
    assert stalled["state"] == "ESTABLISHED" and stalled["send_q"] == 1000, evidence
    assert stalled["timer_name"] == "persist", evidence
    assert stalled["tcp_info"]["unacked"] == 0 and stalled["tcp_info"]["total_retrans"] == 0, (
        "without a route nothing is sent, so nothing is retransmitted" + evidence)
    assert received.ok and received.ret == 1000, "the data arrives after heal" + evidence
    assert received.t1 > fault.healed_at, evidence
    assert alive["state"] == "ESTABLISHED" and alive["send_q"] == 0, evidence


def test_heal_when_the_block_raises(pair):
    client = pair.client
    before = _state(client)
    with pytest.raises(KeyError, match="workload failed"), LinkDown(client):
        raise KeyError("workload failed")
    after = _state(client)
    assert "UP" in after["flags"] and after["routes"] == before["routes"], f"before {before}\nafter {after}"


def test_link_already_down_is_not_taken_over(pair):
    """A link someone else set down is refused: the fault would otherwise bring up what is not its own."""
    client = pair.client
    gateway = _default_gateway(_state(client))
    client.run(["ip", "link", "set", "eth0", "down"], check=True)
    try:
        with pytest.raises(RuntimeError, match="eth0 of client was down already"):
            LinkDown(client).apply()
        assert "UP" not in _state(client)["flags"], "the refused fault left the link as it found it"
    finally:
        client.run(["ip", "link", "set", "eth0", "up"], check=True)
        client.run(["ip", "route", "replace", "default", "via", gateway], check=True)


def test_link_flap(pair):
    """down 300 ms / up 300 ms, twice: four transitions on a fixed schedule, seen by sysfs's carrier counter."""
    client = pair.client
    before = _state(client)
    flap = LinkFlap(client, down_ms=300, up_ms=300, count=2)
    with flap:
        flap.wait(timeout=30)
    after = _state(client)
    states = [t["state"] for t in flap.transitions]
    start = flap.transitions[0]["t1"]
    offsets = [round(t["t0"] - start, 3) for t in flap.transitions]
    evidence = f"\n{flap.record()}\noffsets {offsets}\nbefore {before}\nafter {after}"

    assert states == ["down", "up", "down", "up"], evidence
    assert after["carrier_down_count"] == before["carrier_down_count"] + 2, evidence
    assert "UP" in after["flags"] and after["routes"] == before["routes"], evidence
    for transition, planned in zip(flap.transitions[1:], (0.3, 0.6, 0.9)):
        assert_on_time(transition["t0"], start + planned, FLAP_TOLERANCE, f"flap {transition['state']}", evidence)
