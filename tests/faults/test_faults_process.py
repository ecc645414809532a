"""Process faults: SIGSTOP/SIGCONT of a worker (checked in /proc, and by its kernel still ACKing), SIGTERM of
a command spawned by name."""

from __future__ import annotations

import pytest
import tenacity

from faults import Signal, Spawned

pytestmark = pytest.mark.faults

PORT = 7005
POLL = 0.02
# How long to wait for events (not timing assertions): a signal's effect shows in /proc within
# microseconds; a loaded 2-core machine can take a second to schedule the processes that observe it.
EVENT = 5


def _proc_state(host, pid: int) -> str:
    """The state letter of /proc/<pid>/stat (R, S, T, Z...) as the host's own procfs shows it."""
    stat = host.run(["cat", f"/proc/{pid}/stat"], check=True).stdout
    return stat.rsplit(")", 1)[1].split()[0]


def _wait_state(host, pid: int, state: str) -> str:
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(EVENT), wait=tenacity.wait_fixed(POLL),
                                     reraise=True):
        with attempt:
            now = _proc_state(host, pid)
            assert now == state, f"pid {pid} is {now}, not {state}"
    return now


def test_sigstop_freezes_the_process_not_its_kernel(pair):
    """S22's process variant: the stopped server process reads nothing, but its kernel ACKs the client's
    data; SIGCONT (heal) lets it read all of it."""
    client, server = pair.client, pair.server
    proc = server.spawn_worker("server-process")
    listener = proc.listen(port=PORT, accept=True)
    conn = client.connect(server.addr, PORT)
    assert listener.ok and conn.ok, (listener, conn)
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(EVENT), wait=tenacity.wait_fixed(POLL),
                                     reraise=True):
        with attempt:
            accepted = proc.accepted(listener.handle)
            assert accepted

    fault = Signal(proc, "SIGSTOP")
    with fault:
        stopped = _wait_state(server, proc.pid, "T")
        sent = client.send(conn.handle, size=10_000)
        for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(EVENT), wait=tenacity.wait_fixed(POLL),
                                         reraise=True):
            with attempt:
                buffered = server.sockets(sport=PORT, states=["ESTABLISHED"])
                assert buffered and buffered[0]["recv_q"] == 10_000, buffered
    fault.heal()
    running = _proc_state(server, proc.pid)
    received = proc.recv(accepted[0].handle, size=20_000, timeout=EVENT)
    evidence = f"\n{fault.record()}\nsent {sent}\nserver socket {buffered}\nrecv {received}"

    assert stopped == "T" and running in ("S", "R"), evidence
    assert sent.ok and sent.ret == 10_000, evidence
    assert received.ok and received.ret == 10_000, "the data waited in the stopped process's socket" + evidence


def test_sigterm_to_a_spawned_command(pair):
    server = pair.server
    server.spawn(["sleep", "60"], name="sleeper")
    fault = Signal(Spawned(server, "sleeper"), "SIGTERM").apply()
    ended = server.wait("sleeper", timeout=EVENT)
    fault.heal()
    assert ended.signal == "SIGTERM" and not ended.timed_out, ended
    assert fault.describe() == "SIGTERM to process sleeper (not undoable)"


def test_signal_to_a_process_that_is_gone_fails(pair):
    """A signal that cannot be delivered is an error, not a fault in force."""
    server = pair.server
    proc = server.spawn_worker("short-lived")
    Signal(proc, "SIGKILL").apply()
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(EVENT), wait=tenacity.wait_fixed(POLL),
                                     reraise=True):
        with attempt:
            assert server.run(["test", "-e", f"/proc/{proc.pid}"]).returncode == 1, "not reaped yet"
    fault = Signal(proc, "SIGSTOP")
    with pytest.raises(ProcessLookupError, match="SIGSTOP to process short-lived failed") as raised:
        fault.apply()
    assert "ESRCH" in str(raised.value) and fault.applied_at is None, raised.value
