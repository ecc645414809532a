"""S16: a server restarts while its old connection is in TIME_WAIT: can it bind its port again?"""

import pytest
import tenacity

from faults import Signal
from harness.capture import capture
from harness.expect import CLOCK_ALIGNMENT
from harness.flows import Kind, tcp_flow
from harness.sockets import sample, wait_for
from harness.timing import SCHEDULING_SLACK

pytestmark = pytest.mark.faults

SCENARIO = {
    "id": "S16",
    "title": "TIME_WAIT and the restart of a server",
    "fault": "The server process is killed (it closes first), the client then closes; a new server binds the port.",
    "linux": "The side that closes first ends in TIME_WAIT for 60 s (TCP_TIMEWAIT_LEN, not tcp_fin_timeout); a "
             "bind() to its port conflicts with it unless the TIME_WAIT socket and the new one both have "
             "SO_REUSEADDR (the accepted socket inherits it from the listener).",
    "expect": "bind() EADDRINUSE at once in FIN_WAIT2 and in TIME_WAIT, unless SO_REUSEADDR was set on the old "
              "listener and on the new one: then bind and listen succeed and the new server accepts.",
    "lesson": "Set SO_REUSEADDR on every listening socket before bind(), so a restarted server can bind while "
              "its previous incarnation's connections sit in TIME_WAIT.",
}

PORT = 6666
FIN_TIMEOUT = "net.ipv4.tcp_fin_timeout"
# TCP_TIMEWAIT_LEN (include/net/tcp.h): a compile-time constant, no sysctl sets it.
TIME_WAIT_LEN = 60.0
# A rejected bind() or a successful listen() returns within microseconds (measured 0.004-0.03 ms).
AT_ONCE = 0.01 + SCHEDULING_SLACK
# sock_diag reports a timer's remaining time in ms from jiffies (at most 10 ms per jiffy over the common HZ),
# and snapshot times are aligned with packet times within CLOCK_ALIGNMENT. The kernel read the timer between
# the snapshot's `t` and `t_end` (a dump stalled by a loaded machine read it tens of ms after `t`).
JIFFY = 0.01 + SCHEDULING_SLACK
# How long to wait for an event (not a timing assertion): a dying process closes its sockets within
# milliseconds, a loaded 2-core machine can take a second to schedule it.
WAIT_STATE = 5


def _read_span(entry: dict, since: float) -> str:
    """When the kernel read a snapshot entry, as seconds after `since` (a dump that stalled reads as a span)."""
    return f"{entry['t'] - since:.3f}-{entry['t_end'] - since:.3f} s"


def _accepted(proc, listener: str) -> list:
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(WAIT_STATE), wait=tenacity.wait_fixed(0.02),
                                     reraise=True):
        with attempt:
            accepted = proc.accepted(handle=listener)
            assert accepted, f"{proc} has not accepted on {listener} yet"
    return accepted


def _restart(client, server, proc, conn: str, options: dict) -> tuple:
    """Kill the server process, try to bind a new server in FIN_WAIT2 (the client in CLOSE_WAIT), close the
    client, try again in TIME_WAIT (and if that bind succeeds, connect to the new server). Returns each step's
    record or snapshot."""
    Signal(proc, "SIGKILL").apply()
    (fin_wait2,) = wait_for(server, "FIN_WAIT2", sport=PORT, timeout=WAIT_STATE)
    wait_for(client, "CLOSE_WAIT", dport=PORT, timeout=WAIT_STATE)
    in_fin_wait2 = server.listen(port=PORT, options=options)
    if in_fin_wait2.ok:
        server.close(in_fin_wait2.handle)
    closed = client.close(conn)
    (time_wait,) = wait_for(server, "TIME_WAIT", sport=PORT, timeout=WAIT_STATE)
    in_time_wait = server.listen(port=PORT, options=options, accept=True)
    again = None
    if in_time_wait.ok:
        again = client.connect(addr=server.addr, port=PORT)
        _accepted(server, in_time_wait.handle)
    return in_fin_wait2, fin_wait2, closed, in_time_wait, time_wait, again


@pytest.mark.sysctls(server={FIN_TIMEOUT: 10})
@pytest.mark.parametrize("old_reuse", [False, True], ids=["old-plain", "old-reuseaddr"])
@pytest.mark.parametrize("new_reuse", [False, True], ids=["new-plain", "new-reuseaddr"])
def test_s16_restarted_server_binds_its_port_only_with_so_reuseaddr_on_both_sockets(pair, old_reuse, new_reuse,
                                                                                   record_property):
    """S16, seed experiment "程序设计中的问题 / 端口复用" (Ctrl-C the server, restart it: "bind error: Address
    already in use"; the fix: SO_REUSEADDR).

    The server process is killed while a client is connected, so the server closes first: its socket waits in
    FIN_WAIT2, then, once the client closes too, in TIME_WAIT on the server's well-known port, and a restarted
    server's bind() fails with EADDRINUSE in both states. It succeeds only when both sockets carry
    SO_REUSEADDR: the new listener and the TIME_WAIT socket, which inherits it from the old listener through
    the accepted socket. The seed's "about half a minute" is not what Linux does: TIME_WAIT lasts 60 s,
    whatever tcp_fin_timeout says (pinned to 10 s here, it only sets the FIN_WAIT2 timer).
    """
    client, server = pair.client, pair.server
    record_property("kernel_wait", 0)
    fin_timeout = int(server.sysctl_get([FIN_TIMEOUT])[FIN_TIMEOUT])
    proc = server.spawn_worker("server-process")
    old = proc.listen(port=PORT, accept=True, options={"reuseaddr": old_reuse})
    new_options = {"reuseaddr": new_reuse}

    with capture(server, f"tcp port {PORT}") as wire:
        conn = client.connect(addr=server.addr, port=PORT)
        assert old.ok and conn.ok, (old, conn)
        client_port = conn.extra["local"][1]
        _accepted(proc, old.handle)
        with sample(server, port=PORT) as states, sample(client, port=PORT) as client_states:
            restart = _restart(client, server, proc, conn.handle, new_options)
    in_fin_wait2, fin_wait2, closed, in_time_wait, time_wait, again = restart
    flow = tcp_flow(wire, port=client_port)
    evidence = (f"\n{in_fin_wait2}\n{in_time_wait}\n{flow.render()}\n{states.table()}\n{client_states.table()}")

    expected = None if old_reuse and new_reuse else "EADDRINUSE"
    for attempt in (in_fin_wait2, in_time_wait):
        assert attempt.errname == expected, f"bind of the restarted server: expected {expected or 'success'}" + evidence
        assert attempt.op == ("listen" if expected is None else "bind") and attempt.elapsed < AT_ONCE, evidence
    if expected is None:
        assert again.ok and again.extra["local"][1] != client_port, (
            "the restarted server accepts a new connection while the old one is in TIME_WAIT" + evidence)

    # The server closed first (its FIN, then the client's), so the server sent the last ACK and holds TIME_WAIT.
    fins = flow.of(Kind.FIN)
    assert [f.from_client for f in fins] == [False, True], "the server's FIN first, then the client's" + evidence
    last = flow.segments[-1]
    assert last.kind == Kind.ACK and not last.from_client and last.ack == fins[1].end, evidence
    assert not flow.of(Kind.RST), "an orderly close on both sides: no RST" + evidence
    (old_conn,) = states.select(sport=PORT, dport=client_port)
    # FIN_WAIT1 lasts until the client's kernel ACKs the FIN (a millisecond), FIN_WAIT2 until the client closes
    # (a few ms here): the 10 ms sampler may miss either. wait_for's snapshot proved FIN_WAIT2; unsampled, it
    # lies between the last ESTABLISHED sample and the first TIME_WAIT one.
    sampled = [s for s in old_conn.states if s != "FIN_WAIT1"]
    if sampled == ["ESTABLISHED", "TIME_WAIT"]:
        spans = {span.state: span for span in old_conn.spans}
        read = f"FIN_WAIT2 read between {fin_wait2['t']:.6f} and {fin_wait2['t_end']:.6f}"
        assert fin_wait2["t_end"] >= spans["ESTABLISHED"].left_after, f"{read}, before ESTABLISHED ended" + evidence
        assert fin_wait2["t"] <= spans["TIME_WAIT"].entered_by, f"{read}, after TIME_WAIT began" + evidence
    else:
        assert sampled == ["ESTABLISHED", "FIN_WAIT2", "TIME_WAIT"], evidence
    (client_conn,) = client_states.select(sport=client_port)
    assert "TIME_WAIT" not in client_conn.states, "the passive closer has no TIME_WAIT" + evidence
    assert closed.ok, closed

    # FIN_WAIT2 waits tcp_fin_timeout for the peer's FIN; TIME_WAIT waits TCP_TIMEWAIT_LEN from the last ACK.
    fin_acked = next(s.t for s in flow.segments if s.from_client and s.ack == fins[0].end)
    fw2_left = fin_wait2["expires_ms"] / 1000
    assert (fin_timeout - (fin_wait2["t_end"] - fin_acked) - JIFFY - CLOCK_ALIGNMENT <= fw2_left
            <= fin_timeout + JIFFY), (
        f"FIN_WAIT2 timer {fw2_left:.3f} s left {_read_span(fin_wait2, fin_acked)} after the FIN's ACK, "
        f"tcp_fin_timeout={fin_timeout}" + evidence)
    tw_left = time_wait["expires_ms"] / 1000
    assert (TIME_WAIT_LEN - (time_wait["t_end"] - last.t) - JIFFY - CLOCK_ALIGNMENT <= tw_left
            <= TIME_WAIT_LEN + JIFFY), (
        f"TIME_WAIT timer {tw_left:.3f} s left {_read_span(time_wait, last.t)} after the last ACK, expected "
        f"{TIME_WAIT_LEN:g} s (TCP_TIMEWAIT_LEN)" + evidence)
