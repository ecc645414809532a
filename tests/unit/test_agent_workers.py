"""Workers: child agents holding their own sockets, and what their death looks like to requests and peers."""

from __future__ import annotations

import os

import pytest
from agent_helpers import LOOPBACK, wait_until

from harness.channel import BadRequest, ProcessDied
from harness.endpoint import Endpoint, WorkerEndpoint


def serve_in_worker(agent: Endpoint, worker: WorkerEndpoint) -> tuple[str, str, int]:
    """(client handle in the main agent, server handle in the worker, port)."""
    listener = worker.listen(port=0, addr=LOOPBACK, accept=True)
    port = listener.extra["local"][1]
    client = agent.connect(LOOPBACK, port)
    assert client.ok, client
    accepted = wait_until(lambda: worker.accepted(listener.handle), what="accept in the worker")
    return client.handle, accepted[0].handle, port


def test_worker_is_its_own_process_with_its_own_handles(agent: Endpoint) -> None:
    worker = agent.spawn_worker("srv")
    info = worker.info()
    assert (info["pid"], info["worker"], info["name"], info["sigpipe"]) == (worker.pid, True, "srv", "ignore")
    assert worker.pid != agent.info()["pid"]

    client, server, port = serve_in_worker(agent, worker)
    assert server.startswith("srv:s")
    by_inode_owner = {(s["sport"], s["dport"]): s["handle"] for s in worker.sockets(port=port)}
    assert by_inode_owner[(port, 0)] is not None  # the worker names its own listener...
    assert all(s["handle"] is None for s in agent.sockets(port=port) if s["sport"] == port)  # ...main does not
    with pytest.raises(BadRequest, match=f"unknown handle '{client}'"):
        worker.recv(client)


def test_sigkill_fails_pending_request_with_process_died_and_peer_sees_eof(agent: Endpoint) -> None:
    worker = agent.spawn_worker("srv")
    client, server, port = serve_in_worker(agent, worker)
    pending = worker.recv(server, background=True)

    record = worker.signal("SIGKILL")

    assert (record.op, record.ok, record.extra["signal"], record.extra["target_pid"]) == \
        ("pidfd_send_signal", True, "SIGKILL", worker.pid)
    with pytest.raises(ProcessDied) as died:
        pending.result(timeout=10)
    assert (died.value.signal, died.value.returncode) == ("SIGKILL", -9)
    assert "local/srv: recv:" in str(died.value) and "died by SIGKILL" in str(died.value)
    # The kernel closed the dead process's socket: FIN to the client, which reads EOF.
    assert agent.recv(client, timeout=5).ret == 0
    # The closed side waits in FIN_WAIT2 once its FIN is ACKed. The FIN puts the receiver in delayed-ACK
    # (pingpong) mode, so on a busy machine the ACK can still be pending: FIN_WAIT1 is then correct too.
    states = {s["state"] for s in agent.sockets(port=port)}
    assert states in ({"CLOSE_WAIT", "FIN_WAIT2"}, {"CLOSE_WAIT", "FIN_WAIT1"}), states
    with pytest.raises(ProcessDied, match="died by SIGKILL"):
        worker.info()  # later requests fail the same way
    assert not os.path.exists(f"/proc/{worker.pid}")


def reset_peer(agent: Endpoint, worker: WorkerEndpoint) -> str:
    """A connection from `worker` whose peer (in the main agent) was closed with an RST; the worker's handle."""
    listener = agent.listen(port=0, addr=LOOPBACK, accept=True)
    port = listener.extra["local"][1]
    client = worker.connect(LOOPBACK, port)
    (accepted,) = wait_until(lambda: agent.accepted(listener.handle), what="accept")
    agent.setsockopt(accepted.handle, {"linger": [1, 0]})
    agent.close(accepted.handle)  # linger 0: RST instead of FIN
    wait_until(lambda: not worker.sockets(sport=client.extra["local"][1]), what="the worker's socket reset")
    return client.handle


def test_write_after_reset_kills_a_worker_with_default_sigpipe(agent: Endpoint) -> None:
    worker = agent.spawn_worker("writer", sigpipe="default")
    assert worker.info()["sigpipe"] == "default"
    handle = reset_peer(agent, worker)

    first = worker.send(handle, size=10, flags=[])
    assert first.errname == "ECONNRESET"  # the RST's error is reported once...
    with pytest.raises(ProcessDied) as died:
        worker.send(handle, size=10, flags=[])  # ...then EPIPE, and with it SIGPIPE
    assert (died.value.signal, died.value.returncode) == ("SIGPIPE", -13)


@pytest.mark.parametrize("sigpipe, flags", [("default", None), ("ignore", [])],
                         ids=["default-handler-with-MSG_NOSIGNAL", "ignored-without-MSG_NOSIGNAL"])
def test_write_after_reset_gives_epipe_when_sigpipe_cannot_kill(
    agent: Endpoint, sigpipe: str, flags: list[str] | None
) -> None:
    worker = agent.spawn_worker("writer", sigpipe=sigpipe)
    handle = reset_peer(agent, worker)
    loop = worker.send(handle, size=10, count=2, flags=flags)
    assert [r.errname for r in loop] == ["ECONNRESET"]  # a loop stops at the first errno
    assert worker.send(handle, size=10, flags=flags).errname == "EPIPE"
    assert worker.info()["pid"] == worker.pid


def test_unknown_worker_and_duplicate_names_are_bad_requests(agent: Endpoint) -> None:
    agent.spawn_worker("w1")
    with pytest.raises(BadRequest, match="exists already"):
        agent.spawn_worker("w1")
    with pytest.raises(BadRequest, match="unknown process 'nope'.*known: w1"):
        Endpoint(agent.channel, "local", proc="nope").info()
    with pytest.raises(BadRequest, match="argument 'sigpipe'"):
        agent.spawn_worker("w2", sigpipe="maybe")
