"""Socket ops of a local agent over loopback: records, errnos, blocking and non-blocking behaviour."""

from __future__ import annotations

import time

import pytest
from agent_helpers import LOOPBACK, free_port, wait_until

from harness.channel import BadRequest
from harness.endpoint import Endpoint
from harness.records import SendLoop

# Timers never fire early, but a loaded 2-core machine can wake a thread seconds late: lower bounds are
# exact, upper bounds only catch gross errors (a unit mix-up, a missing timeout).
LATE = 2.5


def connected_pair(agent: Endpoint, **listen_args) -> tuple[str, str, int]:
    """(client handle, accepted server handle, port) of one loopback connection."""
    listener = agent.listen(port=0, addr=LOOPBACK, accept=True, **listen_args)
    port = listener.extra["local"][1]
    client = agent.connect(LOOPBACK, port)
    assert client.ok, client
    accepted = wait_until(lambda: agent.accepted(listener.handle), what="accept")
    return client.handle, accepted[0].handle, port


def test_connect_without_listener_is_refused_at_once(agent: Endpoint) -> None:
    port = free_port()
    before_mono, before_real = time.monotonic(), time.time()
    record = agent.connect(LOOPBACK, port)
    after_mono = time.monotonic()

    assert (record.op, record.ret, record.errno, record.errname) == ("connect", None, 111, "ECONNREFUSED")
    assert record.strerror == "Connection refused"
    assert before_mono <= record.t0 <= record.t1 <= after_mono
    assert record.elapsed < 0.5  # "at once": the RST comes back inside the call
    assert record.t0_real - record.t0 == pytest.approx(before_real - before_mono, abs=0.05)
    assert record.extra["peer"] == [LOOPBACK, port]
    assert str(record).startswith(f"connect {record.handle} -> -1 ECONNREFUSED (Connection refused) in ")


def test_round_trip_and_eof_after_peer_close(agent: Endpoint) -> None:
    client, server, port = connected_pair(agent)

    sent = agent.send(client, data=b"ping\x00pong")
    received = agent.recv(server, size=100)
    assert (sent.ret, sent.extra["flags"]) == (9, ["MSG_NOSIGNAL"])
    assert (received.ret, received.data) == (9, b"ping\x00pong")
    (client_entry,) = agent.sockets(dport=port, states=["ESTABLISHED"])
    assert client_entry["handle"] == client
    assert 0 <= client_entry["t_end"] - client_entry["t"] < 1, "the dump's span on CLOCK_MONOTONIC"

    assert agent.close(client).ok
    eof = agent.recv(server)
    assert (eof.ret, eof.errno, eof.data) == (0, None, b"")


def test_pattern_payload_crosses_intact(agent: Endpoint) -> None:
    client, server, _ = connected_pair(agent)
    agent.send(client, size=600)
    data = b""
    while len(data) < 600:
        data += agent.recv(server, size=600).data
    assert data == bytes(range(256)) * 2 + bytes(range(88))


def test_blocking_recv_does_not_hold_up_other_requests(agent: Endpoint) -> None:
    client, server, port = connected_pair(agent)
    pending = agent.recv(server, background=True)

    started = time.monotonic()
    for _ in range(5):
        agent.info()
    other = agent.connect(LOOPBACK, port)
    assert other.ok and agent.close(other.handle).ok
    assert time.monotonic() - started < 3
    assert not pending.done()

    sent = agent.send(client, data=b"late")
    record = pending.result(timeout=5)
    assert record.data == b"late"
    assert record.t0 < sent.t0 <= record.t1  # it was blocked in recv() until the data came


def test_recv_timeout_uses_so_rcvtimeo_and_gives_eagain(agent: Endpoint) -> None:
    _, server, _ = connected_pair(agent)
    record = agent.recv(server, timeout=0.3)
    assert (record.errname, record.extra["timeout_via"]) == ("EAGAIN", "SO_RCVTIMEO")
    assert 0.3 <= record.elapsed < 0.3 + LATE  # the kernel timer cannot fire early
    # The socket's own SO_RCVTIMEO is back to "none" afterwards.
    assert agent.getsockopt(server, "rcvtimeo").extra["value"] == 0


def test_nonblocking_send_fills_the_buffer_until_eagain(agent: Endpoint) -> None:
    client, server, port = connected_pair(agent, options={"rcvbuf": 4096})
    agent.setsockopt(client, {"sndbuf": 4096})

    loop = agent.send(client, size=65536, count=None, nonblocking=True)

    assert isinstance(loop, SendLoop)
    assert loop.stopped == "errno"
    assert [r.errname for r in loop] == [None] * (len(loop) - 1) + ["EAGAIN"]
    assert loop.total == sum(r.ret for r in loop[:-1]) > 0
    assert "MSG_DONTWAIT" in loop[-1].extra["flags"]

    def queued() -> int:
        by_handle = {s["handle"]: s for s in agent.sockets(port=port)}
        return by_handle[client]["send_q"] + by_handle[server]["recv_q"]

    # Every byte the kernel accepted sits in the client's send queue or the server's receive queue.
    wait_until(lambda: queued() == loop.total, what=f"queues holding the {loop.total} bytes sent")


def test_send_loop_stops_after_count_with_interval(agent: Endpoint) -> None:
    client, _, _ = connected_pair(agent)
    loop = agent.send(client, size=10, count=3, interval=0.1)
    assert (len(loop), loop.stopped, loop.total) == (3, "count", 30)
    gaps = [b.t0 - a.t0 for a, b in zip(loop, loop[1:])]
    assert all(0.1 <= gap < 0.1 + LATE for gap in gaps), gaps


def test_nonblocking_connect_select_ready_when_handshake_completes(agent: Endpoint) -> None:
    listener = agent.listen(port=0, addr=LOOPBACK, backlog=4)  # never accepts
    port = listener.extra["local"][1]
    record = agent.connect(LOOPBACK, port, nonblocking=True, select_timeout=2)
    assert record.errname == "EINPROGRESS"
    selected = record.sub("select")
    assert (selected.op, selected.extra["ready"], selected.ret) == ("select", True, 1)
    assert selected.t0 >= record.t1 and selected.elapsed < 1
    assert (record.sub("so_error").extra["value"], record.sub("so_error").extra["value_name"]) == (0, None)
    assert agent.sockets(sport=record.extra["local"][1])[0]["state"] == "ESTABLISHED"


def test_nonblocking_connect_times_out_in_select_when_the_accept_queue_is_full(agent: Endpoint) -> None:
    listener = agent.listen(port=0, addr=LOOPBACK, backlog=0)  # holds one connection, never accepts
    port = listener.extra["local"][1]
    assert agent.connect(LOOPBACK, port).ok
    wait_until(lambda: agent.sockets(port=port, states=["LISTEN"])[0]["recv_q"] == 1, what="accept queue 1")

    record = agent.connect(LOOPBACK, port, nonblocking=True, select_timeout=0.5)

    assert record.errname == "EINPROGRESS"
    selected = record.sub("select")
    assert (selected.extra["ready"], selected.ret) == (False, 0)
    assert 0.5 <= selected.elapsed < 0.5 + LATE
    assert record.sub("so_error").extra["value"] == 0
    mine = agent.sockets(sport=record.extra["local"][1])
    assert [(s["state"], s["handle"]) for s in mine] == [("SYN_SENT", record.handle)]


def test_bind_in_use_then_reuseaddr(agent: Endpoint) -> None:
    first = agent.listen(port=0, addr=LOOPBACK)
    port = first.extra["local"][1]
    second = agent.listen(port=port, addr=LOOPBACK)
    assert (second.op, second.errname, second.handle) == ("bind", "EADDRINUSE", None)
    assert [s.op for s in second.subs("setup")] == ["socket"]

    sock = agent.socket(options={"reuseaddr": True})
    assert sock.ok and [(o.op, o.extra["name"]) for o in sock.subs("options")] == [("setsockopt", "reuseaddr")]
    assert agent.bind(sock.handle, LOOPBACK, free_port()).ok


def test_options_round_trip(agent: Endpoint) -> None:
    sock = agent.socket().handle
    records = agent.setsockopt(sock, {"keepalive": True, "keepidle": 7, "keepintvl": 3, "keepcnt": 4,
                                      "user_timeout": 1500, "syncnt": 2, "nodelay": 1, "linger": [1, 0],
                                      "rcvtimeo": 1.25, "sndtimeo": 0.5, "nonblocking": True})
    assert [r.op for r in records] == ["setsockopt"] * 10 + ["ioctl"]
    assert all(r.ok for r in records), [str(r) for r in records]
    values = {name: agent.getsockopt(sock, name).extra["value"]
              for name in ("keepalive", "keepidle", "keepintvl", "keepcnt", "user_timeout", "syncnt", "nodelay",
                           "linger", "rcvtimeo", "sndtimeo", "nonblocking")}
    # The kernel keeps SO_RCVTIMEO/SO_SNDTIMEO in jiffies: they read back rounded up to a tick (<= 10 ms).
    assert values.pop("rcvtimeo") == pytest.approx(1.25, abs=0.01)
    assert values.pop("sndtimeo") == pytest.approx(0.5, abs=0.01)
    assert values == {"keepalive": 1, "keepidle": 7, "keepintvl": 3, "keepcnt": 4, "user_timeout": 1500,
                      "syncnt": 2, "nodelay": 1, "linger": [1, 0], "nonblocking": True}


def test_reset_closes_handles_and_wakes_blocked_calls(agent: Endpoint) -> None:
    client, server, port = connected_pair(agent)
    (listener,) = agent.sockets(port=port, states=["LISTEN"])
    pending = agent.recv(server, background=True)

    result = agent.reset()

    assert sorted(result["closed"]) == sorted([listener["handle"], client, server])
    assert pending.result(timeout=5).ret == 0  # shutdown() woke the blocked recv with EOF
    assert agent.sockets(port=port, states=["LISTEN", "ESTABLISHED"]) == []


def test_select_waits_for_readability_and_times_out(agent: Endpoint) -> None:
    client, server, _ = connected_pair(agent)
    writable = agent.select(client, write=True, timeout=2)
    assert (writable.op, writable.ret) == ("select", 1)
    assert (writable.extra["writable"], writable.extra["readable"]) == (True, False)
    assert writable.elapsed < 1

    silent = agent.select(client, read=True, timeout=0.3)
    assert (silent.ret, silent.extra["readable"], silent.extra["writable"]) == (0, False, False)
    assert 0.3 <= silent.elapsed < 0.3 + LATE

    pending = agent.select(client, read=True, background=True)
    assert agent.send(server, size=5).ok
    readable = pending.result(timeout=5)
    assert (readable.ret, readable.extra["readable"], readable.extra["timeout"]) == (1, True, None)


def test_select_needs_a_direction(agent: Endpoint) -> None:
    client, _, _ = connected_pair(agent)
    with pytest.raises(BadRequest, match="read=true, write=true or both"):
        agent.select(client, timeout=1)
