"""S08: the network dies while the client is sending."""

import pytest

from faults import Drop, Reject
from harness.capture import capture
from harness.expect import CLOCK_ALIGNMENT, SOFTIRQ_AND_WAKEUP, expect_errno, expect_left, expect_schedule
from harness.flows import tcp_flow
from harness.kernel import COMMON_HZ, TCP_RTO_MIN, giveup_after, retries_budget, wheel_slack
from harness.sockets import acked_connection, sample
from harness.timing import SCHEDULING_SLACK

pytestmark = pytest.mark.faults

SCENARIO = {
    "id": "S08",
    "title": "The network dies while the client is sending",
    "fault": "Drop of everything between client and server while a send loop runs (a blackhole)",
    "linux": "send() keeps succeeding (it only queues); the first unacknowledged segment is retransmitted with a "
             "doubling RTO until the tcp_retries2 time budget, counted from the first retransmission, is spent.",
    "expect": "ETIMEDOUT on the next call at the first RTO expiry past 0.2 s x (2^(N+1) - 1) after the first "
              "retransmission: about 6.3 s with tcp_retries2=3, 924.6 s budget (15.4 min) with the default 15. "
              "With ICMP host-unreachable from the path: EHOSTUNREACH about one RTO after the budget, the RTO "
              "not doubling (each ICMP undoes a backoff step, RFC 6069).",
    "lesson": "A successful send() proves nothing about delivery: bound the wait with TCP_USER_TIMEOUT or an "
              "application-level acknowledgement or heartbeat, not with tcp_retries2's defaults.",
}

PORT = 6666
RETRIES2 = "net.ipv4.tcp_retries2"
# The give-up rule compares kernel timestamps (tcp_time_stamp, 1 ms) taken at timer expiry with the budget;
# the capture sees the same expiries within the clock alignment.
GRAIN = 0.001 + CLOCK_ALIGNMENT + SCHEDULING_SLACK
# Sampler period.
PERIOD_MS = 10
SENDS, SEND_INTERVAL = 10, 0.1
# A timer re-armed for "RTO minus the time since the retransmission" (the RFC 6069 revert) counts whole jiffies,
# the elapsed part rounded up: it can fire up to one jiffy early, at most 10 ms over the common HZ values.
TICK = 1 / min(COMMON_HZ)


@pytest.mark.sysctls(client={RETRIES2: 3, "net.ipv4.tcp_early_retrans": 0})
def test_s08_sending_into_a_blackhole_times_out_per_tcp_retries2(pair, record_property):
    """S08, seed experiment "网络断开, 客户端在发送数据" (the network dies while the client sends).

    Nothing the client sends reaches the server any more and nothing comes back, yet every send() succeeds:
    it only queues data. The kernel retransmits the first unacknowledged segment with a doubling RTO; with
    tcp_retries2=3 the budget is 0.2 s x (2^4 - 1) = 3.0 s counted from the first retransmission, checked
    only when the retransmission timer fires, so the connection fails (a blocked recv() returns ETIMEDOUT) at
    the first expiry at least 3 s after the first retransmission: with an RTO of about 0.2 s the fourth
    retransmission comes 2.9 s after the first and the error one doubled RTO later, about 6.3 s in, not 3 s.
    The server, which heard nothing, still holds an ESTABLISHED socket. Tail loss probes are off
    (tcp_early_retrans=0) so that the first retransmission is the RTO's.
    """
    client, server = pair.client, pair.server
    retries2 = int(client.sysctl_get([RETRIES2])[RETRIES2])
    handle = acked_connection(client, server, PORT)
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
    rto = states.base_rto(before=times.times[0])
    record_property("kernel_wait", giveup_after(rto, retries2))
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

    expect_left(states, "ESTABLISHED", when=rec)
    assert len(on_server) == 1, f"the server heard nothing and keeps its connection: {on_server}"


@pytest.mark.sysctls(client={RETRIES2: 3, "net.ipv4.tcp_early_retrans": 0})
def test_s08_with_icmp_host_unreachable_from_the_path_fails_with_ehostunreach(pair, record_property):
    """S08 variant, seed experiment "网络断开, 客户端在发送数据" with an ICMP error from the path: "send 返回-1,
    errno = EHOSTUNREACH" (the sender gets "host unreachable" instead of a timeout).

    The server's firewall answers every packet from the client with ICMP host-unreachable. On an ESTABLISHED
    connection that is a soft error: the kernel stores it and keeps retransmitting, and every send() still
    succeeds. Each ICMP answering a retransmission of the head segment also undoes one RTO backoff (RFC 6069),
    so the retransmissions keep the base RTO instead of doubling. The tcp_retries2 budget (0.2 s x (2^4 - 1) =
    3.0 s with tcp_retries2=3, from the first retransmission) still ends the connection, at the first expiry
    past it, and the blocked recv() gets the stored EHOSTUNREACH instead of ETIMEDOUT.
    """
    client, server = pair.client, pair.server
    retries2 = int(client.sysctl_get([RETRIES2])[RETRIES2])
    budget = retries_budget(retries2)
    # Nominally a retransmission every TCP_RTO_MIN; the first expiry at least `budget` after the first one fails.
    steps = 1
    while steps * TCP_RTO_MIN < budget:
        steps += 1
    record_property("kernel_wait", (steps + 1) * TCP_RTO_MIN)
    handle = acked_connection(client, server, PORT)
    with capture(client, f"tcp port {PORT} or icmp") as wire, \
            sample(client, port=PORT, period_ms=PERIOD_MS, fields=True) as states:
        with Reject(server, "icmp-host-unreachable", direction="in", peer=client):
            sends = client.send(handle, size=1000, count=SENDS, interval=SEND_INTERVAL)
            rec = client.recv(handle, timeout=60)
        on_server = server.sockets(port=PORT, states=["ESTABLISHED"])
    flow = tcp_flow(wire, port=PORT)

    assert [s.ret for s in sends] == [1000] * SENDS, sends
    expect_errno(rec, "EHOSTUNREACH")

    times = flow.data_schedule(0)
    retransmissions = times.times[1:]
    assert len(retransmissions) >= 2, flow
    head = flow.of("data", from_client=True)[0].seq
    answers = [e for e in flow.icmp if e.quotes_client and e.seq == head]
    assert [e.name for e in answers] == ["host-unreachable"] * len(times), (
        f"an ICMP host-unreachable for each transmission of the head segment\n{flow.render(since=times.times[0])}")
    rto = states.base_rto(before=times.times[0])
    step = (rto - TICK - CLOCK_ALIGNMENT, rto + wheel_slack(rto) + SOFTIRQ_AND_WAKEUP + CLOCK_ALIGNMENT)
    doubled = [i for i in times.intervals if not step[0] <= i <= step[1]]
    assert not doubled, (f"intervals {doubled} outside {step[0]:.4f} .. {step[1]:.4f} s: the ICMP errors should "
                         f"keep the RTO at its base {rto:.3f} s\n{flow.render(since=times.times[0])}")

    first = retransmissions[0]
    assert retransmissions[-1] - first < budget + GRAIN, (
        f"a retransmission past the {budget} s budget of tcp_retries2={retries2}\n{flow}")
    assert retransmissions[-1] + step[1] - first >= budget - GRAIN, (
        f"the connection failed an RTO or more past the budget\n{flow.render(since=times.times[0])}")
    assert retransmissions[-1] + step[0] <= rec.t1 <= retransmissions[-1] + step[1], (
        f"EHOSTUNREACH at +{rec.t1 - times.times[0]:.4f} s, expected one RTO after the last retransmission "
        f"(+{retransmissions[-1] + rto - times.times[0]:.4f} s)\n{flow.render(since=times.times[0])}")

    expect_left(states, "ESTABLISHED", when=rec)
    assert len(on_server) == 1, f"the server's kernel rejected everything and keeps its connection: {on_server}"
