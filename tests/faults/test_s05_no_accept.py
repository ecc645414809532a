"""S05: the server listens but never calls accept(); then more clients come than its backlog holds."""

import pytest
import tenacity

from faults import Drop
from harness.capture import capture
from harness.counters import tcp_ext
from harness.expect import CLOCK_ALIGNMENT, SOFTIRQ_AND_WAKEUP, expect_errno
from harness.flows import Kind, tcp_flow
from harness.kernel import TCP_TIMEOUT_INIT
from harness.sockets import format_sockets, sample, wait_for
from harness.timing import SCHEDULING_SLACK

pytestmark = pytest.mark.faults

PORT = 6666
ABORT = "net.ipv4.tcp_abort_on_overflow"
BACKLOG = 2
# sk_acceptq_is_full() is `queued > backlog`: a listener holds backlog + 1 established connections.
HOLDS = BACKLOG + 1
# The overflowing client's application timeout: past its first SYN retransmission (1 s).
APP_TIMEOUT = 1.5
# A completed handshake returns connect() within milliseconds.
AT_ONCE = 0.5 + SCHEDULING_SLACK
# Waiting for events (not timing assertions): the late client's handshake ends at the server's next SYN/ACK
# retransmission, at most 4 s (the third request timeout) after its SYN.
WAIT_STATE = 2
WAIT_RETRANSMISSION = 5 * TCP_TIMEOUT_INIT
# Sampler period: the late connection's SYN_RECV request and its child socket are seen within it.
PERIOD_MS = 10

SCENARIO = {
    "id": "S05",
    "title": "Handshake completes without accept(); more clients than the backlog",
    "fault": "The server listens (backlog 2) and never accepts; then more clients connect than the queue holds.",
    "linux": "The kernel completes handshakes itself; the LISTEN socket's Recv-Q is the accept queue depth "
             "(backlog + 1 at most). A SYN to a full queue is dropped either way; a handshake's last ACK meeting "
             "a full queue is ignored (0: SYN/ACK retransmitted until there is room) or answered by a RST (1).",
    "expect": "connect() succeeds at once up to backlog + 1; beyond that SYNs go unanswered (select times out); "
              "a client whose ACK met the full queue is ESTABLISHED although the server has no connection "
              "(0), or gets ECONNRESET (1).",
    "lesson": "A successful connect() does not mean the server accepted: use an application-level handshake or "
              "response timeout; size the backlog (and somaxconn) for bursts; keep tcp_abort_on_overflow 0 "
              "unless clients must fail fast.",
}


def _listen_queue(server, depth: int) -> dict:
    """The LISTEN socket's entry once its accept queue (Recv-Q) holds `depth` connections."""
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(WAIT_STATE), wait=tenacity.wait_fixed(0.02),
                                     reraise=True):
        with attempt:
            (listen,) = server.sockets(port=PORT, states=["LISTEN"])
            assert listen["recv_q"] == depth, f"accept queue {listen['recv_q']}, waiting for {depth}: {listen}"
    return listen


@pytest.mark.parametrize("abort_on_overflow", [
    pytest.param(0, marks=pytest.mark.sysctls(server={ABORT: 0}), id="abort_on_overflow=0"),
    pytest.param(1, marks=pytest.mark.sysctls(server={ABORT: 1}), id="abort_on_overflow=1"),
])
def test_s05_handshakes_complete_without_accept_and_overflow_per_abort_on_overflow(pair, abort_on_overflow,
                                                                                   record_property):
    """S05, seed experiment "TCP的三次握手在listen之后就可以完成, 可以将accept注释掉进行测试" (the handshake
    completes after listen(); comment accept() out and see: the listen and accept queues).

    The server listens with backlog 2 and never accepts: the kernel completes each handshake by itself, the
    clients are ESTABLISHED and the LISTEN socket's Recv-Q counts the connections waiting in the accept queue
    (Send-Q shows the backlog); it holds backlog + 1. Two ways to overflow it. A SYN arriving when the queue is
    full is dropped (TcpExt ListenOverflows), with tcp_abort_on_overflow 0 or 1 alike: that client retransmits
    and its select() times out. A handshake that began while there was room (its SYN/ACK lost once, here by a
    one-shot drop) and whose ACK arrives when the queue is full depends on the sysctl: with 0 the ACK is
    ignored, the client is ESTABLISHED while the server holds only a SYN_RECV request and retransmits its
    SYN/ACK, and once the application accepts one connection the next retransmission's ACK completes it; with
    1 the server answers the ACK with a RST and the client gets ECONNRESET.
    """
    client, server = pair.client, pair.server
    assert int(server.sysctl_get([ABORT])[ABORT]) == abort_on_overflow
    listener = server.listen(port=PORT, backlog=BACKLOG)
    assert listener.ok, listener
    (listen,) = server.sockets(port=PORT, states=["LISTEN"])
    assert (listen["recv_q"], listen["send_q"]) == (0, BACKLOG), f"Send-Q of a listener is its backlog: {listen}"

    early = []
    for depth in range(1, BACKLOG + 1):
        early.append(client.connect(addr=server.addr, port=PORT))
        expect_errno(early[-1], None, between=(0, AT_ONCE))
        _listen_queue(server, depth)

    overflows_before = tcp_ext(server)["ListenOverflows"]
    late = client.socket()
    late_port = client.bind(late.handle).extra["local"][1]
    with capture(client, f"tcp port {PORT}") as wire, \
            sample(server, dport=late_port, period_ms=PERIOD_MS) as late_on_server:
        with Drop(server, direction="out", protocol="tcp", dport=late_port):
            started = client.connect(addr=server.addr, port=PORT, handle=late.handle, nonblocking=True)
            wait_for(server, "SYN_RECV", dport=late_port, timeout=WAIT_STATE)
            last = client.connect(addr=server.addr, port=PORT)
            full = _listen_queue(server, HOLDS)
            on_client = client.sockets(dport=PORT, states=["ESTABLISHED"])
            queued = server.sockets(sport=PORT, states=["ESTABLISHED"])
        refused = client.connect(addr=server.addr, port=PORT, nonblocking=True, select_timeout=APP_TIMEOUT)
        # It gives up at its timeout, as the seed's client does; kept, its next SYN would take the slot an
        # accept() frees.
        assert client.close(refused.handle).ok
        if abort_on_overflow:
            for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(WAIT_RETRANSMISSION),
                                             wait=tenacity.wait_fixed(0.02), reraise=True):
                with attempt:
                    assert client.sockets(sport=late_port) == [], "waiting for the late client's reset"
            reset = client.so_error(late.handle)
        else:
            (believed,) = wait_for(client, "ESTABLISHED", sport=late_port, timeout=WAIT_RETRANSMISSION)
            waiting = server.sockets(dport=late_port)
            still_full = _listen_queue(server, HOLDS)
            accepted = server.accept(listener.handle, timeout=WAIT_STATE)
            completed = wait_for(server, "ESTABLISHED", dport=late_port, timeout=WAIT_RETRANSMISSION)
            after_accept = _listen_queue(server, HOLDS)
    overflows = tcp_ext(server)["ListenOverflows"] - overflows_before
    # The late handshake's SYN/ACK timer: 1 s, then (abort_on_overflow=0) 2 s more until the retransmission
    # whose ACK finds room.
    record_property("kernel_wait", TCP_TIMEOUT_INIT if abort_on_overflow else 3 * TCP_TIMEOUT_INIT)
    late_flow = tcp_flow(wire, port=late_port)
    refused_flow = tcp_flow(wire, port=refused.extra["local"][1])
    evidence = f"\n{late_flow}\n{refused_flow}\nListenOverflows +{overflows}"
    print(f"S05 abort_on_overflow={abort_on_overflow}: queue {full['recv_q']}/{full['send_q']}, refused "
          f"{refused.sub('select')} SO_ERROR {refused.sub('so_error').extra['value']}, ListenOverflows +{overflows}")

    # Up to backlog + 1 clients: connected at once, ESTABLISHED on both sides, nobody accepted.
    expect_errno(last, None, between=(0, AT_ONCE))
    mine = {rec.extra["local"][1] for rec in [*early, last]}
    assert {s["sport"] for s in on_client} == mine, format_sockets(on_client)
    assert {s["dport"] for s in queued} == mine and not any(s["handle"] for s in queued), (
        f"the queued connections are the server's, unaccepted (no handle)\n{format_sockets(queued)}")

    # A SYN to the full queue: dropped, whatever tcp_abort_on_overflow says.
    assert refused.errname == "EINPROGRESS", refused
    assert (refused.sub("select").ret, refused.sub("so_error").extra["value"]) == (0, 0), refused.extra
    assert refused_flow.kinds() == [Kind.SYN, Kind.SYN_RETRANSMISSION], "no answer to the SYNs" + evidence

    # The late handshake: its first SYN/ACK was lost, the one after the drop healed met the full queue.
    assert started.errname == "EINPROGRESS", started
    synacks = late_flow.of(Kind.SYNACK, Kind.SYNACK_RETRANSMISSION)
    assert synacks, "a SYN/ACK reached the late client after the drop healed" + evidence
    acks = [s for s in late_flow.of(from_client=True) if s.t > synacks[0].t and s.ack == 1]
    assert acks, "the late client acknowledged the SYN/ACK: its side of the handshake is complete" + evidence
    resets = late_flow.of(Kind.RST)
    # TcpExt ListenOverflows counts each SYN dropped and each ACK that found the queue full while the request
    # existed: with abort_on_overflow=1 the first such ACK removes the request, and the listener answers any
    # later one with a RST of its own (a stray ACK), no overflow.
    overflowing = acks[:1] if abort_on_overflow else [a for a in acks if a.t < accepted.t0]
    assert overflows == len(refused_flow.kinds()) + len(overflowing), (
        f"{len(refused_flow.kinds())} SYNs and {len(overflowing)} ACKs met the full queue" + evidence)
    if abort_on_overflow:
        # The client's SYN retransmission and the server's SYN/ACK timer may both fire, so two ACKs: one RST each.
        assert resets and all((r.from_client, r.flags, r.seq) == (False, "R", 1) for r in resets), (
            "the server resets the ACKs" + evidence)
        assert len(resets) == len(acks), "one RST per ACK" + evidence
        assert 0 <= resets[0].t - acks[0].t <= SOFTIRQ_AND_WAKEUP, "the RST answers the ACK at once" + evidence
        assert reset.extra["value_name"] == "ECONNRESET", reset.extra
        assert not server.sockets(dport=late_port), "nothing of the late client is left on the server"
        assert late_on_server.states_reached() == {"SYN_RECV"}, late_on_server.table()
        assert _listen_queue(server, HOLDS)["recv_q"] == HOLDS
    else:
        assert not resets, "abort_on_overflow=0 never resets" + evidence
        assert believed["state"] == "ESTABLISHED"
        assert [s["state"] for s in waiting] == ["SYN_RECV"], (
            f"the client believes it is connected, the server holds a request only\n{format_sockets(waiting)}")
        assert still_full["recv_q"] == HOLDS
        assert accepted.ok and accepted.extra["peer"][1] in mine, accepted
        # The connection completes with the first ACK after the accept: to a SYN/ACK retransmission.
        after = [s for s in synacks if s.t > accepted.t1]
        assert after, "a SYN/ACK retransmission came after the accept" + evidence
        assert [s["state"] for s in completed] == ["ESTABLISHED"], format_sockets(completed)
        completing = [s for s in acks if s.t > after[0].t]
        assert completing, "the late client acknowledged the SYN/ACK retransmission" + evidence
        ack = completing[0]
        child = late_on_server.first("ESTABLISHED")
        assert child is not None and child.entered_after is not None, late_on_server.table()
        assert child.entered_after <= ack.t + CLOCK_ALIGNMENT and child.entered_by >= ack.t - CLOCK_ALIGNMENT, (
            f"the late connection was made by the ACK of the SYN/ACK after the accept, at +{ack.t - started.t0:.4f} "
            f"s\n{late_on_server.table()}" + evidence)
        assert late_on_server.states_reached() == {"SYN_RECV", "ESTABLISHED"}, late_on_server.table()
        assert after_accept["recv_q"] == HOLDS, "one accepted, the late one queued in its place"
