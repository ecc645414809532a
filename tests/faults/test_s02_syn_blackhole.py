"""S02: a client connects to a host that never answers (its SYNs are dropped)."""

import pytest

from faults import Drop
from harness.capture import capture
from harness.expect import expect_errno, expect_held, expect_schedule, schedule_bounds
from harness.flows import tcp_flow
from harness.kernel import SYN_RETRIES, host_syn_timeouts
from harness.sockets import sample
from harness.timing import SCHEDULING_SLACK

pytestmark = pytest.mark.faults

SCENARIO = {
    "id": "S02",
    "title": "Connect to a host that never answers",
    "fault": "Drop of the SYNs on the server (its firewall), so nothing answers",
    "linux": "The SYN is retransmitted 1, 2, 4, ... s apart; on Linux >= 6.5 the first tcp_syn_linear_timeouts + 1 "
             "(default 5) timeouts are 1 s. The give-up is a time, not a count: the first expiry at least "
             "1 + 2 + ... + 2^tcp_syn_retries s after the SYN; the socket stays in SYN_SENT.",
    "expect": "ETIMEDOUT about 7 s in with tcp_syn_retries=2 on every kernel: SYNs at 0, 1, 3 s before 6.5, at 0, 1, "
              "2, 3, 4, 5 s with the default 4 linear timeouts; about 127 s with the default 6 retries.",
    "lesson": "A blocking connect() to a silent host can hang for minutes: use a non-blocking connect with your "
              "own deadline, or TCP_SYNCNT / TCP_USER_TIMEOUT on the socket.",
}

PORT = 6666
PERIOD_MS = 10
# The sampler sees a state change within one period (plus one dump, well under a millisecond); its longest
# measured interval stays under 2 periods on the loaded 2-core machine (bench/sampler.py).
SAMPLING = 2 * PERIOD_MS / 1000 + SCHEDULING_SLACK


@pytest.mark.sysctls(client={SYN_RETRIES: 2})
def test_s02_connect_to_a_silent_host_times_out_on_the_syn_schedule(pair, record_property):
    """S02, seed experiment "客户端连接一个不可达的主机" (connect to a host that never answers).

    The server's firewall drops the client's SYNs, so nothing answers: the client retransmits the SYN on the
    kernel's schedule, with its own tcp_syn_linear_timeouts (1 then 2 s with tcp_syn_retries=2 before Linux 6.5;
    1 s apart five times with the default 4 linear timeouts), and connect() fails with ETIMEDOUT about 7 s in
    either way. The client's socket sits in SYN_SENT all along, then is gone; the server never holds a socket for
    the connection. The kernel matrix shows the two schedules side by side.
    """
    client, server = pair.client, pair.server
    with Drop(server, protocol="tcp", dport=PORT):
        timeouts = host_syn_timeouts(client)
        record_property("kernel_wait", sum(timeouts))
        with capture(client, f"tcp port {PORT}") as wire, \
                sample(client, port=PORT, period_ms=PERIOD_MS) as states, \
                sample(server, port=PORT, period_ms=PERIOD_MS) as server_states:
            rec = client.connect(addr=server.addr, port=PORT)
    flow = tcp_flow(wire, port=PORT)

    low, high = schedule_bounds(timeouts)[-1]
    expect_errno(rec, "ETIMEDOUT", between=(low, high))
    expect_schedule(flow.syn_schedule(), timeouts[:-1], "SYN", flow=flow)
    assert flow.kinds() == ["syn"] + ["syn-retransmission"] * (len(timeouts) - 1), flow

    expect_held(states, "SYN_SENT", at_least=rec.elapsed - SAMPLING, at_most=rec.elapsed + SAMPLING)
    assert [s.states for s in states.sockets] == [["SYN_SENT"]], states.table()
    assert server_states.states_reached() == set(), server_states.table()
