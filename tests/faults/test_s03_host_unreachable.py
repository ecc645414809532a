"""S03: a client connects to a host the network knows to be unreachable: a REJECT answers its SYN."""

import pytest

from faults import Reject
from harness.capture import capture
from harness.counters import tcp_ext
from harness.expect import CLOCK_ALIGNMENT, SOFTIRQ_AND_WAKEUP, expect_errno, expect_held, expect_schedule
from harness.flows import Kind, tcp_flow
from harness.kernel import TCP_TIMEOUT_INIT, wheel_slack
from harness.sockets import sample
from harness.timing import SCHEDULING_SLACK

pytestmark = pytest.mark.faults

PORT = 6666
# reject_with -> (errno of connect(), the answer on the wire: ICMP destination-unreachable code, or "R." for a
# RST). In SYN_SENT every ICMP unreachable is fatal; icmp_err_convert maps the code to the errno.
REJECTS = {
    "icmp-host-unreachable": ("EHOSTUNREACH", 1),
    "icmp-net-unreachable": ("ENETUNREACH", 0),
    "icmp-port-unreachable": ("ECONNREFUSED", 3),
    "icmp-admin-prohibited": ("EHOSTUNREACH", 13),
    "tcp-reset": ("ECONNREFUSED", "R."),
}
# The server answers every SYN with an ICMP error: per-destination ICMP rate limiting must not eat one.
ICMP_RATELIMIT = "net.ipv4.icmp_ratelimit"
# An answer to the first SYN fails connect() within milliseconds; the first retransmission comes 1 s
# (TCP_TIMEOUT_INIT) after it, so half of that separates "at once" from "at the retransmission" on a loaded
# machine.
AT_ONCE = TCP_TIMEOUT_INIT / 2 + SCHEDULING_SLACK
# Sampler period; its longest measured interval stays under 2 periods on the loaded 2-core machine.
PERIOD_MS = 10
SAMPLING = 2 * PERIOD_MS / 1000 + SCHEDULING_SLACK

SCENARIO = {
    "id": "S03",
    "title": "Connect to a host known to be unreachable",
    "fault": "The server's firewall rejects the SYN: ICMP host/net/port-unreachable, admin-prohibited, or a RST.",
    "linux": "In SYN_SENT every ICMP unreachable is fatal, like a RST. But an ICMP arriving while connect() "
             "still holds the socket lock (on a fast link, the first) is only stored: the ICMP answering the SYN "
             "retransmission 1 s later fails it.",
    "expect": "EHOSTUNREACH (host-unreachable, admin-prohibited), ENETUNREACH (net-unreachable), ECONNREFUSED "
              "(port-unreachable, tcp-reset); at once for a RST, at once or after 1 s for an ICMP.",
    "lesson": "Treat EHOSTUNREACH/ENETUNREACH like ECONNREFUSED: the path answered, retry later with backoff; "
              "connect() can take a SYN retransmission (1 s) even when the answer is immediate.",
}


@pytest.mark.sysctls(server={ICMP_RATELIMIT: 0})
@pytest.mark.parametrize("reject_with", REJECTS)
def test_s03_connect_to_an_unreachable_host_fails_with_the_answers_errno(pair, reject_with, record_property):
    """S03, seed experiment "客户端连接一个网络达不到的主机: 已知型的网络达不到" (connect to a host the network
    knows to be unreachable: the path answers with an ICMP error).

    The server listens, but its firewall answers the client's SYN with an ICMP destination-unreachable (or a
    RST), so connect() fails with the answer's errno instead of ETIMEDOUT, and no SYN follows the answer that
    failed it. The seed says this failure is quick; here it is at once only for a RST: an ICMP that arrives
    while connect() still holds the socket lock (on this zero-latency link, the answer to the first SYN,
    counted in TcpExt LockDroppedIcmps) is only stored as a soft error, and the ICMP answering the first SYN
    retransmission, 1 s later, fails the connect.
    """
    client, server = pair.client, pair.server
    errname, code = REJECTS[reject_with]
    assert server.listen(port=PORT, accept=True).ok, "a listener: only the fault keeps the client out"
    locked_before = tcp_ext(client)["LockDroppedIcmps"]
    with Reject(server, reject_with, protocol="tcp", dport=PORT):
        with capture(client, f"tcp port {PORT} or icmp") as wire, \
                sample(client, port=PORT, period_ms=PERIOD_MS) as states, \
                sample(server, port=PORT, period_ms=PERIOD_MS) as server_states:
            rec = client.connect(addr=server.addr, port=PORT)
    locked = tcp_ext(client)["LockDroppedIcmps"] - locked_before
    record_property("kernel_wait", locked * TCP_TIMEOUT_INIT)
    flow = tcp_flow(wire, port=PORT)
    syns = flow.syn_schedule()
    answers = flow.of(Kind.RST) if code == "R." else flow.icmp
    evidence = f"\n{rec}\nLockDroppedIcmps +{locked}\n{flow.render(since=rec.t0)}"
    print(f"S03 {reject_with}: {rec.errname} after {rec.elapsed:.3f} s, {len(syns)} SYN(s), LockDroppedIcmps +{locked}")

    assert wire.complete, "tcpdump must have written every packet it was given" + evidence
    assert len(answers) == len(syns), "every SYN is answered" + evidence
    if code == "R.":
        assert all(rst.ack == 1 and not rst.from_client for rst in answers), evidence
    else:
        assert all((icmp.packet.icmp_type, icmp.packet.icmp_code) == (3, code) and icmp.quotes_client
                   and icmp.seq == 0 for icmp in answers), "each ICMP quotes the client's SYN" + evidence
    assert flow.kinds(from_client=True) == [Kind.SYN] + [Kind.SYN_RETRANSMISSION] * (len(syns) - 1), evidence
    assert syns.times[-1] <= answers[-1].t <= rec.t1 + CLOCK_ALIGNMENT, "the last answer ends connect()" + evidence

    if code == "R." or locked == 0:
        # A RST meeting the locked socket waits in its backlog and is processed when connect() sleeps.
        assert locked == 0 and len(syns) == 1, evidence
        expect_errno(rec, errname, between=(0, AT_ONCE))
    else:
        assert locked == 1 and len(syns) == 2, "the first ICMP met the locked socket, the second failed it" + evidence
        expect_schedule(syns, [TCP_TIMEOUT_INIT], "SYN", flow=flow)
        # connect() returns when its wake-up runs after the ICMP answering the retransmission.
        expect_errno(rec, errname, between=(TCP_TIMEOUT_INIT - CLOCK_ALIGNMENT,
                                            TCP_TIMEOUT_INIT + wheel_slack(TCP_TIMEOUT_INIT) + SOFTIRQ_AND_WAKEUP))
        expect_held(states, "SYN_SENT", at_least=rec.elapsed - SAMPLING, at_most=rec.elapsed + SAMPLING)

    assert set(states.states_reached()) <= {"SYN_SENT"}, states.table()
    assert client.sockets(port=PORT) == [], "the failed connect leaves no socket behind" + evidence
    assert server_states.states_reached() == {"LISTEN"}, (
        f"the server's TCP never saw the SYN: no SYN_RECV, no connection\n{server_states.table()}")
