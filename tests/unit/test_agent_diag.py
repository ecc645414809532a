"""Socket snapshots (sock_diag through pyroute2), checked against `ss -tan` parsed here independently."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from agent_helpers import LOOPBACK, wait_until

from harness.channel import BadRequest
from harness.endpoint import Endpoint

SS_STATES = {"ESTAB": "ESTABLISHED", "SYN-SENT": "SYN_SENT", "SYN-RECV": "SYN_RECV", "FIN-WAIT-1": "FIN_WAIT1",
             "FIN-WAIT-2": "FIN_WAIT2", "TIME-WAIT": "TIME_WAIT", "CLOSE-WAIT": "CLOSE_WAIT",
             "LAST-ACK": "LAST_ACK", "LISTEN": "LISTEN", "CLOSING": "CLOSING", "UNCONN": "CLOSE"}

Row = tuple[str, str, int, str, int, int, int]


def ss_rows(port: int) -> set[Row]:
    """(state, src, sport, dst, dport, recv_q, send_q) of TCP sockets on `port`, as `ss -tan` prints them."""
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed: the snapshot cannot be cross-checked")
    out = subprocess.run(["ss", "-tanH"], capture_output=True, text=True, check=True).stdout
    rows = set()
    for line in out.splitlines():
        state, recv_q, send_q, local, peer = line.split()[:5]
        src, sport = local.rsplit(":", 1)
        dst, dport = peer.rsplit(":", 1)
        row = (SS_STATES[state], src, int(sport), dst, 0 if dport == "*" else int(dport), int(recv_q), int(send_q))
        if port in (row[2], row[4]):
            rows.add(row)
    return rows


def diag_rows(agent: Endpoint, port: int) -> set[Row]:
    return {(s["state"], s["src"], s["sport"], s["dst"], s["dport"], s["recv_q"], s["send_q"])
            for s in agent.sockets(port=port)}


def test_states_and_queues_match_ss(agent: Endpoint) -> None:
    listener = agent.listen(port=0, addr=LOOPBACK, backlog=7)
    port = listener.extra["local"][1]
    client = agent.connect(LOOPBACK, port)
    agent.send(client.handle, size=1000)
    cport = client.extra["local"][1]

    # Not accepted yet: the connection waits in the accept queue (LISTEN Recv-Q 1, Send-Q the backlog).
    wait_until(lambda: ("ESTABLISHED", LOOPBACK, port, LOOPBACK, cport, 1000, 0) in diag_rows(agent, port),
               what="1000 bytes queued at the server")
    expected = {("LISTEN", LOOPBACK, port, "0.0.0.0", 0, 1, 7),
                ("ESTABLISHED", LOOPBACK, cport, LOOPBACK, port, 0, 0),
                ("ESTABLISHED", LOOPBACK, port, LOOPBACK, cport, 1000, 0)}
    assert diag_rows(agent, port) == expected == ss_rows(port)

    server = agent.accept(listener.handle)
    assert agent.recv(server.handle, size=1000).ret == 1000
    agent.close(server.handle)
    # The unread FIN takes a sequence number: ss shows Recv-Q 1 in CLOSE_WAIT.
    expected = {("LISTEN", LOOPBACK, port, "0.0.0.0", 0, 0, 7),
                ("CLOSE_WAIT", LOOPBACK, cport, LOOPBACK, port, 1, 0),
                ("FIN_WAIT2", LOOPBACK, port, LOOPBACK, cport, 0, 0)}
    wait_until(lambda: diag_rows(agent, port) == expected, what="CLOSE_WAIT / FIN_WAIT2")
    assert ss_rows(port) == expected


def test_entries_carry_handles_tcp_info_and_time(agent: Endpoint) -> None:
    listener = agent.listen(port=0, addr=LOOPBACK, accept=True)
    port = listener.extra["local"][1]
    client = agent.connect(LOOPBACK, port)
    (accepted,) = wait_until(lambda: agent.accepted(listener.handle), what="accept")

    entries = {s["handle"]: s for s in agent.sockets(port=port)}

    assert set(entries) == {listener.handle, client.handle, accepted.handle}
    assert entries[listener.handle]["tcp_info"] is None  # LISTEN: the kernel's tcp_info holds queue sizes
    info = entries[client.handle]["tcp_info"]
    assert info["rto_us"] >= 200_000 and info["retransmits"] == 0 and info["unacked"] == 0
    assert set(info) >= {"rto_us", "backoff", "retransmits", "probes", "unacked", "lost", "total_retrans"}
    assert entries[client.handle]["cong"]  # the congestion control in use (bbr, cubic, ...)
    assert all(e["inode"] > 0 and e["t"] > client.t1 for e in entries.values())


def test_filters_and_bad_state_names(agent: Endpoint) -> None:
    listener = agent.listen(port=0, addr=LOOPBACK)
    port = listener.extra["local"][1]
    agent.connect(LOOPBACK, port)
    assert [s["state"] for s in agent.sockets(port=port, states=["LISTEN"])] == ["LISTEN"]
    assert len(agent.sockets(dport=port)) == 1 and len(agent.sockets(sport=port)) == 2
    assert agent.sockets(proto="udp", port=port) == []
    with pytest.raises(BadRequest, match="unknown state 'ESTAB'.*ESTABLISHED"):
        agent.sockets(states=["ESTAB"])
