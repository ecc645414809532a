"""S21: an application heartbeat finds a dead peer in seconds while TCP still says ESTABLISHED."""

import time

import pytest

from faults import Drop
from harness.capture import capture
from harness.expect import SOFTIRQ_AND_WAKEUP, expect_schedule
from harness.flows import Kind, tcp_flow
from harness.kernel import COMMON_HZ, retries_budget, wheel_slack
from harness.records import SyscallRecord
from harness.sockets import sample, wait_for
from harness.timing import SCHEDULING_SLACK

pytestmark = pytest.mark.faults

SCENARIO = {
    "id": "S21",
    "title": "Application heartbeat",
    "fault": "Blackhole both ways (DROP on the server) under a connection whose client sends a heartbeat every "
             "second and waits for its echo.",
    "linux": "TCP only retransmits the unanswered heartbeats with a doubling RTO; the connection stays "
             "ESTABLISHED until the tcp_retries2 budget runs out (924.6 s with the default 15).",
    "expect": "The application declares the peer dead after 3 missed heartbeats, 3 s after the first unanswered "
              "one (each recv() ends with EAGAIN at its deadline); both sockets are ESTABLISHED at that moment.",
    "lesson": "Detect dead peers in the application: a heartbeat with a deadline (or TCP_USER_TIMEOUT / keepalive "
              "tuned small) bounds the detection time; TCP's own timeout is a quarter of an hour.",
}

PORT = 6666
RETRIES2 = "net.ipv4.tcp_retries2"
INTERVAL = 1.0
MISSES = 3
HEALTHY = 2
PING = b"ping"
# The server's echo: every byte back as it comes.
ECHO = """
import socket, sys
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(sys.argv[1])))
listener.listen(1)
conn, _ = listener.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while data := conn.recv(64):
    conn.sendall(data)
"""
# SO_RCVTIMEO counts whole jiffies from inside the current one, so a recv can time out up to one jiffy early:
# at most 10 ms over the common HZ values.
TICK = 1 / min(COMMON_HZ)
# A request reaches the agent within 5 ms (measured p99 4 ms, max 5 ms with load average 3 on the 2-core
# machine); each recv's deadline starts that much later than planned. 50 ms covers the busiest runs.
RPC = 0.05 + SCHEDULING_SLACK
PERIOD_MS = 10


def _heartbeat(client, handle: str, blackhole: Drop) -> list[tuple[float, SyscallRecord, SyscallRecord]]:
    """The application: a heartbeat every INTERVAL, its echo awaited until the next one is due; MISSES missed
    in a row mean the peer is dead. The network dies just before heartbeat number HEALTHY. Returns (planned
    time, send, recv) per heartbeat."""
    beats: list[tuple[float, SyscallRecord, SyscallRecord]] = []
    missed, start = 0, time.monotonic()
    while missed < MISSES:
        planned = start + len(beats) * INTERVAL
        time.sleep(max(0.0, planned - time.monotonic()))  # the application's heartbeat period
        if len(beats) == HEALTHY:
            blackhole.apply()
        ping = client.send(handle, data=PING)
        pong = client.recv(handle, size=len(PING), timeout=max(TICK, planned + INTERVAL - time.monotonic()))
        assert ping.ok and (pong.data == PING or pong.errname == "EAGAIN"), (ping, pong)
        missed = 0 if pong.ok else missed + 1
        beats.append((planned, ping, pong))
    return beats


@pytest.mark.sysctls(client={RETRIES2: 15, "net.ipv4.tcp_early_retrans": 0})
def test_s21_heartbeat_detects_the_dead_peer_in_three_seconds_while_tcp_is_established(pair, record_property):
    """S21, seed experiment "心跳检测机制" (the heartbeat: "定时发送Heart-Beat包...检测对方是否实时在线", send a
    heartbeat periodically to check that the peer is alive; the seed's "2 min without an answer = dead").

    The client sends a heartbeat every second and waits for its echo until the next one is due; three missed
    in a row mean the peer is dead. The network dies (DROP both ways on the server) just before the third
    heartbeat: the application declares the peer dead three intervals later, at the deadline of the third
    unanswered heartbeat, without any socket error (each recv() ends with EAGAIN). At that moment TCP is only
    retransmitting the heartbeats with a doubling RTO: both sockets are ESTABLISHED, and with tcp_retries2=15
    (the default, pinned) TCP would report ETIMEDOUT only after 924.6 s.
    """
    client, server = pair.client, pair.server
    record_property("kernel_wait", MISSES * INTERVAL)
    tcp_budget = retries_budget(int(client.sysctl_get([RETRIES2])[RETRIES2]))
    server.spawn(["python3", "-c", ECHO, str(PORT)], name="echo")
    wait_for(server, "LISTEN", sport=PORT)
    conn = client.connect(addr=server.addr, port=PORT, options={"nodelay": 1})
    assert conn.ok, conn
    blackhole = Drop(server, direction="both", peer=client)
    with capture(client, f"tcp port {PORT}") as wire, \
            sample(client, port=PORT, period_ms=PERIOD_MS, fields=True) as states, \
            sample(server, sport=PORT, states=["ESTABLISHED"], period_ms=PERIOD_MS) as server_states:
        try:
            beats = _heartbeat(client, conn.handle, blackhole)
            dead_at = beats[-1][2].t1
            seen_by_tcp = client.sockets(port=PORT), server.sockets(sport=PORT, states=["ESTABLISHED"])
        finally:
            blackhole.heal()
    flow = tcp_flow(wire, port=PORT)
    answered = [pong.ok for _, _, pong in beats]
    first_missed, first_ping = beats[HEALTHY][0], beats[HEALTHY][1]
    evidence = "\n" + "\n".join(f"{planned:.4f} {ping} / {pong}" for planned, ping, pong in beats)
    evidence += f"\n{flow.render()}\n{states.table()}"
    detection = dead_at - first_missed
    record_property("detection_s", round(detection, 4))
    print(f"S21: dead peer detected {detection:.3f} s after the first unanswered heartbeat; TCP's own timeout "
          f"would be {tcp_budget:.1f} s")

    assert answered == [True] * HEALTHY + [False] * MISSES, "two echoed heartbeats, then three missed" + evidence
    assert blackhole.applied_at <= first_ping.t0, "the network died before the first unanswered heartbeat" + evidence
    assert [pong.errname for _, _, pong in beats[HEALTHY:]] == ["EAGAIN"] * MISSES, (
        "a missed heartbeat is a recv() deadline (EAGAIN), not a socket error" + evidence)
    low, high = MISSES * INTERVAL - TICK, MISSES * INTERVAL + RPC + wheel_slack(INTERVAL) + SOFTIRQ_AND_WAKEUP
    assert low <= detection <= high, (
        f"dead peer declared {detection:.4f} s after the first unanswered heartbeat, expected {low:.4f} .. "
        f"{high:.4f} s" + evidence)
    assert detection < tcp_budget, evidence

    client_view, server_view = seen_by_tcp
    (established,) = [e for e in client_view if e["state"] == "ESTABLISHED"]
    assert established["tcp_info"]["backoff"] > 0 and len(server_view) == 1, (
        f"when the application gives up, TCP is retransmitting and both sides are ESTABLISHED: {seen_by_tcp}")
    assert [sock.states for sock in states.sockets] == [["ESTABLISHED"]], evidence
    assert [sock.states for sock in server_states.sockets] == [["ESTABLISHED"]], server_states.table()
    # What TCP does meanwhile: the first unanswered heartbeat retransmitted with a doubling RTO.
    times = flow.data_schedule(HEALTHY)
    rto = states.base_rto(before=times.times[0])
    expect_schedule(times, [rto * 2 ** i for i in range(len(times) - 1)], "first unanswered heartbeat", flow=flow)
    assert len(times) >= 3 and not flow.of(Kind.RST), evidence
