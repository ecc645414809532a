"""S09: the seed's question - does a non-blocking socket or SO_SNDTIMEO make a sender notice a dead network?"""

import pytest

from faults import Drop
from harness.capture import capture
from harness.expect import CLOCK_ALIGNMENT, SOFTIRQ_AND_WAKEUP, expect_errno, expect_left, expect_schedule
from harness.flows import tcp_flow
from harness.kernel import COMMON_HZ, TCP_RTO_MIN, giveup_after, retries_budget, wheel_slack
from harness.sockets import acked_connection, sample
from harness.timing import SCHEDULING_SLACK

pytestmark = pytest.mark.faults

SCENARIO = {
    "id": "S09",
    "title": "Does non-blocking I/O or SO_SNDTIMEO help a sender notice a dead network?",
    "fault": "Blackhole both ways (Drop) while the client sends: non-blocking, with SO_SNDTIMEO, with "
             "TCP_USER_TIMEOUT.",
    "linux": "send() only queues data: a non-blocking send fills the send buffer and then returns EAGAIN; SO_SNDTIMEO "
             "only bounds how long a send waits for buffer space. The connection fails when the retransmissions "
             "give up: after the tcp_retries2 budget, or TCP_USER_TIMEOUT after the first retransmission.",
    "expect": "EAGAIN at once once the buffer is full, EAGAIN after SO_SNDTIMEO on a full buffer, both with the "
              "connection ESTABLISHED; ETIMEDOUT at the tcp_retries2 expiry (3 s with 2), or TCP_USER_TIMEOUT "
              "(1 s) after the first retransmission.",
    "lesson": "Neither O_NONBLOCK nor SO_SNDTIMEO detects a dead peer: set TCP_USER_TIMEOUT to bound how long "
              "data may stay unacknowledged, and use application heartbeats.",
}

PORT = 6666
RETRIES2 = "net.ipv4.tcp_retries2"
EARLY_RETRANS = "net.ipv4.tcp_early_retrans"
# The give-up rules compare kernel timestamps (tcp_time_stamp, 1 ms) taken at timer expiry with the budget;
# the capture sees the same expiries within the clock alignment.
GRAIN = 0.001 + CLOCK_ALIGNMENT + SCHEDULING_SLACK
# A timeout of n jiffies counts from inside the current jiffy, so it can end up to one jiffy early: at most
# 10 ms over the common HZ values (100 .. 1000).
TICK = 1 / min(COMMON_HZ)
# Sampler period.
PERIOD_MS = 10
# A send that finds room in the buffer, or fails at once, returns within microseconds (measured: 0.03-0.2 ms);
# 0.1 s leaves room for a loaded machine and is still far below every timer in these tests.
AT_ONCE = 0.1 + SCHEDULING_SLACK
CHUNK = 4096
# How long the application waits for the connection to fail (an event, not a timing assertion).
GONE_WITHIN = 30
SNDTIMEO = 1.0
USER_TIMEOUT_MS = 1000


@pytest.mark.sysctls(client={RETRIES2: 2, EARLY_RETRANS: 0})
def test_s09_nonblocking_send_fills_the_buffer_then_eagain_until_tcp_retries2_gives_up(pair, record_property):
    """S09, seed experiment "将文件描述符设为非阻塞" (make the descriptor non-blocking: does it help?).

    No. Into a blackhole a non-blocking send() succeeds until the send buffer is full and then fails with
    EAGAIN - at once, with the connection still ESTABLISHED and every accepted byte unacknowledged: the same
    EAGAIN a slow reader causes, it says nothing about the peer. The kernel meanwhile retransmits with a
    doubling RTO; only when tcp_retries2's budget (0.2 s x (2^3 - 1) = 1.4 s with tcp_retries2=2, checked at
    timer expiry: about 3.1 s in) is spent does the connection fail: select() for writability wakes up then,
    the next non-blocking send() returns ETIMEDOUT and the one after it EPIPE. Tail loss probes are off so
    that the first retransmission is the RTO's.
    """
    client, server = pair.client, pair.server
    retries2 = int(client.sysctl_get([RETRIES2])[RETRIES2])
    budget = retries_budget(retries2)
    record_property("kernel_wait", giveup_after(TCP_RTO_MIN, retries2))
    handle = acked_connection(pair.client, pair.server, PORT)
    with capture(client, f"tcp port {PORT}") as wire, \
            sample(client, port=PORT, period_ms=PERIOD_MS, fields=True) as states:
        with Drop(server, direction="both", peer=client):
            loop = client.send(handle, size=CHUNK, count=None, nonblocking=True, duration=GONE_WITHIN)
            full = client.sockets(port=PORT)
            waited = client.select(handle, write=True, timeout=GONE_WITHIN)
            failed = client.send(handle, size=CHUNK, nonblocking=True)
            closed = client.send(handle, size=CHUNK, nonblocking=True)
        on_server = server.sockets(port=PORT, states=["ESTABLISHED"])
    flow = tcp_flow(wire, port=PORT)

    assert loop.stopped == "errno" and len(loop) > 1, loop
    expect_errno(loop[-1], "EAGAIN", between=(0, AT_ONCE))
    assert all(r.ok and r.ret > 0 and r.elapsed < AT_ONCE for r in loop[:-1]), list(loop)
    assert len(full) == 1 and full[0]["state"] == "ESTABLISHED", f"EAGAIN is no connection error: {full}"
    assert full[0]["send_q"] == loop.total, f"every byte send() accepted is still unacknowledged: {full}"

    times = flow.data_schedule(0)
    retransmissions = times.times[1:]
    assert retransmissions, flow
    rto = states.base_rto(before=times.times[0])
    expect_schedule(times, [rto * 2 ** i for i in range(len(retransmissions))], "first data segment", flow=flow)
    first = retransmissions[0]
    assert all(t - first < budget + GRAIN for t in retransmissions), (
        f"a retransmission past the {budget} s budget of tcp_retries2={retries2}\n{flow}")
    expiry = retransmissions[-1] + rto * 2 ** len(retransmissions)
    late = wheel_slack(rto * 2 ** len(retransmissions)) + SOFTIRQ_AND_WAKEUP
    assert expiry - first >= budget - GRAIN, f"the give-up expiry is within the budget\n{flow}"
    assert waited.extra["writable"], f"select() should wake up when the connection fails: {waited}"
    assert expiry - CLOCK_ALIGNMENT <= waited.t1 <= expiry + late + CLOCK_ALIGNMENT, (
        f"select() woke up at +{waited.t1 - times.times[0]:.4f} s, expected at the expiry after the last "
        f"retransmission (+{expiry - times.times[0]:.4f} s, up to {late:.3f} s late)\n"
        f"{flow.render(since=times.times[0])}")
    expect_left(states, "ESTABLISHED", when=waited)
    assert states.states_reached() == {"ESTABLISHED"}, states.table()

    expect_errno(failed, "ETIMEDOUT", between=(0, AT_ONCE))
    expect_errno(closed, "EPIPE", between=(0, AT_ONCE))
    assert len(on_server) == 1, f"the server heard nothing and keeps its connection: {on_server}"


@pytest.mark.sysctls(client={RETRIES2: 15, EARLY_RETRANS: 0})
def test_s09_sndtimeo_bounds_a_blocked_send_not_the_wait_for_an_ack(pair, record_property):
    """S09, seed experiment "加上套接字选项sendtimeout" (add SO_SNDTIMEO: does it help?).

    No. SO_SNDTIMEO bounds only how long a send() blocks for room in the send buffer, not how long data may
    wait for its ACK: into a blackhole a small send() returns at once; one larger than the free buffer blocks
    for SO_SNDTIMEO (1 s) and returns the bytes it queued; the next blocks 1 s again and fails with EAGAIN.
    After both expiries the connection is still ESTABLISHED with no pending error, every byte unacknowledged,
    and the kernel keeps retransmitting (tcp_retries2=15, the default: it would try for 924.6 s).
    """
    client, server = pair.client, pair.server
    handle = acked_connection(pair.client, pair.server, PORT, {"sndtimeo": SNDTIMEO})
    sndtimeo = client.getsockopt(handle, "sndtimeo").extra["value"]
    record_property("kernel_wait", 2 * sndtimeo)
    blocked = (sndtimeo - TICK - CLOCK_ALIGNMENT, sndtimeo + wheel_slack(sndtimeo) + SOFTIRQ_AND_WAKEUP)
    with capture(client, f"tcp port {PORT}") as wire, \
            sample(client, port=PORT, period_ms=PERIOD_MS, fields=True) as states:
        with Drop(server, direction="both", peer=client):
            queued = client.send(handle, size=1000)
            partial = client.send(handle, size=4_000_000)
            refused = client.send(handle, size=1000)
            after = client.sockets(port=PORT)
            pending = client.so_error(handle)
    flow = tcp_flow(wire, port=PORT)

    expect_errno(queued, None, between=(0, AT_ONCE))
    assert queued.ret == 1000, queued
    expect_errno(partial, None, between=blocked)
    assert 0 < partial.ret < 4_000_000, f"SO_SNDTIMEO expired with part of the data queued: {partial}"
    expect_errno(refused, "EAGAIN", between=blocked)

    assert len(after) == 1 and after[0]["state"] == "ESTABLISHED", after
    assert after[0]["send_q"] == queued.ret + partial.ret, f"nothing was acknowledged: {after}"
    assert pending.extra["value"] == 0, f"no error is pending on the socket: {pending}"
    assert states.states_reached() == {"ESTABLISHED"}, states.table()

    times = flow.data_schedule(0)
    retransmissions = times.times[1:]
    assert len(retransmissions) >= 2, flow
    rto = states.base_rto(before=times.times[0])
    expect_schedule(times, [rto * 2 ** i for i in range(len(retransmissions))], "first data segment", flow=flow)
    assert any(partial.t0 <= t <= refused.t1 for t in retransmissions), (
        f"the kernel retransmits while send() waits\n{flow.render(since=times.times[0])}")
    assert not flow.of("fin", "rst", from_client=True), f"the expiries did nothing to the connection\n{flow}"


@pytest.mark.sysctls(client={RETRIES2: 15, EARLY_RETRANS: 0})
def test_s09_tcp_user_timeout_bounds_the_wait_for_an_ack(pair, record_property):
    """S09, the answer to the seed's question: TCP_USER_TIMEOUT is the per-socket bound on unacknowledged data.

    With TCP_USER_TIMEOUT=1000 ms, data sent into a blackhole fails the connection 1 s after its first
    retransmission (the retransmission timer is clamped to fire right then), whatever tcp_retries2 says
    (15, the default, would keep retransmitting for 924.6 s): the blocked recv() gets ETIMEDOUT. The
    retransmissions before that follow the doubling RTO; the server heard nothing and stays ESTABLISHED.
    """
    client, server = pair.client, pair.server
    handle = acked_connection(pair.client, pair.server, PORT, {"user_timeout": USER_TIMEOUT_MS})
    user_timeout = client.getsockopt(handle, "user_timeout").extra["value"] / 1000
    record_property("kernel_wait", TCP_RTO_MIN + user_timeout)
    with capture(client, f"tcp port {PORT}") as wire, \
            sample(client, port=PORT, period_ms=PERIOD_MS, fields=True) as states:
        with Drop(server, direction="both", peer=client):
            sent = client.send(handle, size=1000)
            rec = client.recv(handle, timeout=GONE_WITHIN)
        on_server = server.sockets(port=PORT, states=["ESTABLISHED"])
    flow = tcp_flow(wire, port=PORT)

    expect_errno(sent, None, between=(0, AT_ONCE))
    expect_errno(rec, "ETIMEDOUT")
    times = flow.data_schedule(0)
    retransmissions = times.times[1:]
    assert retransmissions, flow
    rto = states.base_rto(before=times.times[0])
    expect_schedule(times, [rto * 2 ** i for i in range(len(retransmissions))], "first data segment", flow=flow)
    deadline = retransmissions[0] + user_timeout
    assert all(t < deadline + GRAIN for t in retransmissions), (
        f"a retransmission after TCP_USER_TIMEOUT expired\n{flow.render(since=times.times[0])}")
    assert retransmissions[-1] + rto * 2 ** len(retransmissions) > deadline, (
        f"the doubling timer would have fired again before the deadline\n{flow.render(since=times.times[0])}")
    late = wheel_slack(deadline - retransmissions[-1]) + SOFTIRQ_AND_WAKEUP
    assert deadline - GRAIN <= rec.t1 <= deadline + late + CLOCK_ALIGNMENT, (
        f"ETIMEDOUT {rec.t1 - retransmissions[0]:.4f} s after the first retransmission, expected "
        f"TCP_USER_TIMEOUT={user_timeout:g} s (up to {late:.3f} s late)\n{flow.render(since=times.times[0])}")

    expect_left(states, "ESTABLISHED", when=rec)
    assert len(on_server) == 1, f"the server heard nothing and keeps its connection: {on_server}"
