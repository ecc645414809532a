"""S19: UDP is silent: nothing listens on the port, or the network loses datagrams."""

import math

import pytest
import tenacity

from faults import Netem
from harness.capture import capture
from harness.counters import snmp_counters
from harness.expect import expect_errno
from harness.flows import udp_flow
from harness.timing import SCHEDULING_SLACK

pytestmark = pytest.mark.faults

SCENARIO = {
    "id": "S19",
    "title": "UDP is silent",
    "fault": "No listener on the server's UDP port (its kernel answers ICMP port-unreachable); or 20 % loss on "
             "the client's egress (netem, or its nft fallback where the kernel lacks sch_netem).",
    "linux": "sendto() only hands the datagram to the stack. An unconnected socket ignores ICMP errors; a connected "
             "one stores ICMP port-unreachable as a pending error that the next call returns once. Lost datagrams "
             "leave no trace at all.",
    "expect": "Unconnected: every sendto() succeeds, recvfrom() just times out (EAGAIN). Connected: the call after "
              "the ICMP fails with ECONNREFUSED (a send is then not sent), the next succeeds; a blocked recv() "
              "fails at once. Loss: every send succeeds, about 20 % never arrive, nobody is told.",
    "lesson": "UDP applications must detect loss and dead peers themselves (sequence numbers, acknowledgements, "
              "timeouts); connect() the socket to at least hear ECONNREFUSED.",
}

PORT = 6666
ICMP_RATELIMIT = "net.ipv4.icmp_ratelimit"
# A send that only queues, or a recv that fails on a pending error, returns within microseconds; a recv woken by
# an ICMP error waits one round trip on the local bridge (measured under 1 ms).
AT_ONCE = 0.05 + SCHEDULING_SLACK
# A recv that nothing answers: SO_RCVTIMEO expires (EAGAIN).
QUIET = 0.3
LOSS_PCT, DATAGRAMS = 20, 200
# The number lost is binomial(DATAGRAMS, LOSS_PCT %): 40 +- 5.7; six standard deviations fail a correct loss
# with probability 2e-9, and a loss of nothing, of everything, or of half would fail them.
LOSS_SD = math.sqrt(DATAGRAMS * LOSS_PCT / 100 * (1 - LOSS_PCT / 100))
MARKER = b"end"
WAIT = 5


def _unreachables(client) -> int:
    return snmp_counters(client, "Icmp")["InDestUnreachs"]


def _wait_unreachables(client, count: int) -> None:
    """Wait until the client's kernel has received `count` ICMP destination-unreachable in all (an event)."""
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(WAIT), wait=tenacity.wait_fixed(0.01),
                                     reraise=True):
        with attempt:
            assert _unreachables(client) >= count, "waiting for the ICMP port-unreachable"


@pytest.mark.sysctls(server={ICMP_RATELIMIT: 0})
def test_s19_unconnected_udp_never_errors(pair, record_property):
    """S19, seed experiment "UDP协议层...不会给应用层返回任何错误信息" (the UDP layer never returns an error to the
    application when a datagram cannot be delivered).

    Nothing listens on the server's port, so the server's kernel answers every datagram with an ICMP
    port-unreachable; the client's unconnected socket ignores them: every sendto() succeeds, a recvfrom()
    just times out (EAGAIN), and no error is pending (SO_ERROR 0).
    """
    client, server = pair.client, pair.server
    record_property("kernel_wait", 0)
    handle = client.socket("udp").handle
    before = _unreachables(client)
    sends = []
    with capture(client, f"udp port {PORT} or icmp") as wire:
        for n in range(3):
            sends.append(client.send(handle, data=b"ping %d" % n, addr=server.addr, port=PORT))
            _wait_unreachables(client, before + n + 1)
        rec = client.recv(handle, timeout=QUIET)
        pending = client.so_error(handle)
    flow = udp_flow(wire, port=PORT)
    evidence = f"\n{sends}\n{rec}\n{flow.render()}"

    for send in sends:
        expect_errno(send, None, between=(0, AT_ONCE))
    expect_errno(rec, "EAGAIN", between=(QUIET, QUIET + AT_ONCE))
    assert pending.extra["value"] == 0, f"no error is pending on an unconnected socket: {pending}"
    assert len(flow.times(from_client=True)) == 3, "every datagram left" + evidence
    assert [e.name for e in flow.icmp] == ["port-unreachable"] * 3, "and every one was refused" + evidence


@pytest.mark.sysctls(server={ICMP_RATELIMIT: 0})
def test_s19_connected_udp_learns_econnrefused_from_icmp(pair, record_property):
    """S19, seed experiment "UDP协议层...不会给应用层返回任何错误信息", for a connected socket.

    connect() on a UDP socket sends nothing and succeeds. The first send() succeeds and the server's kernel
    answers it with an ICMP port-unreachable, which the connected socket stores as a pending error: the next
    send() fails with ECONNREFUSED and its datagram is not sent; the one after succeeds again. A blocked recv()
    is woken by the next ICMP and fails with ECONNREFUSED at once.
    """
    client, server = pair.client, pair.server
    record_property("kernel_wait", 0)
    before = _unreachables(client)
    with capture(client, f"udp port {PORT} or icmp") as wire:
        conn = client.connect(addr=server.addr, port=PORT, type="udp")
        first = client.send(conn.handle, data=b"ping 0")
        _wait_unreachables(client, before + 1)
        refused = client.send(conn.handle, data=b"ping 1")
        third = client.send(conn.handle, data=b"ping 2")
        woken = client.recv(conn.handle, timeout=WAIT)
    flow = udp_flow(wire, port=PORT)
    evidence = f"\n{conn}\n{first}\n{refused}\n{third}\n{woken}\n{flow.render()}"

    expect_errno(conn, None, between=(0, AT_ONCE))
    expect_errno(first, None, between=(0, AT_ONCE))
    expect_errno(refused, "ECONNREFUSED", between=(0, AT_ONCE))
    expect_errno(third, None, between=(0, AT_ONCE))
    expect_errno(woken, "ECONNREFUSED", between=(0, AT_ONCE))
    sent = flow.times(from_client=True).times
    assert len(sent) == 2 and sent[0] < refused.t0 < third.t0 < sent[1], (
        "connect() sent nothing, the refused send() nothing either: two datagrams" + evidence)
    assert [e.name for e in flow.icmp] == ["port-unreachable"] * 2, evidence


@pytest.mark.parametrize("connected", [False, True], ids=["unconnected", "connected"])
def test_s19_lost_datagrams_leave_no_trace(pair, connected, record_property):
    """S19, seed experiment "UDP协议层...不会给应用层返回任何错误信息" with loss on the path ("如果因为网络故障该段无法
    发到对方", if a network fault keeps the datagram from the peer).

    The client's egress loses 20 % of its packets. Every send() succeeds, connected or not; about a fifth of
    the datagrams never reach the server's listening socket, and nothing tells either side: no ICMP, no
    pending error. On a kernel without sch_netem this runs on the fallback's nft loss, which is faithful here:
    it drops after the stack accepted the datagram, and sendto() succeeds as with netem.
    """
    client, server = pair.client, pair.server
    record_property("kernel_wait", 0)
    receiver = server.socket("udp").handle
    assert server.bind(receiver, port=PORT).ok
    if connected:
        handle = client.connect(addr=server.addr, port=PORT, type="udp").handle
        target = {}
    else:
        handle = client.socket("udp").handle
        target = {"addr": server.addr, "port": PORT}
    assert client.send(handle, data=b"warm-up", **target).ok and server.recv(receiver, timeout=WAIT).ok
    fault = Netem(client, loss_pct=LOSS_PCT, fallback=True)
    with capture(client, f"udp port {PORT} or icmp") as wire:
        with fault:
            sends = [client.send(handle, data=str(n).encode(), **target) for n in range(DATAGRAMS)]
            # The marker goes after the loss is healed, through the same FIFO path: once it is read, every
            # datagram that survived has arrived.
        assert client.send(handle, data=MARKER, **target).ok
        arrived = []
        while not arrived or arrived[-1] != MARKER:
            rec = server.recv(receiver, timeout=WAIT)
            assert rec.ok, f"the marker did not arrive: {rec}"
            arrived.append(rec.data)
        silence = client.recv(handle, nonblocking=True)
        pending = client.so_error(handle)
    received = {int(data) for data in arrived[:-1]}
    lost = DATAGRAMS - len(received)
    print(f"S19 loss ({fault.record()['mechanism']}, {'connected' if connected else 'unconnected'}): "
          f"{lost}/{DATAGRAMS} lost")

    assert [s.errname for s in sends if not s.ok] == [], "every send() succeeds: the loss is silent"
    assert received <= set(range(DATAGRAMS)) and len(arrived) - 1 == len(received), "no duplicates, no strangers"
    assert abs(lost - DATAGRAMS * LOSS_PCT / 100) <= 6 * LOSS_SD, f"{lost} lost, expected about {LOSS_PCT} %"
    expect_errno(silence, "EAGAIN")
    assert pending.extra["value"] == 0, f"no error is pending: {pending}"
    assert udp_flow(wire, port=PORT).icmp == [], "nothing answered the lost datagrams"
