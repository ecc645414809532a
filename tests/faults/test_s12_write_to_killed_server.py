"""S12: the server process is killed while the client keeps writing."""

import pytest
import tenacity

from faults import Signal
from harness.capture import capture
from harness.channel import ProcessDied
from harness.expect import CLOCK_ALIGNMENT, SOFTIRQ_AND_WAKEUP, expect_errno
from harness.sockets import sample, wait_for
from harness.timing import SCHEDULING_SLACK

pytestmark = pytest.mark.faults

SCENARIO = {
    "id": "S12",
    "title": "Server process killed while the client keeps writing",
    "fault": "SIGKILL of the server process (its host stays up); the client, ignoring the FIN, writes twice.",
    "linux": "The FIN puts the client in CLOSE_WAIT; its first write is accepted and the server's kernel answers "
             "the data with a RST, which closes the client's socket with EPIPE pending.",
    "expect": "The first write succeeds at once; the second fails with EPIPE at once, or, without MSG_NOSIGNAL "
              "and with SIGPIPE's default action, kills the writing process with SIGPIPE.",
    "lesson": "Ignore SIGPIPE (or send with MSG_NOSIGNAL) and handle EPIPE; treat recv() returning 0 as the peer "
              "gone instead of writing on.",
}

PORT = 6666
FIN_TIMEOUT = 30
# Sampler period; its longest measured interval stays under 2 periods on the loaded CI machine.
PERIOD_MS = 10
SAMPLING = 2 * PERIOD_MS / 1000 + SCHEDULING_SLACK
# A write that only queues, or fails on a socket already closed, returns within microseconds (measured:
# 0.03-0.2 ms); 0.1 s leaves room for a loaded machine.
AT_ONCE = 0.1 + SCHEDULING_SLACK
SIZE = 100
# How long to wait for an event (not a timing assertion): a killed process's sockets are closed, and a RST
# processed, within milliseconds; a loaded 2-core machine can take a second or more to schedule the observers.
EVENT = 5
POLL = 0.02


@pytest.mark.sysctls(server={"net.ipv4.tcp_fin_timeout": FIN_TIMEOUT})
@pytest.mark.parametrize("sigpipe", [pytest.param("ignore", id="sigpipe-ignored"),
                                     pytest.param("default", id="sigpipe-default")])
def test_s12_writing_to_a_killed_server_first_write_succeeds_second_gets_epipe(pair, sigpipe, record_property):
    """S12, seed experiment "client正在发送数据 server进程崩溃" (the server process crashes while the client
    sends) and its question "什么时候才会由这个EPIPE的信号产生?" (when does EPIPE / SIGPIPE happen?).

    When the server process dies its kernel sends a FIN: the client's socket goes to CLOSE_WAIT and the
    server's orphan to FIN_WAIT2. A client that ignores the EOF and writes again gets its first write
    accepted (it only queues), but data reaching a socket that was closed for reading is answered with a RST,
    which destroys the server's orphan long before tcp_fin_timeout and closes the client's socket with EPIPE
    pending (RST in CLOSE_WAIT). The second write fails: with SIGPIPE ignored, send() returns EPIPE; with
    SIGPIPE's default action and no MSG_NOSIGNAL (as in the seed's C client) the process dies by SIGPIPE.
    The client writes from a worker process with that SIGPIPE disposition, without MSG_NOSIGNAL.
    """
    client, server = pair.client, pair.server
    record_property("kernel_wait", 0)
    proc = server.spawn_worker("server-process")
    listener = proc.listen(port=PORT, accept=True)
    assert listener.ok, listener
    app = client.spawn_worker("client-process", sigpipe=sigpipe)
    conn = app.connect(addr=server.addr, port=PORT)
    assert conn.ok, conn
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(EVENT), wait=tenacity.wait_fixed(POLL),
                                     reraise=True):
        with attempt:
            assert proc.accepted(handle=listener.handle), "the server process has not accepted yet"

    died = second = None
    with capture(client, f"tcp port {PORT}") as wire, \
            sample(client, port=PORT, period_ms=PERIOD_MS) as states:
        kill = Signal(proc, "SIGKILL").apply()
        closing = wait_for(client, "CLOSE_WAIT", dport=PORT, timeout=EVENT)
        orphan = wait_for(server, "FIN_WAIT2", sport=PORT, timeout=EVENT)
        first = app.send(conn.handle, size=SIZE, flags=[])
        for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(EVENT), wait=tenacity.wait_fixed(POLL),
                                         reraise=True):
            with attempt:
                assert client.sockets(port=PORT) == [], "waiting for the RST to close the client's socket"
        on_server = server.sockets(port=PORT)
        try:
            second = app.send(conn.handle, size=SIZE, flags=[])
        except ProcessDied as exc:
            died = exc
    evidence = f"\n{kill.describe()} at {kill.sent.t0:.6f}\n{wire.table(since=kill.sent.t0)}\n{states.table()}"

    assert wire.complete, "tcpdump must have written every packet it was given" + evidence
    fins = wire.tcp(src=server.addr, flags="F.")
    assert fins and {f.seq for f in fins} == {fins[0].seq}, (
        "one FIN (retransmitted only if its ACK was late)" + evidence)
    assert fins[0].t >= kill.sent.t0 - CLOCK_ALIGNMENT, evidence
    assert [s["state"] for s in closing] == ["CLOSE_WAIT"] and [s["state"] for s in orphan] == ["FIN_WAIT2"], (
        f"client {closing}, server {orphan}" + evidence)

    expect_errno(first, None, between=(0, AT_ONCE))
    assert first.ret == SIZE, "the first write only queues the data" + evidence
    sent = [p for p in wire.tcp(src=client.addr) if p.length]
    resets = wire.tcp(src=server.addr, flags="R")
    assert len(sent) == 1 and sent[0].length == SIZE and len(resets) == 1, "one data segment, one RST" + evidence
    data, rst = sent[0], resets[0]
    assert first.t0 - CLOCK_ALIGNMENT <= data.t <= rst.t and rst.seq == data.ack, (
        "the server's kernel answers the data with a RST" + evidence)
    assert not wire.tcp(src=client.addr, flags="F."), "the client never closed" + evidence

    (socket,) = states.select(dport=PORT)
    assert socket.spans[-1].left_by >= rst.t - CLOCK_ALIGNMENT, "the client's socket lived until the RST" + evidence
    assert socket.spans[-1].left_after <= rst.t + SOFTIRQ_AND_WAKEUP + CLOCK_ALIGNMENT, (
        "the RST closed the client's socket" + evidence)
    assert on_server == [], (f"the RST destroyed the server's FIN_WAIT2 orphan, which had "
                             f"{orphan[0]['expires_ms']} ms (tcp_fin_timeout) to live: {on_server}" + evidence)
    assert orphan[0]["expires_ms"] > (FIN_TIMEOUT - EVENT) * 1000, orphan

    if sigpipe == "ignore":
        assert died is None, died
        expect_errno(second, "EPIPE", between=(0, AT_ONCE))
    else:
        assert second is None and died is not None, second
        assert died.signal == "SIGPIPE", f"the client process died by SIGPIPE: {died}" + evidence
