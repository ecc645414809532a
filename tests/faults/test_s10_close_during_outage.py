"""S10: the client closes its connection while the network is down and data is still unacknowledged."""

import pytest
import tenacity

from faults import Drop
from harness.capture import capture
from harness.expect import CLOCK_ALIGNMENT, SOFTIRQ_AND_WAKEUP, expect_errno, expect_no_packet, expect_schedule
from harness.flows import tcp_flow
from harness.kernel import giveup_after, retries_budget, wheel_slack
from harness.sockets import acked_connection, sample
from harness.timing import SCHEDULING_SLACK

pytestmark = pytest.mark.faults

SCENARIO = {
    "id": "S10",
    "title": "close() during the outage",
    "fault": "Blackhole (Drop both ways) with unacknowledged data, then close()",
    "linux": "close() returns at once; the orphan sits in FIN_WAIT1 with the bytes in Send-Q, retransmitting "
             "data and FIN with a doubling RTO, and is destroyed silently per tcp_orphan_retries, no TIME_WAIT.",
    "expect": "close() returns 0 in under a millisecond; the orphan vanishes at the first RTO expiry past "
              "0.2 s x (2^(N+1) - 1) after its first retransmission (about 3.1 s with tcp_orphan_retries=2).",
    "lesson": "close() is no delivery guarantee: the peer may never see the data or the FIN. Confirm at the "
              "application level before closing; the kernel gives up on orphans quietly.",
}

PORT = 6666
ORPHAN_RETRIES = "net.ipv4.tcp_orphan_retries"
# As in S08: kernel timestamps are in ms, and the capture sees the expiries within the clock alignment.
GRAIN = 0.001 + CLOCK_ALIGNMENT + SCHEDULING_SLACK
# Sampler period; its longest measured interval stays under 2 periods on the loaded CI machine.
PERIOD_MS = 10
SAMPLING = 2 * PERIOD_MS / 1000 + SCHEDULING_SLACK
# close() of a socket with unsent data only queues a FIN: it returns within milliseconds.
AT_ONCE = 0.1 + SCHEDULING_SLACK


@pytest.mark.sysctls(client={ORPHAN_RETRIES: 2, "net.ipv4.tcp_early_retrans": 0})
def test_s10_close_during_an_outage_leaves_an_orphan_that_dies_without_time_wait(pair, record_property):
    """S10, seed experiment "网络断开, 客户端调用close" (close() while the network is down).

    close() returns at once; the kernel keeps the socket as an orphan in FIN_WAIT1 with the unacknowledged
    bytes in its Send-Q and keeps retransmitting them (the FIN rides along) with a doubling RTO. With
    tcp_orphan_retries=2 its budget is 0.2 s x (2^3 - 1) = 1.4 s from the first retransmission, checked when
    the timer fires: at the first expiry past it the orphan is destroyed, silently (no RST) and without
    TIME_WAIT. The server heard nothing: its socket stays ESTABLISHED.
    """
    client, server = pair.client, pair.server
    orphan_retries = int(client.sysctl_get([ORPHAN_RETRIES])[ORPHAN_RETRIES])
    handle = acked_connection(client, server, PORT)
    with capture(client, f"tcp port {PORT}") as wire, \
            sample(client, port=PORT, period_ms=PERIOD_MS, fields=True) as states:
        with Drop(server, direction="both", peer=client):
            assert client.send(handle, size=1000).ok
            closed = client.close(handle)
            gone = tenacity.Retrying(stop=tenacity.stop_after_delay(30), wait=tenacity.wait_fixed(0.05),
                                     reraise=True)
            for attempt in gone:
                with attempt:
                    assert client.sockets(port=PORT) == [], "waiting for the orphan to be destroyed"
        on_server = server.sockets(port=PORT, states=["ESTABLISHED"])
    flow = tcp_flow(wire, port=PORT)

    expect_errno(closed, None, between=(0, AT_ONCE))
    orphan = states.sockets[0]
    assert [s.state for s in orphan.spans] == ["ESTABLISHED", "FIN_WAIT1"], states.table()
    fin_wait1 = orphan.spans[1]
    assert closed.t0 - CLOCK_ALIGNMENT <= fin_wait1.entered_by <= closed.t1 + SAMPLING, states.table()
    queued = [e["send_q"] for e in orphan.entries if e["state"] == "FIN_WAIT1"]
    assert queued and min(queued) > 0, f"FIN_WAIT1 with the unacknowledged bytes in Send-Q\n{states.table()}"

    times = flow.data_schedule(0)
    retransmissions = times.times[1:]
    assert len(retransmissions) >= 2, flow
    assert flow.kinds(from_client=True) == ["data", "fin"] + ["fin-retransmission"] * len(retransmissions), (
        f"the data, the FIN, then the data retransmitted with the FIN\n{flow}")
    rto = states.base_rto(before=times.times[0])
    record_property("kernel_wait", giveup_after(rto, orphan_retries))
    expect_schedule(times, [rto * 2 ** i for i in range(len(retransmissions))], "data and FIN", flow=flow)

    budget = retries_budget(orphan_retries)
    first = retransmissions[0]
    assert all(t - first < budget + GRAIN for t in retransmissions), (
        f"a retransmission past the {budget} s budget of tcp_orphan_retries={orphan_retries}\n{flow}")
    expiry_timeout = rto * 2 ** len(retransmissions)
    expiry = retransmissions[-1] + expiry_timeout
    late = wheel_slack(expiry_timeout) + SOFTIRQ_AND_WAKEUP
    assert expiry - first >= budget - GRAIN, f"the orphan died within its budget\n{flow}"
    assert fin_wait1.left_after - CLOCK_ALIGNMENT <= expiry + late and fin_wait1.left_by >= expiry - CLOCK_ALIGNMENT, (
        f"the orphan vanished in ({fin_wait1.left_after:.4f}, {fin_wait1.left_by:.4f}], expected at the expiry "
        f"{expiry:.4f} (up to {late:.3f} s late)\n{states.table()}\n{flow.render(since=times.times[0])}")
    expect_no_packet(flow, after=retransmissions[-1] + GRAIN, from_client=True)
    assert "TIME_WAIT" not in states.states_reached() and not flow.of("rst"), states.table()
    assert len(on_server) == 1, f"the server heard nothing and keeps its connection: {on_server}"
