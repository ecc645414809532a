"""S06: a connected, idle client; the network dies both ways; no keepalive."""

import pytest
import tenacity

from faults import Partition
from harness.capture import capture
from harness.expect import SOFTIRQ_AND_WAKEUP, expect_errno
from harness.kernel import wheel_slack
from harness.sockets import sample, wait_acked

pytestmark = pytest.mark.faults

PORT = 6666
KEEPALIVE_TIME = "net.ipv4.tcp_keepalive_time"
KEEPALIVE_INTVL = "net.ipv4.tcp_keepalive_intvl"
KEEPALIVE_PROBES = "net.ipv4.tcp_keepalive_probes"
# The keepalive sysctls are shrunk on both hosts: a socket with SO_KEEPALIVE would be probed after 1 s and
# dead after 3 s. These sockets do not have it, so the sysctls must change nothing.
SHORT_KEEPALIVE = {KEEPALIVE_TIME: 1, KEEPALIVE_INTVL: 1, KEEPALIVE_PROBES: 2}
# Sampler period: every state, queue or tcp_info change would be recorded within it.
SAMPLE_MS = 10

SCENARIO = {
    "id": "S06",
    "title": "Idle connection, network dies, no keepalive",
    "fault": "Client and server partitioned both ways while the connection is idle; no SO_KEEPALIVE.",
    "linux": "Nothing: no timer is armed on an idle socket without SO_KEEPALIVE, so no packet is sent and both "
             "sides stay ESTABLISHED indefinitely; the tcp_keepalive_* sysctls do not apply to it.",
    "expect": "A blocked recv() only returns by the application's own timeout (EAGAIN with SO_RCVTIMEO); no "
              "packet on the wire; ESTABLISHED on both hosts for the whole outage.",
    "lesson": "An idle TCP connection never detects a dead peer or path by itself: enable SO_KEEPALIVE with "
              "short TCP_KEEPIDLE/INTVL/CNT, or send application heartbeats with a read timeout.",
}


@pytest.mark.sysctls(client=SHORT_KEEPALIVE, server=SHORT_KEEPALIVE)
def test_s06_idle_connection_in_a_blackhole_without_keepalive_never_notices(pair, record_property):
    """S06, seed experiment "客户端已经连接到服务器没有发送数据, 这时网络突然断了" (the client is connected
    but sends nothing when the network dies, or the server loses power).

    Neither side is sending, neither has SO_KEEPALIVE, so neither kernel has a timer armed: when the network
    dies both ways nothing happens at all. No packet leaves either host, both sockets stay ESTABLISHED, and
    the client's blocked recv() returns only because its own SO_RCVTIMEO expires (EAGAIN). The keepalive
    sysctls are shrunk (probe after 1 s, dead after 3 s) and change nothing: they only apply to sockets with
    SO_KEEPALIVE. The seed's conclusion holds: this is why keepalive or heartbeats exist.
    """
    client, server = pair.client, pair.server
    settings = {name: int(value) for name, value in client.sysctl_get(list(SHORT_KEEPALIVE)).items()}
    # Watched past the point a keepalive connection would have died, by the timer wheel's slack on each of
    # its timers and a wake-up.
    would_die = settings[KEEPALIVE_TIME] + settings[KEEPALIVE_PROBES] * settings[KEEPALIVE_INTVL]
    observe = would_die + wheel_slack(settings[KEEPALIVE_TIME]) + settings[KEEPALIVE_PROBES] * wheel_slack(
        settings[KEEPALIVE_INTVL]) + SOFTIRQ_AND_WAKEUP
    record_property("kernel_wait", observe)

    listener = server.listen(port=PORT, accept=True)
    conn = client.connect(addr=server.addr, port=PORT)
    assert listener.ok and conn.ok, (listener, conn)
    assert client.send(conn.handle, size=100).ok
    wait_acked(client, port=PORT)
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(5), wait=tenacity.wait_fixed(0.02), reraise=True):
        with attempt:
            (accepted,) = server.accepted(listener.handle)
    assert server.recv(accepted.handle, size=100, timeout=5).ret == 100
    keepalive = {"client": client.getsockopt(conn.handle, "keepalive").extra["value"],
                 "server": server.getsockopt(accepted.handle, "keepalive").extra["value"]}
    assert keepalive == {"client": 0, "server": 0}, f"no SO_KEEPALIVE on either side: {keepalive}"

    with capture(client, f"tcp port {PORT}") as at_client, capture(server, f"tcp port {PORT}") as at_server, \
            sample(client, port=PORT, period_ms=SAMPLE_MS, fields=True) as states, \
            sample(server, sport=PORT, states=["ESTABLISHED"], period_ms=SAMPLE_MS, fields=True) as server_states:
        # Dropped on arrival, anything a host sent would still show on its own capture.
        with Partition(client, server, on_arrival=True):
            rec = client.recv(conn.handle, timeout=observe)
            during = {"client": client.sockets(port=PORT),
                      "server": server.sockets(sport=PORT, states=["ESTABLISHED"])}
    print(f"S06: {rec}, {len(at_client)} + {len(at_server)} packets, states "
          f"{[s.states for s in states.sockets]} / {[s.states for s in server_states.sockets]}")

    # SO_RCVTIMEO is a timer-wheel timeout: late by its slack and the wake-up, never early.
    expect_errno(rec, "EAGAIN", between=(observe, observe + wheel_slack(observe) + SOFTIRQ_AND_WAKEUP))
    assert at_client.complete and at_server.complete
    assert list(at_client) == [] and list(at_server) == [], (
        f"no packet at all: no probe, no retransmission\n{at_client.table()}\n{at_server.table()}")
    for host, history in (("client", states), ("server", server_states)):
        (sock,) = history.sockets
        assert [(span.state, span.end) for span in sock.spans] == [("ESTABLISHED", None)], history.table()
        assert len(sock.entries) == 1, f"no queue, timer or tcp_info change on the {host}\n{history.table()}"
        (entry,) = during[host]
        assert (entry["state"], entry["timer_name"], entry["tcp_info"]["probes"]) == ("ESTABLISHED", "off", 0), (
            f"no timer armed on the {host}'s idle socket: {entry}")

    # Healed, the connection simply carries on: nothing was lost because nothing was sent.
    assert client.send(conn.handle, data=b"still here").ok
    assert server.recv(accepted.handle, size=100, timeout=5).data == b"still here"
