"""S15: half-close - the client shuts down its sending direction and keeps receiving."""

import pytest
import tenacity

from harness.capture import capture
from harness.expect import CLOCK_ALIGNMENT, SOFTIRQ_AND_WAKEUP, expect_errno, expect_held
from harness.flows import tcp_flow
from harness.kernel import COMMON_HZ, wheel_slack
from harness.sockets import sample, wait_for
from harness.timing import SCHEDULING_SLACK

pytestmark = pytest.mark.faults

SCENARIO = {
    "id": "S15",
    "title": "Half-close: shutdown(SHUT_WR) on the client",
    "fault": "None: the client half-closes its connection (shutdown SHUT_WR) and waits for the server's answer.",
    "linux": "The client's FIN puts it in FIN_WAIT2 and the server in CLOSE_WAIT; the server reads EOF and can "
             "still send, the client still receives. A half-closed FIN_WAIT2 socket has no timer: "
             "tcp_fin_timeout applies to orphans only.",
    "expect": "shutdown() returns at once; the server's recv() returns 0 at once; its data reaches the client; "
              "the client's own send() fails with EPIPE; FIN_WAIT2 lasts until the server closes, then "
              "TIME_WAIT.",
    "lesson": "shutdown(SHUT_WR) signals 'no more requests' and keeps the answer coming; read until EOF before "
              "close(), and do not expect tcp_fin_timeout to end a half-closed connection.",
}

PORT = 6666
FIN_TIMEOUT_KEY = "net.ipv4.tcp_fin_timeout"
# Sampler period; its longest measured interval stays under 2 periods on the loaded CI machine.
PERIOD_MS = 10
SAMPLING = 2 * PERIOD_MS / 1000 + SCHEDULING_SLACK
# A timeout of n jiffies counts from inside the current jiffy, so it can end up to one jiffy early: at most
# 10 ms over the common HZ values (100 .. 1000).
TICK = 1 / min(COMMON_HZ)
# Calls that do not wait (shutdown, a recv with data or EOF queued, a send that queues or fails) return within
# microseconds (measured: 0.04-0.2 ms); 0.1 s leaves room for a loaded machine.
AT_ONCE = 0.1 + SCHEDULING_SLACK
REPLY = 3000
# How long to wait for an event (not a timing assertion): a FIN and its ACK cross within a round trip
# (sub-ms); a loaded 2-core machine can take a second or more to schedule the observers.
EVENT = 5
POLL = 0.02


@pytest.mark.sysctls(client={FIN_TIMEOUT_KEY: 1})
def test_s15_half_close_client_still_receives_after_shutdown_wr(pair, record_property):
    """S15, seed text "半关闭" (half-close: after A's FIN is acknowledged, A is in FIN_WAIT_2 and can still
    receive what B sends, but can no longer send to B) with shutdown(SHUT_WR).

    The client calls shutdown(SHUT_WR): its FIN goes out at once and, acknowledged, leaves it in FIN_WAIT2;
    the server's socket is in CLOSE_WAIT and its recv() returns 0 (EOF) at once. The client waits for the
    answer longer than tcp_fin_timeout (1 s here): its FIN_WAIT2 has no timer (the socket is not an orphan),
    so nothing happens and its recv() times out with EAGAIN. Then the server sends: the client receives every
    byte; the client's own send() fails with EPIPE. The server closes: the client reads EOF and goes to
    TIME_WAIT, the server's socket (LAST_ACK) is gone once the client acknowledged its FIN.
    """
    client, server = pair.client, pair.server
    fin_timeout = int(client.sysctl_get([FIN_TIMEOUT_KEY])[FIN_TIMEOUT_KEY])
    # Longer than an orphan in FIN_WAIT2 would live: tcp_fin_timeout, up to the timer wheel's slack late.
    hold = fin_timeout + wheel_slack(fin_timeout)
    record_property("kernel_wait", hold)
    listener = server.listen(port=PORT, accept=True)
    conn = client.connect(addr=server.addr, port=PORT)
    assert listener.ok and conn.ok, (listener, conn)
    handle = conn.handle
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(EVENT), wait=tenacity.wait_fixed(POLL),
                                     reraise=True):
        with attempt:
            accepted = server.accepted(handle=listener.handle)
            assert accepted, "the server has not accepted yet"
    peer = accepted[0].handle

    with capture(client, f"tcp port {PORT}") as wire, \
            sample(client, port=PORT, period_ms=PERIOD_MS) as states, \
            sample(server, port=PORT, period_ms=PERIOD_MS) as server_states:
        half = client.shutdown(handle, "SHUT_WR")
        closing = wait_for(server, "CLOSE_WAIT", sport=PORT, timeout=EVENT)
        waiting = wait_for(client, "FIN_WAIT2", dport=PORT, timeout=EVENT)
        eof = server.recv(peer, timeout=EVENT)
        quiet = client.recv(handle, timeout=hold)
        held = client.sockets(port=PORT)
        reply = server.send(peer, size=REPLY)
        got = client.recv(handle, size=REPLY, timeout=EVENT, flags=["MSG_WAITALL"])
        refused = client.send(handle, size=10)
        closed = server.close(peer)
        end = client.recv(handle, timeout=EVENT)
        time_wait = wait_for(client, "TIME_WAIT", dport=PORT, timeout=EVENT)
        for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(EVENT), wait=tenacity.wait_fixed(POLL),
                                         reraise=True):
            with attempt:
                left = [s for s in server.sockets(port=PORT) if s["state"] != "LISTEN"]
                assert left == [], f"waiting for the server's socket to go: {left}"
    flow = tcp_flow(wire, port=PORT)

    expect_errno(half, None, between=(0, AT_ONCE))
    assert [s["state"] for s in closing] == ["CLOSE_WAIT"] and [s["state"] for s in waiting] == ["FIN_WAIT2"]
    expect_errno(eof, None, between=(0, AT_ONCE))
    assert eof.ret == 0, f"the server reads EOF: {eof}"
    expect_errno(quiet, "EAGAIN", between=(hold - TICK - CLOCK_ALIGNMENT,
                                           hold + wheel_slack(hold) + SOFTIRQ_AND_WAKEUP))
    assert [(s["state"], s["timer_name"]) for s in held] == [("FIN_WAIT2", "off")], (
        f"past tcp_fin_timeout={fin_timeout} s the half-closed socket is still FIN_WAIT2, with no timer: {held}")

    expect_errno(reply, None, between=(0, AT_ONCE))
    assert reply.ret == REPLY, reply
    expect_errno(got, None)
    assert got.data == (bytes(range(256)) * (REPLY // 256 + 1))[:REPLY], f"the client receives every byte: {got}"
    expect_errno(refused, "EPIPE", between=(0, AT_ONCE))
    expect_errno(closed, None, between=(0, AT_ONCE))
    expect_errno(end, None)
    assert end.ret == 0, f"then EOF: {end}"
    assert [s["state"] for s in time_wait] == ["TIME_WAIT"], time_wait

    assert flow.kinds(from_client=True)[0] == "fin" and len(flow.of("fin", from_client=True)) == 1, flow
    fin = flow.of("fin", from_client=True)[0]
    assert half.t0 - CLOCK_ALIGNMENT <= fin.t <= half.t1 + SOFTIRQ_AND_WAKEUP + CLOCK_ALIGNMENT, (
        f"the FIN leaves at shutdown()\n{flow}")
    assert not [s for s in flow.of(from_client=True) if s.length], f"no data from the client after its FIN\n{flow}"
    data = flow.of("data", from_client=False)
    assert sum(s.length for s in data) == REPLY and data[0].t > fin.t, f"the server's data after the FIN\n{flow}"
    server_fin = flow.of("fin", from_client=False)
    assert len(server_fin) == 1 and server_fin[0].t > data[-1].t, flow
    assert not flow.of("rst"), f"no RST\n{flow}"

    # Each edge of a sampled span is seen up to one sampling interval late.
    (client_socket,) = states.select(dport=PORT)
    assert [s for s in client_socket.states if s != "FIN_WAIT1"] == ["ESTABLISHED", "FIN_WAIT2", "TIME_WAIT"], (
        states.table())
    expect_held(states, "FIN_WAIT2", at_least=quiet.elapsed - SAMPLING, at_most=end.t1 - half.t0 + SAMPLING)
    (server_socket,) = server_states.select(dport=conn.extra["local"][1])
    assert [s for s in server_socket.states if s != "LAST_ACK"] == ["ESTABLISHED", "CLOSE_WAIT"], (
        server_states.table())
    expect_held(server_states, "CLOSE_WAIT", at_least=quiet.elapsed - SAMPLING, dport=conn.extra["local"][1])
