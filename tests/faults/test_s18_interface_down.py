"""S18: the client's network interface goes down (ip link set dev eth0 down), before or during a connect and
while it sends; and comes back up."""

from contextlib import ExitStack

import pytest
import tenacity

from faults import Drop, LinkDown, Schedule, Sysctls
from harness.capture import capture
from harness.expect import CLOCK_ALIGNMENT, expect_errno, expect_left, schedule_bounds
from harness.flows import Kind, tcp_flow
from harness.kernel import SYN_LINEAR_TIMEOUTS, SYN_RETRIES, TCP_RTO_MIN, host_syn_timeouts, retries_budget
from harness.sockets import sample, wait_acked
from harness.timing import SCHEDULING_SLACK

pytestmark = pytest.mark.faults

SCENARIO = {
    "id": "S18",
    "title": "Interface down",
    "fault": "The client's eth0 set down (LinkDown): before connect(), during a connect, while sending with nothing "
             "in flight, with data in flight; then, in two variants, up again.",
    "linux": "A down link takes its routes with it. connect() fails at once; an established or connecting socket "
             "is not told: its (re)transmissions fail locally and it times out on its usual schedule. A failed "
             "retransmission stores ENETUNREACH as the soft error; the zero-window (persist) timer that retries "
             "data never sent stores nothing.",
    "expect": "ENETUNREACH at once before connect(); ENETUNREACH at the SYN timeout (7 s with tcp_syn_retries=2) "
              "during a connect; ETIMEDOUT after tcp_retries2 persist probes (15 RTO, 3 s) for data queued while "
              "down; ENETUNREACH at the tcp_retries2 expiry for data in flight. Link up in time: the connect and the "
              "connection survive, traffic resumes at the next retransmission or probe timer.",
    "lesson": "A local link failure looks like a silent network to an open socket: only timeouts (TCP_USER_TIMEOUT, "
              "heartbeats) detect it, and a short flap costs no error, only a pause up to the backed-off timer.",
}

PORT = 6666
RETRIES2 = "net.ipv4.tcp_retries2"
# connect() on a host without a route fails in the route lookup, within microseconds (measured 0.03 ms).
AT_ONCE = 0.05 + SCHEDULING_SLACK
PERIOD_MS = 10
# The retransmission give-up compares kernel timestamps (1 ms) with the budget; captures align within 2 ms.
GRAIN = 0.001 + CLOCK_ALIGNMENT + SCHEDULING_SLACK
SENDS, SEND_INTERVAL, SIZE = 5, 0.1, 1000
# The link goes down after the first SYN (its retransmission comes TCP_TIMEOUT_INIT = 1 s after it), and, in
# the variant where it comes back, up before the second retransmission (3 s). The server's Drop lasts until the
# link is down for sure (a link-down applied late must not let the 1 s retransmission through).
CONNECT_DOWN_AT, CONNECT_UP_AT = 0.5, 1.5
DROP_UNTIL = 1.25
# Waiting for events (not timing assertions).
WAIT = 5


def _established(pair) -> tuple[str, str]:
    """A connection whose warm-up data was acknowledged (so its RTO is measured): client and server handles."""
    client, server = pair.client, pair.server
    listener = server.listen(port=PORT, accept=True)
    conn = client.connect(addr=server.addr, port=PORT)
    assert listener.ok and conn.ok, (listener, conn)
    assert client.send(conn.handle, size=SIZE).ok
    wait_acked(client, port=PORT)
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(WAIT), wait=tenacity.wait_fixed(0.02),
                                     reraise=True):
        with attempt:
            (accepted,) = server.accepted(listener.handle)
    assert server.recv(accepted.handle, size=SIZE, timeout=WAIT).ret == SIZE, "the warm-up data"
    return conn.handle, accepted.handle


def _rto(client) -> float:
    """The client's current RTO in seconds (not backed off: nothing is in flight)."""
    (entry,) = [e for e in client.sockets(dport=PORT) if e["state"] == "ESTABLISHED"]
    assert entry["tcp_info"]["backoff"] == 0, entry
    return entry["tcp_info"]["rto_us"] / 1e6


def _give_up_timeouts(rto: float, budget: float) -> list[float]:
    """The doubling RTO timeouts of an unacknowledged segment up to the expiry that fails the connection: the
    first at least `budget` after the first retransmission (tcp_retries2 is a time budget, checked at expiry)."""
    timeouts = [rto]
    while sum(timeouts) - rto < budget:
        timeouts.append(2 * timeouts[-1])
    return timeouts


def _received(server, handle: str, total: int) -> int:
    """Read on the server until `total` bytes came (or a read timed out); returns how many came."""
    got = 0
    while got < total:
        rec = server.recv(handle, size=1 << 16, timeout=WAIT)
        if not rec.ret:
            break
        got += rec.ret
    return got


def test_s18_connect_while_the_link_is_down_fails_at_once_with_enetunreach(pair, record_property):
    """S18, seed experiment "客户端连接一个网络达不到的主机" (connect to a host the network cannot reach), with
    the client's own interface down (ip link set dev eth0 down).

    A down link loses its routes, so connect() fails in the route lookup, at once, with ENETUNREACH ("Network
    is unreachable"); no SYN leaves, no socket is left behind.
    """
    client, server = pair.client, pair.server
    record_property("kernel_wait", 0)
    assert server.listen(port=PORT, accept=True).ok
    with capture(server, f"tcp port {PORT}") as wire, LinkDown(client) as down:
        link = client.link_show()
        rec = client.connect(addr=server.addr, port=PORT)
        left = client.sockets(port=PORT)
    evidence = f"\n{down.describe()}: {link}\n{wire.table()}"

    assert not link["up"] and link["routes"] == [], "the link is down and has no route" + evidence
    expect_errno(rec, "ENETUNREACH", between=(0, AT_ONCE))
    assert wire.complete and wire.tcp(port=PORT) == [], "no SYN left the client" + evidence
    assert left == [], f"no socket is left behind: {left}"


@pytest.mark.sysctls(client={SYN_RETRIES: 2})
@pytest.mark.parametrize("comes_back", [False, True], ids=["stays-down", "back-up"])
def test_s18_link_down_during_a_connect(pair, comes_back, record_property):
    """S18, seed experiment "客户端连接一个网络达不到的主机" (connect to a host the network cannot reach), with
    the client's own interface going down while its SYN is unanswered.

    The server's firewall leaves the first SYN unanswered, then the client's link goes down. connect() is not
    told: its SYN retransmissions fail locally (none reaches the wire) and it fails at the usual SYN timeout,
    7 s with tcp_syn_retries=2, but with ENETUNREACH, the soft error the failed route lookups stored, instead
    of ETIMEDOUT. If the link comes back before the SYN budget is spent (and nothing drops the SYN any more),
    the next retransmission, 3 s in, completes the handshake: the connect succeeds.
    """
    client, server = pair.client, pair.server
    assert server.listen(port=PORT, accept=True).ok
    link = LinkDown(client)
    schedule = Schedule().add(Drop(server, protocol="tcp", dport=PORT), at=0,
                              duration=DROP_UNTIL if comes_back else None)
    schedule.add(link, at=CONNECT_DOWN_AT, duration=CONNECT_UP_AT - CONNECT_DOWN_AT if comes_back else None)
    with ExitStack() as pinned:
        if client.has_sysctl(SYN_LINEAR_TIMEOUTS):
            pinned.enter_context(Sysctls(client, {SYN_LINEAR_TIMEOUTS: 0}))
        timeouts = host_syn_timeouts(client)
        with capture(server, f"tcp port {PORT}") as wire, sample(client, port=PORT, period_ms=PERIOD_MS) as states:
            with schedule:
                rec = client.connect(addr=server.addr, port=PORT)
    bounds = schedule_bounds(timeouts)
    flow = tcp_flow(wire, port=PORT)
    syns = flow.syn_schedule()
    down, up = link.transitions[0]["t1"], link.transitions[-1]["t1"]
    evidence = f"\n{rec}\n{flow.render(since=rec.t0)}\n{states.table()}"
    assert syns and down < syns.times[0] + timeouts[0], (
        f"the link went down {down - syns.times[0]:.3f} s after the first SYN, not before its retransmission "
        f"({timeouts[0]:g} s): the fault was applied late" + evidence)

    if comes_back:
        record_property("kernel_wait", sum(timeouts[:2]))
        expect_errno(rec, None, between=bounds[1])
        assert len(syns) == 2 and syns.times[0] < down and syns.times[1] > up, (
            "the first SYN, then the one 3 s in: the retransmission while the link was down never left" + evidence)
        assert flow.of(Kind.SYNACK) and flow.of(Kind.SYNACK)[0].t > syns.times[1], evidence
        assert states.sockets[0].states == ["SYN_SENT", "ESTABLISHED"], evidence
    else:
        record_property("kernel_wait", sum(timeouts))
        expect_errno(rec, "ENETUNREACH", between=bounds[-1])
        assert len(syns) == 1 and syns.times[0] < down, (
            "only the first SYN reached the wire" + evidence)
        assert states.sockets[0].states == ["SYN_SENT"], evidence
        expect_left(states, "SYN_SENT", when=rec)


@pytest.mark.sysctls(client={RETRIES2: 3})
@pytest.mark.parametrize("comes_back", [False, True], ids=["stays-down", "back-up"])
def test_s18_link_down_while_sending(pair, comes_back, record_property):
    """S18, seed experiment "客户端已经连接到服务器并在发送东西,这时网络断了" (the network dies while the client
    sends), with the client's own interface down.

    With the link down and nothing in flight, every send() still succeeds: the data is queued, its first
    transmission fails locally, and the kernel retries it on the zero-window probe (persist) timer, from the
    RTO, doubling. Nothing reaches the wire and no soft error is stored, so after tcp_retries2 unanswered
    probes, 15 RTOs (about 3 s) with tcp_retries2=3, the connection fails with ETIMEDOUT. If the link comes
    back before that, the connection survives without any error: the queued data leaves at the next probe
    timer (not when the link comes up) and reaches the server byte for byte, which answers the seed's "如果网络
    恢复那么就会继续正常发送" (when the network recovers, sending goes on normally): yes, after up to one
    backed-off timer.
    """
    client, server = pair.client, pair.server
    retries2 = int(client.sysctl_get([RETRIES2])[RETRIES2])
    handle, server_handle = _established(pair)
    base = max(_rto(client), TCP_RTO_MIN)  # tcp_probe0_base
    timeouts = [base * 2 ** k for k in range(retries2 + 1)]  # probe k after timeouts[k-1], abort after the last
    bounds = schedule_bounds(timeouts)
    # Up between the second and the third probe: the third (7 RTOs after the first send) carries the data.
    link = LinkDown(client)
    schedule = Schedule().add(link, at=0, duration=5 * base if comes_back else None)
    with capture(server, f"tcp port {PORT}") as wire, \
            sample(client, port=PORT, period_ms=PERIOD_MS, fields=True) as states:
        with schedule:
            sends = client.send(handle, size=SIZE, count=SENDS, interval=SEND_INTERVAL)
            if comes_back:
                got = _received(server, server_handle, SENDS * SIZE)
                wait_acked(client, port=PORT)
            else:
                rec = client.recv(handle, timeout=2 * sum(timeouts))
    first = sends[0]
    evidence = f"\n{sends}\n{wire.table(since=first.t0)}\n{states.table()}"
    persist = [e for e in states.entries if e.get("timer_name") == "persist"]

    assert [r.ret for r in sends] == [SIZE] * SENDS, "every send() succeeds: it only queues" + evidence
    assert persist, "the queued data waits on the persist (zero-window probe) timer" + evidence
    down, up = link.transitions[0]["t1"], link.transitions[-1]["t1"]
    out = [p for p in wire.tcp(src=client.addr, port=PORT) if p.length]
    if comes_back:
        record_property("kernel_wait", sum(timeouts[:3]))
        low, high = bounds[2]
        assert got == SENDS * SIZE, f"the server received {got} of {SENDS * SIZE} bytes" + evidence
        assert out and out[0].t > down and first.t0 + low <= out[0].t <= first.t1 + high, (
            f"the data left at +{out[0].t - first.t0:.4f} s, expected at the third probe timer +{low:.4f} .. "
            f"+{high:.4f} s (the link came up at +{up - first.t0:.4f} s)" + evidence)
        assert states.sockets[0].states == ["ESTABLISHED"], evidence
    else:
        record_property("kernel_wait", sum(timeouts))
        low, high = bounds[-1]
        expect_errno(rec, "ETIMEDOUT")
        assert first.t0 + low <= rec.t1 <= first.t1 + high, (
            f"ETIMEDOUT at +{rec.t1 - first.t0:.4f} s after the first send, expected after {retries2} probes: "
            f"+{low:.4f} .. +{high:.4f} s" + evidence)
        assert wire.complete and wire.tcp(port=PORT) == [], "nothing left the client while its link was down" + evidence
        probes = sorted({e["tcp_info"]["probes"] for e in states.entries if e.get("tcp_info")})
        assert probes == list(range(retries2 + 1)), f"probes 0 .. {retries2} counted" + evidence
        assert states.sockets[0].spans[0].state == "ESTABLISHED", evidence
        expect_left(states, "ESTABLISHED", when=rec)
    on_server = server.sockets(sport=PORT, states=["ESTABLISHED"])
    assert len(on_server) == 1, f"the server heard nothing wrong: still ESTABLISHED {on_server}"


@pytest.mark.sysctls(client={RETRIES2: 3, "net.ipv4.tcp_early_retrans": 0})
def test_s18_link_down_with_data_in_flight_fails_with_enetunreach(pair, record_property):
    """S18, seed experiment "客户端已经连接到服务器并在发送东西,这时网络断了" (the network dies while the client
    sends), with the client's own interface going down while its data is unacknowledged.

    The server's firewall drops the client's data, so it is in flight and retransmitted on the RTO timer when
    the client's link goes down. The next retransmissions fail in the route lookup, which stores ENETUNREACH
    as the socket's soft error; the connection fails at the usual tcp_retries2 expiry (the first at least
    0.2 s x (2^4 - 1) = 3 s after the first retransmission), with ENETUNREACH instead of ETIMEDOUT.
    """
    client, server = pair.client, pair.server
    retries2 = int(client.sysctl_get([RETRIES2])[RETRIES2])
    handle, _ = _established(pair)
    rto = _rto(client)
    timeouts = _give_up_timeouts(rto, retries_budget(retries2))
    record_property("kernel_wait", sum(timeouts))
    link = LinkDown(client)
    with capture(server, f"tcp port {PORT}") as wire, \
            Schedule().add(Drop(server, direction="in", peer=client), at=0).add(link, at=2 * rto):
        sent = client.send(handle, size=SIZE)
        rec = client.recv(handle, timeout=2 * sum(timeouts))
    flow = tcp_flow(wire, port=PORT)
    times = flow.data_schedule(0)
    evidence = f"\n{sent}\n{rec}\n{flow.render(since=sent.t0)}"

    assert sent.ret == SIZE, sent
    expect_errno(rec, "ENETUNREACH")
    down = link.transitions[0]["t1"]
    assert len(times) == 2 and times.times[1] < down, "the data and its first retransmission, then nothing" + evidence
    low, high = schedule_bounds(timeouts)[-1]
    assert sent.t0 + low - GRAIN <= rec.t1 <= sent.t1 + high, (
        f"ENETUNREACH at +{rec.t1 - sent.t0:.4f} s, expected at the tcp_retries2 expiry +{low:.4f} .. +{high:.4f} s"
        + evidence)
