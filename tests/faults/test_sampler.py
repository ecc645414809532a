"""The socket-state sampler catches a transient state that a fault holds open, and times it."""

import time

import pytest
import tenacity

from faults import Drop
from harness.capture import capture
from harness.sockets import sample, wait_for

pytestmark = pytest.mark.faults

PORT = 6666
PERIOD_MS = 10
DATA = 1000
# The server drops what the client sends until the client's retransmission timer has fired this many times
# (its RTO starts at 200 ms, more when a loaded machine inflated the handshake's RTT, and doubles).
BACKOFF = 2
# Every time here is CLOCK_MONOTONIC: the containers share this machine's kernel, so the agents' records,
# the sampler's entries and the faults' times are on one clock; packet times are mapped to it from
# CLOCK_REALTIME within 2 ms (see test_s01).
CLOCK_ALIGNMENT = 0.002
# The server acknowledges the retransmission that gets through at once, or with a delayed ACK (at most
# TCP_DELACK_MAX, 200 ms).
DELACK_MAX = 0.2
# The retransmission timer is a timer-wheel timer: it fires up to 1/8 of its timeout late (the granularity of
# the wheel level it sits in), never early.
TIMER_LATE = 1 / 8
# After the sampler's last snapshot shows a state, its next sample (one period later, on an idle machine)
# records it: wait this long before stopping it.
SETTLE = 0.1


def retransmissions(segments: list) -> list:
    """The segments carrying data or FIN that start below what was sent before them."""
    sent_to, found = None, []
    for segment in segments:
        end = segment.seq + segment.length + ("F" in segment.flags)
        if end == segment.seq:
            continue
        if sent_to is not None and segment.seq < sent_to:
            found.append(segment)
        sent_to = end if sent_to is None else max(sent_to, end)
    return found


def wait_for_backoff(host, sport: int, backoff: int) -> None:
    """Until the socket's tcp_info shows `backoff` expiries of its retransmission timer (an event, not a time)."""
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(10), wait=tenacity.wait_fixed(0.01),
                                     reraise=True):
        with attempt:
            table = host.sockets(sport=sport)
            assert table and (table[0]["tcp_info"] or {}).get("backoff", 0) >= backoff, table


def test_fin_wait1_is_held_while_the_server_drops_inbound(pair):
    """The client sends data and closes while the server's firewall drops everything the client sends: the
    client sits in FIN_WAIT1 retransmitting (backoff 1, 2, ...) until a retransmission after the heal is
    acknowledged, then goes to FIN_WAIT2. The sampler times the state against the close() record and the
    ACK on the wire.

    Tolerances: a sampler sees a change at its next sample, so the change lies in (prev_t, t_end] of the
    entry that shows it, exactly; a duration from sample times (end - start) is off by less than the longest
    interval between two samples. That interval is measured by the sampler itself (the period plus how late
    its thread woke up on this machine): it is the slack used here, not a guess.
    """
    client, server = pair.client, pair.server
    assert server.listen(port=PORT, accept=True).ok
    conn = client.connect(addr=server.addr, port=PORT)
    assert conn.ok, conn
    cport = conn.extra["local"][1]
    wait_for(server, "ESTABLISHED", sport=PORT)

    with capture(client, f"tcp port {PORT}") as wire, \
            sample(client, dport=PORT, period_ms=PERIOD_MS, fields=True) as history:
        with Drop(server, direction="in", protocol="tcp", dport=PORT) as drop:
            assert client.send(conn.handle, size=DATA).ret == DATA
            closed = client.close(conn.handle)
            wait_for_backoff(client, cport, BACKOFF)
        wait_for(client, "FIN_WAIT2", sport=cport, timeout=10)
        time.sleep(SETTLE)
    evidence = (f"\n{drop.describe()}: applied {drop.applied_at:.6f}, healed {drop.healed_at:.6f}\n{closed}\n"
                f"{history.table()}\n{wire.table(since=closed.t0)}")

    (sock,) = history.select(sport=cport)
    assert sock.states == ["ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"], evidence
    fin_wait1 = sock.spans[1]
    slack = history.figures["interval_ms"]["max"] / 1000

    # Into FIN_WAIT1 inside close(): the windows of the change and of the call overlap.
    assert fin_wait1.entered_after <= closed.t1 and fin_wait1.entered_by >= closed.t0, evidence

    # Out of it when the ACK of the FIN arrived, after the heal began (the drop held it for BACKOFF RTOs).
    assert wire.complete, "tcpdump must have written every packet it was given" + evidence
    (fin_end,) = {p.seq + p.length + 1 for p in wire.tcp(src=client.addr) if "F" in p.flags}
    fin_acked = next((p.t for p in wire.tcp(src=server.addr) if p.ack == fin_end), None)
    assert fin_acked is not None, "the server acknowledged the FIN" + evidence
    assert fin_acked > drop.healed_at - CLOCK_ALIGNMENT and fin_wait1.left_by > drop.healed_at, evidence
    assert (fin_wait1.left_after - CLOCK_ALIGNMENT <= fin_acked <= fin_wait1.left_by + CLOCK_ALIGNMENT), evidence
    assert abs(fin_wait1.duration - (fin_acked - closed.t0)) <= slack + closed.elapsed + CLOCK_ALIGNMENT, evidence

    # Once healed, the next retransmission comes within the RTO in force (the sampler recorded it).
    in_fin_wait1 = [e for e in sock.entries if e["state"] == "FIN_WAIT1"]
    rto = max(e["tcp_info"]["rto_us"] for e in in_fin_wait1) / 1e6
    assert fin_wait1.end <= drop.healed_at + rto * (1 + TIMER_LATE) + DELACK_MAX + slack, evidence

    # Each RTO that fired raised the backoff by one (two fire during the hold): the sampler recorded every
    # step, with the retransmission it caused inside the step's window.
    steps = [(before["tcp_info"]["backoff"], after) for before, after in zip(in_fin_wait1, in_fin_wait1[1:])
             if after["tcp_info"]["backoff"] > before["tcp_info"]["backoff"]]
    assert len(steps) >= 2 and all(after["tcp_info"]["backoff"] == before + 1 for before, after in steps), evidence
    resent = [p.t for p in retransmissions(wire.tcp(src=client.addr))]
    for _, step in steps:
        assert any(step["prev_t"] - CLOCK_ALIGNMENT < t <= step["t_end"] + CLOCK_ALIGNMENT for t in resent), (
            f"backoff {step['tcp_info']['backoff']} at {step['t']:.6f} without a retransmission" + evidence)
