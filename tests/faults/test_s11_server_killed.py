"""S11: the server process is killed (SIGKILL) while the client holds an idle connection."""

import pytest
import tenacity

from faults import Signal
from harness.capture import capture
from harness.timing import SCHEDULING_SLACK

pytestmark = pytest.mark.faults

SCENARIO = {
    "id": "S11",
    "title": "Server process killed while the client is idle",
    "fault": "SIGKILL of the server process (its host stays up)",
    "linux": "The dying process's kernel closes its socket like close(): a FIN reaches the client; the server's "
             "orphan waits in FIN_WAIT2 for tcp_fin_timeout.",
    "expect": "The client's recv() returns 0 (EOF) at once; client CLOSE_WAIT until it closes; the server's "
              "FIN_WAIT2 orphan disappears after tcp_fin_timeout (60 s by default).",
    "lesson": "recv() returning 0 is the peer going away: close the socket, or CLOSE_WAIT sockets pile up.",
}

PORT = 6666
FIN_TIMEOUT = 3
# Orphaned FIN_WAIT2 sockets live tcp_fin_timeout seconds on a kernel timer. Timers of a few seconds sit in
# the timer wheel's third level (granularity 64 jiffies = 256 ms at HZ=250), so they fire up to a quarter
# second late, never early; the socket table is polled every POLL seconds on top of that.
TIMER_SLACK = 0.256
POLL = 0.02
# How long to wait for an event (not a timing assertion): a dying process closes its sockets within
# milliseconds, but a loaded 2-core machine can take a second to schedule it.
WAIT_STATE = 5
# sock_diag reports timers in ms from jiffies (4 ms at HZ=250); packet and snapshot times are aligned to
# CLOCK_MONOTONIC within 2 ms (see test_s01).
CLOCK_AND_JIFFY = 0.004 + 0.002 + SCHEDULING_SLACK


def _wait_for_state(host, state: str, **where) -> list[dict]:
    """The host's socket table once a socket matching `where` is in `state` (waits up to WAIT_STATE seconds)."""
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(WAIT_STATE), wait=tenacity.wait_fixed(POLL),
                                     reraise=True):
        with attempt:
            table = host.sockets(**where)
            assert [s for s in table if s["state"] == state], f"no {state} socket with {where}: {table}"
    return table


def _one(sockets: list[dict], **match) -> dict:
    found = [s for s in sockets if all(s[k] == v for k, v in match.items())]
    assert len(found) == 1, f"expected one socket with {match}, found {found} in {sockets}"
    return found[0]


@pytest.mark.sysctls(server={"net.ipv4.tcp_fin_timeout": FIN_TIMEOUT})
def test_s11_server_killed_client_idle_sees_eof(pair, record_property):
    """S11, seed experiment "server进程崩溃" (server process crashes, client connected but idle).

    When the server process dies its kernel closes the socket like close() would: a FIN reaches the client,
    whose recv() returns 0 (EOF) and whose socket sits in CLOSE_WAIT until it closes; the server's orphaned
    socket waits in FIN_WAIT2 for the client's FIN and disappears after tcp_fin_timeout.
    """
    client, server = pair.client, pair.server
    record_property("kernel_wait", FIN_TIMEOUT)
    proc = server.spawn_worker("server-process")
    listener = proc.listen(port=PORT, accept=True)
    assert listener.ok, listener
    conn = client.connect(addr=server.addr, port=PORT)
    assert conn.ok, conn
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(2), wait=tenacity.wait_fixed(POLL),
                                     reraise=True):
        with attempt:
            assert proc.accepted(handle=listener.handle), "the server process has not accepted yet"

    with capture(client, f"tcp port {PORT}") as wire:
        kill = Signal(proc, "SIGKILL").apply()
        server_after = _wait_for_state(server, "FIN_WAIT2", sport=PORT)
        eof = client.recv(handle=conn.handle, size=100, timeout=2)
        client_after = client.sockets(port=PORT)
    evidence = f"\n{kill.describe()} at {kill.applied_at:.6f}\n{eof}\n{wire.table(since=kill.applied_at)}"

    assert eof.ret == 0 and eof.errno is None, "recv() must return 0 (EOF)" + evidence
    assert wire.complete, "tcpdump must have written every packet it was given" + evidence
    fins = wire.tcp(src=server.addr, flags="F.")
    assert fins and {f.seq for f in fins} == {fins[0].seq}, "one FIN (retransmitted only if its ACK was late)" + evidence
    assert not [p for p in wire.tcp(port=PORT) if "R" in p.flags], "a crash with nothing unread sends no RST" + evidence
    # Receiving the FIN puts the client in delayed-ACK (pingpong) mode: its ACK is prompt on an idle machine
    # but may come after the server's retransmission timer on a busy one; the server's timer starts at the first.
    ack = [p for p in wire.tcp(src=client.addr, flags=".") if p.ack == fins[0].seq + 1]
    assert ack, "the client's kernel acknowledges the FIN" + evidence

    _one(client_after, dport=PORT, state="CLOSE_WAIT")
    orphan = _one(server_after, sport=PORT, state="FIN_WAIT2")
    assert not [s for s in server_after if s["state"] == "LISTEN"], "the dead process's listener is gone"

    # The orphan's timer is set to tcp_fin_timeout when the server processes the FIN's ACK: after the ACK
    # left the client and before the snapshot. sock_diag reports what is left of it, read between the
    # snapshot's t and t_end.
    fin_acked = ack[0].t
    left = orphan["expires_ms"] / 1000
    assert (FIN_TIMEOUT - (orphan["t_end"] - fin_acked) - CLOCK_AND_JIFFY <= left
            <= FIN_TIMEOUT + CLOCK_AND_JIFFY), (
        f"orphan timer {left:.3f} s left, read {orphan['t'] - fin_acked:.3f}-{orphan['t_end'] - fin_acked:.3f} s "
        f"after the ACK: {orphan}" + evidence)

    last_seen, first_gone = orphan["t"], None
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(FIN_TIMEOUT + 2),
                                     wait=tenacity.wait_fixed(POLL), reraise=True):
        with attempt:
            snapshot = server.sockets(port=PORT)
            if snapshot:
                last_seen = snapshot[0]["t"]
            assert snapshot == [], f"server socket still there: {snapshot}"
            first_gone = server.info()["clock"]["mono"]
    # The socket vanished between the last snapshot that showed it and the first that did not: never before
    # tcp_fin_timeout, at most TIMER_SLACK after it.
    assert first_gone - fin_acked >= FIN_TIMEOUT - CLOCK_AND_JIFFY, (
        f"FIN_WAIT2 gone after at most {first_gone - fin_acked:.3f} s, before tcp_fin_timeout={FIN_TIMEOUT} s" + evidence)
    assert last_seen - fin_acked <= FIN_TIMEOUT + TIMER_SLACK, (
        f"FIN_WAIT2 still there {last_seen - fin_acked:.3f} s after the FIN's ACK, tcp_fin_timeout={FIN_TIMEOUT} s" + evidence)
