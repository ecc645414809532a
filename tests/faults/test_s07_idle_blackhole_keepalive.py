"""S07: a connected, idle client with TCP keepalive; the network dies both ways."""

import pytest

from faults import Partition
from harness.capture import capture
from harness.expect import CLOCK_ALIGNMENT, SOFTIRQ_AND_WAKEUP, expect_errno, expect_schedule
from harness.flows import Kind, Times, tcp_flow
from harness.kernel import COMMON_HZ, wheel_slack
from harness.sockets import sample, wait_acked
from harness.timing import SCHEDULING_SLACK

pytestmark = pytest.mark.faults

PORT = 6666
KEEPALIVE_TIME = "net.ipv4.tcp_keepalive_time"
KEEPALIVE_INTVL = "net.ipv4.tcp_keepalive_intvl"
KEEPALIVE_PROBES = "net.ipv4.tcp_keepalive_probes"
SYSCTLS = (KEEPALIVE_TIME, KEEPALIVE_INTVL, KEEPALIVE_PROBES)
# Idle 2 s, then 3 probes 1 s apart: the connection is declared dead 5 s after the last segment received.
IDLE, INTVL, CNT = 2, 1, 3
# The keepalive timer measures idleness in jiffies from the last segment received, so the first probe can
# come up to one jiffy (10 ms at the lowest common HZ) before that segment's capture time + IDLE.
JIFFY = 1 / min(COMMON_HZ)
# Sampler period; its longest measured interval stays under 2 periods on the loaded 2-core machine.
PERIOD_MS = 10
SAMPLING = 2 * PERIOD_MS / 1000 + SCHEDULING_SLACK

SCENARIO = {
    "id": "S07",
    "title": "Idle connection, network dies, with keepalive",
    "fault": "Client and server partitioned both ways while the connection is idle; the client has SO_KEEPALIVE "
             "with idle 2 s, interval 1 s, 3 probes (socket options or sysctls).",
    "linux": "After TCP_KEEPIDLE without receiving anything the client probes (seq = snd_una - 1, no data) every "
             "TCP_KEEPINTVL; after TCP_KEEPCNT unanswered probes it sends a RST and fails the connection. The "
             "options override the net.ipv4.tcp_keepalive_* sysctls.",
    "expect": "Probes at 2, 3, 4 s after the last segment received; ETIMEDOUT from the blocked recv() at "
              "idle + cnt x intvl = 5 s; the server, without keepalive, stays ESTABLISHED.",
    "lesson": "Keepalive detects a dead idle peer only with short per-socket TCP_KEEPIDLE/INTVL/CNT (the default "
              "is 2 h + 9 x 75 s); set them on the socket rather than system-wide; add TCP_USER_TIMEOUT for "
              "connections with data in flight.",
}


@pytest.mark.parametrize("configured_by", [
    "socket-options",
    pytest.param("sysctls", marks=pytest.mark.sysctls(
        client={KEEPALIVE_TIME: IDLE, KEEPALIVE_INTVL: INTVL, KEEPALIVE_PROBES: CNT})),
])
def test_s07_idle_connection_in_a_blackhole_dies_by_keepalive(pair, configured_by, record_property):
    """S07, seed section "TCP异常断开: 心跳检测机制 / 设置TCP属性 SO_KEEPALIVE" (abnormal disconnection:
    heartbeats, or SO_KEEPALIVE with TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT or the kernel's sysctls).

    The idle client has SO_KEEPALIVE, configured either with the TCP_KEEPIDLE/INTVL/CNT socket options (the
    sysctls keep their defaults: 2 h idle) or with the net.ipv4.tcp_keepalive_* sysctls: both give the same
    schedule. 2 s after the last segment it received, the client sends a keepalive probe, then one every
    second; the network is dead both ways, so none is answered, and when the 3rd has gone unanswered for a
    second the kernel sends a RST and fails the connection: the blocked recv() returns ETIMEDOUT 5 s after the
    last segment received. The server, which has no keepalive, hears nothing and stays ESTABLISHED. Prefer the
    options, as the seed warns: the sysctls change every keepalive socket of the host.
    """
    client, server = pair.client, pair.server
    options = {"keepalive": 1}
    if configured_by == "socket-options":
        options |= {"keepidle": IDLE, "keepintvl": INTVL, "keepcnt": CNT}
    listener = server.listen(port=PORT, accept=True)
    assert listener.ok, listener
    conn = client.connect(addr=server.addr, port=PORT, options=options)
    assert conn.ok, conn
    settings = {name: int(value) for name, value in client.sysctl_get(list(SYSCTLS)).items()}
    if configured_by == "socket-options":
        idle, intvl, cnt = (client.getsockopt(conn.handle, name).extra["value"]
                            for name in ("keepidle", "keepintvl", "keepcnt"))
    else:
        idle, intvl, cnt = (settings[name] for name in SYSCTLS)
    assert (idle, intvl, cnt) == (IDLE, INTVL, CNT), f"the keepalive in force, read back: {idle}/{intvl}/{cnt}"
    if configured_by == "socket-options":
        assert settings[KEEPALIVE_TIME] > 10 * (IDLE + CNT * INTVL), f"the sysctls alone would not probe: {settings}"
    with capture(client, f"tcp port {PORT}") as wire, \
            sample(client, port=PORT, period_ms=PERIOD_MS, fields=True) as states:
        assert client.send(conn.handle, size=100).ok
        wait_acked(client, port=PORT)
        # Dropped on arrival, the client's probes still show on its own capture.
        with Partition(client, server, on_arrival=True):
            rec = client.recv(conn.handle, timeout=3 * (idle + cnt * intvl))
            on_server = server.sockets(sport=PORT, states=["ESTABLISHED"])
    record_property("kernel_wait", idle + cnt * intvl)
    flow = tcp_flow(wire, port=PORT)
    last_received = flow.of(from_client=False)[-1].t
    probes = flow.times(Kind.KEEPALIVE, from_client=True)
    resets = flow.of(Kind.RST, from_client=True)
    print(f"S07 {configured_by}: keepalive {idle}/{intvl}/{cnt} (sysctls {settings}); probes at "
          f"{', '.join(f'+{t - last_received:.3f}' for t in probes.times)} s, RST at "
          f"{', '.join(f'+{r.t - last_received:.3f}' for r in resets)} s; {rec} at +{rec.t1 - last_received:.3f} s")

    assert wire.complete, "tcpdump must have written every packet it was given"
    # What the client sends after the last segment it received: the probes, then the RST that gives up.
    after = [s.kind for s in flow.segments if s.t > last_received]
    assert after == [Kind.KEEPALIVE] * cnt + [Kind.RST], f"{cnt} probes then a RST\n{flow.render(since=last_received)}"
    first = probes.times[0] - last_received
    assert idle - JIFFY - CLOCK_ALIGNMENT <= first <= idle + wheel_slack(idle) + SOFTIRQ_AND_WAKEUP, (
        f"first probe {first:.4f} s after the last segment received, expected {idle} s\n{flow}")
    expect_schedule(Times((*probes.times, resets[0].t)), [intvl] * cnt, "keepalive probe", flow=flow)

    # The RST and the error come from the same timer expiry.
    expect_errno(rec, "ETIMEDOUT")
    assert resets[0].t - CLOCK_ALIGNMENT <= rec.t1 <= resets[0].t + SOFTIRQ_AND_WAKEUP, (
        f"recv() failed at +{rec.t1 - last_received:.4f} s, the RST left at +{resets[0].t - last_received:.4f} s")
    (sock,) = states.sockets
    established = sock.spans[-1]
    assert [span.state for span in sock.spans] == ["ESTABLISHED"] and established.end is not None, states.table()
    assert established.left_after - CLOCK_ALIGNMENT <= rec.t1 <= established.left_by + SOFTIRQ_AND_WAKEUP, (
        f"the socket was destroyed when recv() failed\n{states.table()}")
    seen = [e["tcp_info"]["probes"] for e in sock.entries if e.get("tcp_info")]
    assert sorted(set(seen)) == list(range(cnt + 1)), f"tcp_info probes counts each unanswered probe: {seen}"
    idle_entries = [e for e in sock.entries if e["t"] > last_received + SAMPLING and e["state"] == "ESTABLISHED"]
    assert idle_entries and {e["timer_name"] for e in idle_entries} == {"keepalive"}, states.table()
    assert len(on_server) == 1, f"the server heard nothing and keeps its connection: {on_server}"
