"""The agent's socket-state sampler: on loopback connections through a local agent, and its parts in-process."""

from __future__ import annotations

import errno
import threading
import time
from typing import Any

import pytest
from agent_helpers import LOOPBACK, wait_until

from harness.agent.sampler import FixedRate, Sampler
from harness.agent.sockdiag import TCP_INFO_SUBSET
from harness.channel import BadRequest
from harness.endpoint import Endpoint
from harness.sockets import wait_for

PERIOD_MS = 2.0
# What a snapshot shows the sampler sees at its next sample: within a period, unless the machine starves its
# thread. Tests wait this long before stopping it (the result's late_ms says how late samples were).
SETTLE = 0.1
# The fields sampler entries share with `sockets` snapshot entries (tcp_info: TCP_INFO_SUBSET of it).
SHARED = ("proto", "family", "state", "src", "sport", "dst", "dport", "recv_q", "send_q", "inode", "cookie", "timer",
          "timer_name", "retrans", "expires_ms", "handle")


def connected(agent: Endpoint, **connect: Any) -> tuple[int, Any, Any, Any]:
    """(port, listener, client, accepted) records of a loopback connection."""
    listener = agent.listen(port=0, addr=LOOPBACK, accept=True)
    port = listener.extra["local"][1]
    client = agent.connect(LOOPBACK, port, **connect)
    (server,) = wait_until(lambda: agent.accepted(listener.handle), what="accept")
    return port, listener, client, server


def of_socket(entries: list[dict], sport: int, dport: int) -> list[dict]:
    return [e for e in entries if (e["sport"], e["dport"]) == (sport, dport)]


def states(entries: list[dict]) -> list[str]:
    return [e["state"] for e in entries if e["change"] != "fields"]


def test_close_sequence_is_caught_in_order(agent: Endpoint) -> None:
    port, _, client, server = connected(agent)
    cport = client.extra["local"][1]
    started = agent.sampler_start(port=port, period_ms=PERIOD_MS)
    agent.send(client.handle, size=1000)
    client_close = agent.close(client.handle)
    wait_for(agent, "FIN_WAIT2", dport=port)
    assert agent.recv(server.handle, size=1000).ret == 1000 and agent.recv(server.handle).ret == 0
    server_close = agent.close(server.handle)
    wait_for(agent, "TIME_WAIT", dport=port)
    time.sleep(SETTLE)
    result = agent.sampler_stop(started["id"])

    figures = {name: value for name, value in result.items() if name != "entries"}
    assert result["error"] is None and result["samples"] >= 2, figures
    ours = of_socket(result["entries"], cport, port)
    theirs = of_socket(result["entries"], port, cport)
    # FIN_WAIT1 lasts until the peer ACKs the FIN and LAST_ACK until the last ACK: on loopback either may pass
    # between two samples. The rest is certain.
    assert states(ours) in (["ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT"],
                            ["ESTABLISHED", "FIN_WAIT2", "TIME_WAIT"]), (ours, figures)
    assert states(theirs) in (["ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "GONE"],
                              ["ESTABLISHED", "CLOSE_WAIT", "GONE"]), (theirs, figures)
    # One socket through inode changes: named by its handle while open, inode 0 once closed, and TIME_WAIT
    # inherits its cookie.
    assert ours[0]["handle"] == client.handle and ours[0]["inode"] > 0 and ours[-1]["inode"] == 0
    assert len({e["cookie"] for e in ours}) == 1 and len({e["cookie"] for e in theirs}) == 1
    assert ours[0]["prev_t"] is None and ours[0]["t"] == started["t"]
    for entry in ours[1:] + theirs[1:]:
        assert entry["prev_t"] < entry["t"] < entry["t_end"], entry
    # Each change happened after the prev_t sample started and before the sample that saw it ended: never
    # before the syscall that caused it.
    assert all(e["t_end"] >= client_close.t0 for e in ours[1:] + theirs[1:]), (client_close, ours, theirs)
    assert ours[-1]["t_end"] >= server_close.t0 and theirs[-1]["t_end"] >= server_close.t0
    assert [e["t"] for e in ours] == sorted(e["t"] for e in ours)


def test_sockets_appear_and_go(agent: Endpoint) -> None:
    listener = agent.listen(port=0, addr=LOOPBACK, accept=True)
    port = listener.extra["local"][1]
    started = agent.sampler_start(port=port, period_ms=PERIOD_MS)
    client = agent.connect(LOOPBACK, port, options={"linger": [1, 0]})
    wait_until(lambda: agent.accepted(listener.handle), what="accept")
    wait_for(agent, "ESTABLISHED", port=port, count=2)
    abort = agent.close(client.handle)  # linger 0: RST, both ends vanish
    wait_until(lambda: [s["state"] for s in agent.sockets(port=port)] == ["LISTEN"], what="both ends gone")
    time.sleep(SETTLE)
    result = agent.sampler_stop(started["id"])

    (present,) = [e for e in result["entries"] if e["prev_t"] is None]
    assert (present["change"], present["state"], present["handle"]) == ("new", "LISTEN", listener.handle)
    appeared = [e for e in result["entries"] if e["change"] == "new" and e["prev_t"] is not None]
    gone = [e for e in result["entries"] if e["change"] == "gone"]
    assert len(appeared) == 2 and len(gone) == 2, result["entries"]
    assert {(e["sport"], e["dport"], e["cookie"]) for e in appeared} == {
        (e["sport"], e["dport"], e["cookie"]) for e in gone}
    for entry in gone:
        assert entry["state"] == "GONE" and entry["send_q"] is None and entry["tcp_info"] is None
        assert entry["prev_t"] < abort.t1 and entry["t_end"] > abort.t0, (abort, entry)


def test_fields_are_recorded_only_when_asked(agent: Endpoint) -> None:
    port, _, client, server = connected(agent)
    with_fields = agent.sampler_start(port=port, period_ms=PERIOD_MS, fields=True)
    states_only = agent.sampler_start(port=port, period_ms=PERIOD_MS)
    sent = agent.send(client.handle, size=1000)
    wait_until(lambda: [s["recv_q"] for s in agent.sockets(sport=port, states=["ESTABLISHED"])] == [1000],
               what="1000 bytes queued at the server")
    time.sleep(SETTLE)
    recorded = agent.sampler_stop(with_fields["id"])["entries"]
    plain = agent.sampler_stop(states_only["id"])["entries"]

    queued = [e for e in recorded if e["change"] == "fields" and e["handle"] == server.handle]
    assert [e["recv_q"] for e in queued] == [1000], recorded
    assert queued[0]["t_end"] > sent.t0
    assert [e["change"] for e in plain] == ["new"] * 3, plain  # listener and both ends, nothing changed state


def test_entries_agree_with_a_sockets_snapshot(agent: Endpoint) -> None:
    port, _, client, _ = connected(agent)
    agent.send(client.handle, size=300)
    wait_until(lambda: 300 in [s["recv_q"] for s in agent.sockets(sport=port)], what="300 bytes queued")
    snapshot = agent.sockets(port=port)
    started = agent.sampler_start(port=port, period_ms=1000)
    sampled = agent.sampler_stop(started["id"])["entries"]

    def shared(entry: dict) -> tuple:
        info = entry["tcp_info"]
        return tuple(entry[name] for name in SHARED), info and tuple(info[name] for name in TCP_INFO_SUBSET)

    assert len(snapshot) == 3 and {shared(e) for e in sampled} == {shared(e) for e in snapshot}, (sampled, snapshot)


def test_bad_arguments_and_unknown_ids(agent: Endpoint) -> None:
    with pytest.raises(BadRequest, match="argument 'period_ms' must be at least 1"):
        agent.sampler_start(period_ms=0.5)
    with pytest.raises(BadRequest, match="unknown state 'ESTAB'"):
        agent.sampler_start(states=["ESTAB"])
    with pytest.raises(BadRequest, match="argument 'proto' must be one of tcp, udp"):
        agent.sampler_start(proto="sctp")
    with pytest.raises(BadRequest, match="unknown sampler 'm999'"):
        agent.sampler_stop("m999")


def test_reset_stops_running_samplers(agent: Endpoint) -> None:
    started = agent.sampler_start(period_ms=5)
    assert agent.reset()["samplers"] == [started["id"]]
    with pytest.raises(BadRequest, match=f"unknown sampler '{started['id']}' .*; running: none"):
        agent.sampler_stop(started["id"])


def test_fixed_rate_ticks_skip_and_count_missed_ones() -> None:
    schedule = FixedRate(start=100.0, period=0.01)
    assert schedule.advance(100.004) == pytest.approx(100.01) and schedule.missed == 0
    # The sample of tick 1 ran until 2.5 periods later: ticks 2 and 3 passed, the next is tick 4.
    assert schedule.advance(100.035) == pytest.approx(100.04) and (schedule.tick, schedule.missed) == (4, 2)
    # The sample of tick 4 ended just after tick 5: one more missed.
    assert schedule.advance(100.0501) == pytest.approx(100.06) and (schedule.tick, schedule.missed) == (6, 3)


def test_fixed_rate_does_not_drift() -> None:
    start, period = 12345.678, 0.01
    schedule = FixedRate(start, period)
    for _ in range(10_000):
        due = schedule.advance(schedule.due + 0.3 * period)
    # Computed from the tick number: exact after 10 000 ticks (adding the period each time is 2 us off).
    assert due == start + 10_000 * period and schedule.missed == 0


class FakeMessage:
    """A sockdiag.Message made from an entry: the same key, state, view and entry."""

    def __init__(self, entry: dict) -> None:
        self.key = bytes(str([entry[name] for name in ("sport", "dport", "src", "dst", "cookie")]), "ascii")
        self.state = entry["state"]
        self._entry = entry

    def view(self) -> bytes:
        info = self._entry["tcp_info"]
        return bytes(str([self._entry["recv_q"], self._entry["send_q"],
                          info and [info[name] for name in ("retransmits", "probes", "backoff", "rto_us", "unacked")]]),
                     "ascii")

    def entry(self) -> dict:
        return dict(self._entry)


class ScriptedDump:
    """A dump returning the scripted socket lists in turn (then the last one again), or raising `fail`."""

    def __init__(self, script: list[list[dict]], fail: Exception | None = None) -> None:
        self.script = script
        self.fail = fail
        self.calls = 0
        self.done = threading.Event()

    def __call__(self) -> list[FakeMessage]:
        self.calls += 1
        if self.calls > len(self.script):
            self.done.set()
            if self.fail is not None:
                raise self.fail
        return [FakeMessage(entry) for entry in self.script[min(self.calls, len(self.script)) - 1]]


def sock(state: str, cookie: int = 7, send_q: int = 0, backoff: int = 0) -> dict:
    info = {"retransmits": backoff, "probes": 0, "backoff": backoff, "rto_us": 200_000 << backoff, "unacked": 1,
            "lost": 0, "total_retrans": backoff}
    return {"proto": "tcp", "family": "inet", "state": state, "src": "10.0.0.1", "sport": 40000, "dst": "10.0.0.2",
            "dport": 6666, "recv_q": 0, "send_q": send_q, "inode": 0, "cookie": cookie, "timer": 1,
            "timer_name": "on", "retrans": 0, "expires_ms": 200, "tcp_info": info}


def run(dump: ScriptedDump, fields: bool) -> dict[str, Any]:
    sampler = Sampler(dump, period=0.001, fields=fields, handles=dict)
    sampler.start()
    assert dump.done.wait(5), "the sampler did not go through its script"
    return sampler.stop()


SCRIPT = [[sock("ESTABLISHED")], [sock("ESTABLISHED", send_q=100)], [sock("FIN_WAIT1", send_q=100)],
          [sock("FIN_WAIT1", send_q=100, backoff=1)], [sock("FIN_WAIT1", send_q=100, backoff=1, cookie=8)], []]


@pytest.mark.parametrize("fields, changes", [
    (False, [("new", "ESTABLISHED", 7), ("state", "FIN_WAIT1", 7), ("new", "FIN_WAIT1", 8), ("gone", "GONE", 7),
             ("gone", "GONE", 8)]),
    (True, [("new", "ESTABLISHED", 7), ("fields", "ESTABLISHED", 7), ("state", "FIN_WAIT1", 7),
            ("fields", "FIN_WAIT1", 7), ("new", "FIN_WAIT1", 8), ("gone", "GONE", 7), ("gone", "GONE", 8)]),
])
def test_changes_per_socket_key(fields: bool, changes: list[tuple]) -> None:
    """A reused 4-tuple with a new cookie is a new socket; fields changes only with `fields`."""
    result = run(ScriptedDump(SCRIPT), fields)
    assert [(e["change"], e["state"], e["cookie"]) for e in result["entries"]] == changes
    times = [e["t"] for e in result["entries"]]
    assert times == sorted(times) and result["error"] is None
    assert result["samples"] >= len(SCRIPT) and result["cpu_s"] > 0


def test_a_failing_dump_ends_the_sampler_and_is_reported_at_stop() -> None:
    dump = ScriptedDump(SCRIPT[:3], fail=OSError(errno.ENOBUFS, "no buffer space"))
    result = run(dump, fields=False)
    assert result["error"]["type"] == "OSError" and result["error"]["errname"] == "ENOBUFS", result["error"]
    assert result["samples"] == 3 and dump.calls == 4
    assert [e["state"] for e in result["entries"]] == ["ESTABLISHED", "FIN_WAIT1"]


def test_a_bug_in_a_dump_is_an_internal_error() -> None:
    result = run(ScriptedDump(SCRIPT[:1], fail=KeyError("cookie")), fields=False)
    assert result["error"]["type"] == "Internal" and "KeyError" in result["error"]["traceback"]


def test_a_failing_first_dump_fails_the_start() -> None:
    sampler = Sampler(ScriptedDump([], fail=OSError(errno.EPERM, "no")), period=0.001, fields=False, handles=dict)
    with pytest.raises(OSError, match="no"):
        sampler.start()


def test_udp_sockets_are_sampled_like_snapshots_show_them(agent: Endpoint) -> None:
    sock = agent.socket(type="udp")
    port = agent.bind(sock.handle, addr=LOOPBACK, port=0).extra["local"][1]
    snapshot = agent.sockets(proto="udp", port=port)
    started = agent.sampler_start(proto="udp", port=port)
    sampled = agent.sampler_stop(started["id"])["entries"]
    assert [(e["state"], e["handle"], e["tcp_info"]) for e in snapshot] == [("CLOSE", sock.handle, None)]
    assert [tuple(e[name] for name in SHARED) for e in sampled] == [tuple(e[name] for name in SHARED)
                                                                    for e in snapshot]
