"""S14: the server host reboots (power cycle, same address) under an established connection."""

import pytest
import tenacity

from faults import Restart
from harness.capture import capture
from harness.expect import CLOCK_ALIGNMENT, SOFTIRQ_AND_WAKEUP, expect_errno
from harness.flows import tcp_flow
from harness.kernel import COMMON_HZ, wheel_slack
from harness.sockets import sample
from harness.timing import SCHEDULING_SLACK

pytestmark = pytest.mark.faults

SCENARIO = {
    "id": "S14",
    "title": "Server host reboots",
    "fault": "Hard reboot of the server's container (links down, every process killed, booted with the same "
             "address): nothing reaches the client.",
    "linux": "The client's connection stays ESTABLISHED: nothing tells it. The rebooted host has no socket for "
             "it, so the client's next segment (data, or a keepalive probe) is answered with a RST.",
    "expect": "After a write the RST comes back at once and the next call fails with ECONNRESET (then EPIPE); "
              "an idle client with keepalive gets ECONNRESET from its blocked recv() tcp_keepalive_time (2 s) "
              "after enabling it.",
    "lesson": "A rebooted peer is only noticed on the next segment: write, or enable keepalive (or heartbeats) "
              "so that idle connections learn it; handle ECONNRESET by reconnecting.",
}

PORT = 6666
KEEPALIVE_TIME = "net.ipv4.tcp_keepalive_time"
# Sampler period; its longest measured interval stays under 2 periods on the loaded CI machine.
PERIOD_MS = 10
SAMPLING = 2 * PERIOD_MS / 1000 + SCHEDULING_SLACK
# A timeout of n jiffies counts from inside the current jiffy, so it can end up to one jiffy early: at most
# 10 ms over the common HZ values (100 .. 1000).
TICK = 1 / min(COMMON_HZ)
# A write that only queues, or a call on a socket the RST already closed, returns within microseconds
# (measured: 0.02-0.2 ms); 0.1 s leaves room for a loaded machine.
AT_ONCE = 0.1 + SCHEDULING_SLACK
SIZE = 100
# How long to wait for an event (not a timing assertion): a RST comes back within a round trip (sub-ms);
# a loaded 2-core machine can take a second or more to schedule the observers.
EVENT = 5
POLL = 0.02


@pytest.mark.sysctls(client={KEEPALIVE_TIME: 2})
@pytest.mark.parametrize("next_use", ["write", "keepalive"])
def test_s14_server_reboot_old_connection_is_reset_on_next_use(pair, next_use, record_property):
    """S14, seed text on SO_KEEPALIVE "对方已崩溃且已重新启动:以RST响应。套接口的待处理错误被置为ECONNRESET"
    (the peer crashed and rebooted: it answers with RST, the socket's pending error becomes ECONNRESET).

    The server host is power-cycled: its links go down first, so no FIN or RST leaves it, and it boots with
    the same address and no memory of the connection. The client's socket stays ESTABLISHED, with nothing on
    the wire, until it sends something. "write": the write succeeds (it only queues), the new server kernel
    answers the segment with a RST, the client's socket is closed, and its next recv() fails with ECONNRESET,
    the send() after that with EPIPE. "keepalive": an idle client blocked in recv() enables SO_KEEPALIVE after
    the reboot; tcp_keepalive_time (2 s) later the probe is answered with a RST and recv() fails with
    ECONNRESET.
    """
    client, server = pair.client, pair.server
    idle = int(client.sysctl_get([KEEPALIVE_TIME])[KEEPALIVE_TIME])
    record_property("kernel_wait", idle if next_use == "keepalive" else 0)
    listener = server.listen(port=PORT, accept=True)
    assert listener.ok, listener
    with capture(client, f"tcp port {PORT}") as wire, \
            sample(client, port=PORT, period_ms=PERIOD_MS) as states:
        conn = client.connect(addr=server.addr, port=PORT)
        assert conn.ok, conn
        handle = conn.handle
        reboot = Restart(server)
        with reboot:
            survived = client.sockets(port=PORT)
            remembered = server.sockets(port=PORT)
            if next_use == "write":
                use = client.send(handle, size=SIZE)
                for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(EVENT),
                                                 wait=tenacity.wait_fixed(POLL), reraise=True):
                    with attempt:
                        assert client.sockets(port=PORT) == [], "waiting for the RST to close the client's socket"
                failed = client.recv(handle, timeout=EVENT)
            else:
                (use,) = client.setsockopt(handle, {"keepalive": 1})
                failed = client.recv(handle, timeout=idle + EVENT)
            closed = client.send(handle, size=SIZE)
    evidence = f"\n{reboot.describe()} in force at {reboot.applied_at:.6f}\n{wire.table()}\n{states.table()}"

    assert wire.complete, "tcpdump must have written every packet it was given" + evidence
    assert [s["state"] for s in survived] == ["ESTABLISHED"], f"nothing reached the client: {survived}" + evidence
    assert remembered == [], f"the rebooted server has no socket for the connection: {remembered}" + evidence
    flow = tcp_flow(wire, port=PORT)
    segment = "data" if next_use == "write" else "keepalive"
    assert flow.kinds(from_client=True) == ["syn", "ack", segment], (
        f"after the handshake the client sends one segment: {segment}\n{flow}" + evidence)
    assert flow.kinds(from_client=False) == ["synack", "rst"], (
        f"after the handshake the server's only packet is the RST\n{flow}" + evidence)
    probe, rst = flow.of(segment)[0].packet, flow.of("rst")[0].packet
    assert probe.t <= rst.t and rst.seq == probe.ack, f"the RST answers the {segment}\n{flow}" + evidence

    if next_use == "write":
        expect_errno(use, None, between=(0, AT_ONCE))
        assert use.ret == SIZE and probe.length == SIZE, "the write succeeded and its data went out" + evidence
        expect_errno(failed, "ECONNRESET", between=(0, AT_ONCE))
    else:
        assert use.ok, use
        fired = (use.t0 + idle - TICK - CLOCK_ALIGNMENT, use.t1 + idle + wheel_slack(idle) + SOFTIRQ_AND_WAKEUP)
        assert fired[0] <= probe.t <= fired[1], (
            f"keepalive probe {probe.t - use.t1:.4f} s after SO_KEEPALIVE, expected tcp_keepalive_time={idle} s "
            f"(up to {fired[1] - use.t1 - idle:.3f} s late)" + evidence)
        expect_errno(failed, "ECONNRESET")
        assert rst.t - CLOCK_ALIGNMENT <= failed.t1 <= rst.t + SOFTIRQ_AND_WAKEUP + CLOCK_ALIGNMENT, (
            "the blocked recv() failed when the RST came" + evidence)
    expect_errno(closed, "EPIPE", between=(0, AT_ONCE))

    (socket,) = states.select(dport=PORT)
    assert socket.states == ["ESTABLISHED"], f"ESTABLISHED through the reboot until the RST\n{states.table()}"
    span = socket.spans[0]
    assert span.entered_by <= conn.t1 + SAMPLING and span.left_by is not None, states.table()
    assert span.left_by >= rst.t - CLOCK_ALIGNMENT, "ESTABLISHED until the RST" + evidence
    assert span.left_after <= rst.t + SOFTIRQ_AND_WAKEUP + CLOCK_ALIGNMENT, (
        "the RST closed the client's socket" + evidence)
