"""S08: the network dies while the client is sending."""

import pytest
import tenacity

from faults import Drop
from harness.capture import capture
from harness.expect import CLOCK_ALIGNMENT, SOFTIRQ_AND_WAKEUP, expect_errno, expect_schedule
from harness.flows import tcp_flow
from harness.kernel import retries_budget, wheel_slack
from harness.sockets import sample

pytestmark = pytest.mark.faults

PORT = 6666
RETRIES2 = "net.ipv4.tcp_retries2"
# The give-up rule compares kernel timestamps (tcp_time_stamp, 1 ms) taken at timer expiry with the budget;
# the capture sees the same expiries within the clock alignment.
GRAIN = 0.001 + CLOCK_ALIGNMENT
# Sampler period; its longest measured interval stays under 2 periods on the loaded CI machine.
PERIOD_MS = 10
SAMPLING = 2 * PERIOD_MS / 1000
SENDS, SEND_INTERVAL = 10, 0.1


def wait_until_acked(host, handle_port: int) -> None:
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(5), wait=tenacity.wait_fixed(0.01),
                                     reraise=True):
        with attempt:
            table = host.sockets(port=handle_port)
            assert [s["send_q"] for s in table] == [0], f"waiting for the warm-up data to be acked: {table}"


@pytest.mark.sysctls(client={RETRIES2: 4, "net.ipv4.tcp_early_retrans": 0})
def test_s08_sending_into_a_blackhole_times_out_per_tcp_retries2(pair):
    """S08, seed experiment "网络断开, 客户端在发送数据" (the network dies while the client sends).

    Nothing the client sends reaches the server any more and nothing comes back, yet every send() succeeds:
    it only queues data. The kernel retransmits the first unacknowledged segment with a doubling RTO; with
    tcp_retries2=4 the budget is 0.2 s x (2^5 - 1) = 6.2 s counted from the first retransmission, checked
    only when the retransmission timer fires, so the connection fails (a blocked recv() returns ETIMEDOUT) at
    the first expiry at least 6.2 s after the first retransmission. The server, which heard nothing, still
    holds an ESTABLISHED socket. Tail loss probes are off (tcp_early_retrans=0) so that the first
    retransmission is the RTO's.
    """
    client, server = pair.client, pair.server
    retries2 = int(client.sysctl_get([RETRIES2])[RETRIES2])
    listener = server.listen(port=PORT, accept=True)
    conn = client.connect(addr=server.addr, port=PORT)
    assert listener.ok and conn.ok, (listener, conn)
    handle = conn.handle
    assert client.send(handle, size=1000).ok
    wait_until_acked(client, PORT)
    with capture(client, f"tcp port {PORT}") as wire, \
            sample(client, port=PORT, period_ms=PERIOD_MS, fields=True) as states:
        with Drop(server, direction="both", peer=client):
            sends = client.send(handle, size=1000, count=SENDS, interval=SEND_INTERVAL)
            rec = client.recv(handle, timeout=60)
        on_server = server.sockets(port=PORT, states=["ESTABLISHED"])
    flow = tcp_flow(wire, port=PORT)

    assert [s.ret for s in sends] == [1000] * SENDS, sends
    expect_errno(rec, "ETIMEDOUT")

    times = flow.data_schedule(0)
    retransmissions = times.times[1:]
    assert retransmissions, flow
    rto = next(e["tcp_info"]["rto_us"] for e in reversed(states.to_json())
               if e.get("tcp_info") and e["t"] <= times.times[0] and e["tcp_info"]["backoff"] == 0) / 1e6
    doubling = [rto * 2 ** i for i in range(len(retransmissions))]
    expect_schedule(times, doubling, "first data segment sent into the blackhole", flow=flow)

    budget = retries_budget(retries2)
    first = retransmissions[0]
    too_late = [t - first for t in retransmissions if t - first >= budget + GRAIN]
    assert not too_late, (f"retransmissions {too_late} s after the first: past the {budget} s budget of "
                          f"tcp_retries2={retries2}\n{flow.render(since=times.times[0])}")
    expiry = retransmissions[-1] + rto * 2 ** len(retransmissions)
    slack = wheel_slack(rto * 2 ** len(retransmissions)) + SOFTIRQ_AND_WAKEUP
    assert expiry - first >= budget - GRAIN - slack, f"the give-up expiry is within the budget\n{flow}"
    assert expiry - CLOCK_ALIGNMENT <= rec.t1 <= expiry + slack + CLOCK_ALIGNMENT, (
        f"ETIMEDOUT at +{rec.t1 - times.times[0]:.4f} s, expected at the expiry after the last retransmission "
        f"(+{expiry - times.times[0]:.4f} s, up to {slack:.3f} s late)\n{flow.render(since=times.times[0])}")

    established = states.first("ESTABLISHED")
    assert established is not None and established.end is not None, states.table()
    assert abs(established.end - rec.t1) <= SAMPLING, states.table()
    assert len(on_server) == 1, f"the server heard nothing and keeps its connection: {on_server}"
