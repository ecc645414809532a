"""S13: the server process is killed while data it never read waits in its receive buffer."""

import pytest
import tenacity

from faults import Signal
from harness.capture import capture
from harness.expect import CLOCK_ALIGNMENT, SOFTIRQ_AND_WAKEUP, expect_errno
from harness.sockets import sample
from harness.timing import SCHEDULING_SLACK

pytestmark = pytest.mark.faults

SCENARIO = {
    "id": "S13",
    "title": "Server process killed with unread data in its buffer",
    "fault": "SIGKILL of the server process while bytes the client sent sit unread in its socket.",
    "linux": "Closing a socket with unread data aborts the connection: the server's kernel sends a RST instead "
             "of a FIN and destroys its socket at once (no FIN_WAIT, no TIME_WAIT).",
    "expect": "The client's next call fails with ECONNRESET at once (recv() or send()); the error is reported "
              "once: afterwards send() fails with EPIPE and recv() returns 0.",
    "lesson": "ECONNRESET means the peer aborted and data may be lost; a server should read (or shut down) "
              "before closing, and clients must not assume what they sent was processed.",
}

PORT = 6666
UNREAD = 5000
# Sampler period; its longest measured interval stays under 2 periods on the loaded CI machine.
PERIOD_MS = 10
SAMPLING = 2 * PERIOD_MS / 1000 + SCHEDULING_SLACK
# A call on a socket the RST already closed fails within microseconds (measured: 0.03 ms); 0.1 s leaves room
# for a loaded machine.
AT_ONCE = 0.1 + SCHEDULING_SLACK
# How long to wait for an event (not a timing assertion): a killed process's sockets are closed, and a RST
# processed, within milliseconds; a loaded 2-core machine can take a second or more to schedule the observers.
EVENT = 5
POLL = 0.02


@pytest.mark.parametrize("call", ["recv", "send"])
def test_s13_server_killed_with_unread_data_resets_the_connection(pair, call, record_property):
    """S13, seed experiment "server进程崩溃" with data the server has not read (the process crashes before
    reading what the client sent).

    The server's kernel acknowledged the client's bytes, but the process never read them. When it is killed,
    its kernel closes the socket with unread data, which aborts the connection: a RST goes out instead of a
    FIN and the server's socket is destroyed at once, with no FIN_WAIT2 or TIME_WAIT. The client's socket,
    ESTABLISHED until then, is closed by the RST with ECONNRESET pending: its next call, recv() or send()
    (the parameter), fails with ECONNRESET at once; after that the error is gone: send() fails with EPIPE,
    recv() returns 0 (EOF). Nothing in it needs a kernel timer.
    """
    client, server = pair.client, pair.server
    record_property("kernel_wait", 0)
    proc = server.spawn_worker("server-process")
    listener = proc.listen(port=PORT, accept=True)
    assert listener.ok, listener
    conn = client.connect(addr=server.addr, port=PORT)
    assert conn.ok, conn
    handle = conn.handle
    sent = client.send(handle, size=UNREAD)
    assert sent.ok and sent.ret == UNREAD, sent
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(EVENT), wait=tenacity.wait_fixed(POLL),
                                     reraise=True):
        with attempt:
            assert proc.accepted(handle=listener.handle), "the server process has not accepted yet"
            unread = server.sockets(sport=PORT, states=["ESTABLISHED"])
            assert [s["recv_q"] for s in unread] == [UNREAD], f"waiting for the bytes to arrive: {unread}"

    with capture(client, f"tcp port {PORT}") as wire, \
            sample(client, port=PORT, period_ms=PERIOD_MS) as states, \
            sample(server, port=PORT, period_ms=PERIOD_MS) as server_states:
        kill = Signal(proc, "SIGKILL").apply()
        for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(EVENT), wait=tenacity.wait_fixed(POLL),
                                         reraise=True):
            with attempt:
                assert client.sockets(port=PORT) == [], "waiting for the RST to close the client's socket"
        on_server = server.sockets(port=PORT)
        first = client.recv(handle, timeout=EVENT) if call == "recv" else client.send(handle, size=100)
        then_send = client.send(handle, size=100)
        then_recv = client.recv(handle, timeout=EVENT)
    evidence = f"\n{kill.describe()} at {kill.sent.t0:.6f}\n{wire.table(since=kill.sent.t0)}"

    assert wire.complete, "tcpdump must have written every packet it was given" + evidence
    assert not wire.tcp(src=server.addr, flags="F.") and not wire.tcp(src=client.addr), (
        "no FIN from the server, nothing from the client" + evidence)
    resets = wire.tcp(src=server.addr, flags="R.")
    assert len(resets) == 1 and resets[0].t >= kill.sent.t0 - CLOCK_ALIGNMENT, "one RST, after the kill" + evidence
    rst = resets[0]

    (client_socket,) = states.select(dport=PORT)
    assert client_socket.states == ["ESTABLISHED"], f"ESTABLISHED until the RST\n{states.table()}" + evidence
    gone = client_socket.spans[-1]
    assert gone.left_by >= rst.t - CLOCK_ALIGNMENT, f"ESTABLISHED until the RST\n{states.table()}" + evidence
    assert gone.left_after <= rst.t + SOFTIRQ_AND_WAKEUP + CLOCK_ALIGNMENT, (
        f"the RST closed the client's socket\n{states.table()}" + evidence)
    (server_socket,) = server_states.select(dport=conn.extra["local"][1])
    assert server_socket.states == ["ESTABLISHED"], (
        f"the server's socket went from ESTABLISHED straight to gone\n{server_states.table()}" + evidence)
    assert server_socket.spans[-1].left_by >= kill.sent.t0 - CLOCK_ALIGNMENT, server_states.table()
    assert on_server == [], f"no FIN_WAIT or TIME_WAIT on the server: {on_server}" + evidence

    expect_errno(first, "ECONNRESET", between=(0, AT_ONCE))
    expect_errno(then_send, "EPIPE", between=(0, AT_ONCE))
    expect_errno(then_recv, None, between=(0, AT_ONCE))
    assert then_recv.ret == 0, f"after the reset, recv() returns EOF: {then_recv}"
