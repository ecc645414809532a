"""StateHistory, sample() and wait_for() on constructed sampler results and fake agents (no agent, no Docker)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from harness import evidence
from harness.sockets import SamplerFailed, StateHistory, StateNotReached, format_sockets, sample, wait_for
from harness.timeline import Timeline

CLIENT = {"src": "10.0.0.1", "sport": 40000, "dst": "10.0.0.2", "dport": 6666}
SERVER = {"src": "10.0.0.2", "sport": 6666, "dst": "10.0.0.1", "dport": 40000}
DUMP = 0.0005  # how long each constructed dump took (t_end - t)
T_LAST = 101.0


def entry(t: float, prev_t: float | None, change: str, state: str, where: dict, cookie: int,
          handle: str | None = None, backoff: int = 0) -> dict[str, Any]:
    gone = state == "GONE"
    info = None if gone else {"rto_us": 200_000 << backoff, "backoff": backoff, "retransmits": backoff,
                              "probes": 0, "unacked": 1, "lost": 0, "total_retrans": backoff}
    return {"t": t, "t_end": t + DUMP, "t_real": t + 1.7e9, "prev_t": prev_t, "change": change, "proto": "tcp",
            "family": "inet", **where, "state": state, "cookie": cookie, "inode": None if gone else 0,
            "recv_q": None if gone else 0, "send_q": None if gone else 1, "timer": None if gone else 1,
            "timer_name": None if gone else "on", "retrans": None if gone else 0,
            "expires_ms": None if gone else 200, "tcp_info": info, "handle": handle}


# Samples every 10 ms from 100.00 to 101.00. The client closes at about 100.045 and sits in FIN_WAIT1 (a
# retransmission at 100.1) until 100.5; the server socket goes at 100.7.
ENTRIES = [
    entry(100.00, None, "new", "ESTABLISHED", CLIENT, 1, handle="s2"),
    entry(100.02, 100.01, "new", "ESTABLISHED", SERVER, 2, handle="s3"),
    entry(100.05, 100.04, "state", "FIN_WAIT1", CLIENT, 1),
    entry(100.05, 100.04, "state", "CLOSE_WAIT", SERVER, 2, handle="s3"),
    entry(100.10, 100.09, "fields", "FIN_WAIT1", CLIENT, 1, backoff=1),
    entry(100.50, 100.49, "state", "FIN_WAIT2", CLIENT, 1),
    entry(100.60, 100.59, "state", "TIME_WAIT", CLIENT, 1),
    entry(100.70, 100.69, "gone", "GONE", SERVER, 2),
]
RESULT = {"id": "m1", "period_ms": 10.0, "fields": True, "samples": 101, "missed": 0, "t_first": 100.0,
          "t_last": T_LAST, "interval_ms": {"min": 9.9, "p50": 10.0, "p90": 10.1, "p99": 10.4, "max": 10.5,
                                            "mean": 10.0},
          "late_ms": None, "dump_ms": None, "cpu_s": 0.03, "error": None,
          "entries": ENTRIES}


def history(**changes: Any) -> StateHistory:
    loaded = StateHistory("client")
    loaded.load({**RESULT, **changes})
    return loaded


def test_spans_edges_and_bounds() -> None:
    (span,) = history().spans("FIN_WAIT1", dport=6666)
    assert (span.start, span.end) == (100.05, 100.50)
    assert (span.entered_after, span.entered_by, span.left_after, span.left_by) == (
        100.04, 100.05 + DUMP, 100.49, 100.50 + DUMP)
    assert span.duration == pytest.approx(0.45)
    assert span.bounds == pytest.approx((100.49 - 100.05 - DUMP, 100.50 + DUMP - 100.04))


def test_open_spans_and_sockets_present_from_the_start() -> None:
    loaded = history()
    established = loaded.first("ESTABLISHED", handle="s2")
    assert established.entered_after is None and established.bounds[1] is None
    time_wait = loaded.first("TIME_WAIT")
    assert (time_wait.end, time_wait.duration, time_wait.left_after) == (None, None, T_LAST)
    assert time_wait.bounds == pytest.approx((T_LAST - 100.60 - DUMP, None))


def test_held_first_and_states_reached() -> None:
    loaded = history()
    assert loaded.held("FIN_WAIT1") == [pytest.approx(0.45)]
    assert loaded.held("CLOSE_WAIT", sport=6666) == [pytest.approx(0.65)]
    assert loaded.held("TIME_WAIT") == [] and loaded.first("LAST_ACK") is None
    assert loaded.states_reached(port=6666) == {"ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE_WAIT"}
    assert loaded.states_reached(sport=6666) == {"ESTABLISHED", "CLOSE_WAIT"}
    assert [span.state for span in loaded.spans(port=6666)] == [
        "ESTABLISHED", "ESTABLISHED", "FIN_WAIT1", "CLOSE_WAIT", "FIN_WAIT2", "TIME_WAIT"]


def test_sockets_are_told_apart_by_cookie_and_selected() -> None:
    reused = entry(100.80, 100.79, "new", "SYN_SENT", CLIENT, 9)
    loaded = history(entries=[*ENTRIES, reused])
    assert [sock.states for sock in loaded.select(sport=40000)] == [
        ["ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT"], ["SYN_SENT"]]
    assert [sock.cookie for sock in loaded.select(handle="s3")] == [2]
    assert loaded.select(cookie=9, src="10.0.0.1")[0].label == "tcp 10.0.0.1:40000 -> 10.0.0.2:6666 (cookie 9)"
    with pytest.raises(TypeError, match="unknown socket filter 'state'; filters: port, sport"):
        loaded.select(state="FIN_WAIT1")


def test_table_json_and_events() -> None:
    loaded = history()
    table = loaded.table()
    lines = table.splitlines()
    assert lines[0].startswith("sampler on client: 101 samples every 10 ms, 0 ticks missed, interval p50 10.0 ms")
    assert "tcp 10.0.0.1:40000 -> 10.0.0.2:6666 (cookie 1)" in lines
    assert any(line.split()[:3] == ["+0.050000", "state", "FIN_WAIT1"] for line in lines), table
    assert any("fields" in line and "backoff 1" in line and "rto 400ms" in line for line in lines), table
    assert any(line.split() == ["+0.700000", "gone", "GONE"] for line in lines), table
    assert json.loads(json.dumps(loaded.to_json())) == ENTRIES
    events = loaded.events()
    assert [t for t, _, _ in events] == [e["t"] for e in ENTRIES]
    assert events[2][1].startswith("10.0.0.1:40000 > 10.0.0.2:6666 state  FIN_WAIT1  recv_q 0 send_q 1")
    assert StateHistory("server").table() == "(the sampler on server has not stopped: no history yet)"


def test_table_names_an_early_end() -> None:
    error = {"type": "OSError", "message": "sock_diag dump failed: No buffer space available", "errno": 105}
    assert "ended early: OSError: sock_diag dump failed" in history(error=error).table()


class FakeSamplerAgent:
    """sampler_start / sampler_stop of an agent, answering with `result`."""

    host = "client"

    def __init__(self, result: dict[str, Any]) -> None:
        self.result = result
        self.started: dict[str, Any] = {}
        self.stopped: list[str] = []

    def sampler_start(self, **filters: Any) -> dict[str, Any]:
        self.started = filters
        return {"id": "m1", "t": 100.0, "sockets": 1}

    def sampler_stop(self, id: str) -> dict[str, Any]:
        self.stopped.append(id)
        return self.result


def test_sample_fills_the_history_at_the_end_and_keeps_it_as_evidence() -> None:
    agent = FakeSamplerAgent(RESULT)
    with evidence.collecting() as collected:
        with sample(agent, port=6666, period_ms=1) as recorded:
            assert recorded.entries == [] and agent.started == {
                "proto": "tcp", "port": 6666, "sport": None, "dport": None, "states": None, "period_ms": 1,
                "fields": False}
    assert agent.stopped == ["m1"] and recorded.entries == ENTRIES
    assert collected.histories == [("client", recorded)]
    assert len(Timeline.of(collected).window(sources=["state"])) == len(ENTRIES)


def test_a_sampler_ended_by_an_error_fails_the_block() -> None:
    error = {"type": "OSError", "message": "sock_diag dump failed: No buffer space available", "errno": 105}
    with pytest.raises(SamplerFailed, match="the socket sampler on client ended early:.*No buffer space") as raised:
        with sample(FakeSamplerAgent({**RESULT, "error": error})):
            pass
    assert raised.value.history.entries == ENTRIES


def test_the_blocks_own_error_wins_and_the_sampler_still_stops() -> None:
    agent = FakeSamplerAgent({**RESULT, "error": {"type": "OSError", "message": "dump failed"}})
    with pytest.raises(ZeroDivisionError):
        with sample(agent) as recorded:
            1 / 0
    assert agent.stopped == ["m1"] and recorded.error["message"] == "dump failed"


class FakeSocketsHost:
    """`sockets` of a host answering with the scripted tables in turn (then the last one again)."""

    host = "server"

    def __init__(self, *tables: list[dict[str, Any]]) -> None:
        self.tables = tables
        self.calls: list[dict[str, Any]] = []

    def sockets(self, **filters: Any) -> list[dict[str, Any]]:
        self.calls.append(filters)
        return self.tables[min(len(self.calls), len(self.tables)) - 1]


def test_wait_for_returns_the_sockets_once_enough_are_in_the_state() -> None:
    established, closing = ENTRIES[1], ENTRIES[3]
    other = {**closing, "sport": 6667}
    host = FakeSocketsHost([established], [closing], [closing, other])
    assert wait_for(host, "CLOSE_WAIT", port=6666, count=2, poll=0.001) == [closing, other]
    assert host.calls == [{"proto": "tcp", "port": 6666}] * 3


def test_wait_for_fails_with_the_last_snapshot() -> None:
    snapshot = [{**ENTRIES[1], "t": 100.5}, {**ENTRIES[3], "src": "::1", "dst": "::1"}]
    with pytest.raises(StateNotReached) as raised:
        wait_for(FakeSocketsHost(snapshot), "LAST_ACK", sport=6666, timeout=0.05, poll=0.01)
    message = str(raised.value)
    assert isinstance(raised.value, AssertionError) and raised.value.snapshot == snapshot
    assert message.startswith("server: 0 of 1 tcp socket(s) with sport=6666 in LAST_ACK after 0.05 s; "
                              "last snapshot at t=100.500000:\nState")
    assert message.endswith(format_sockets(snapshot))
    rows = format_sockets(snapshot).splitlines()
    assert rows[1].split()[:5] == ["ESTABLISHED", "0", "1", "10.0.0.2:6666", "10.0.0.1:40000"]
    assert rows[2].split()[:5] == ["CLOSE_WAIT", "0", "1", "[::1]:6666", "[::1]:40000"] and rows[2].endswith("s3")
    assert format_sockets([]) == "(no sockets)"


def test_wait_for_does_not_retry_agent_errors() -> None:
    class Broken(FakeSocketsHost):
        def sockets(self, **filters: Any) -> list[dict[str, Any]]:
            self.calls.append(filters)
            raise ConnectionError("agent gone")

    host = Broken()
    with pytest.raises(ConnectionError):
        wait_for(host, "ESTABLISHED", timeout=1)
    assert len(host.calls) == 1
    with pytest.raises(ValueError, match="count must be at least 1"):
        wait_for(host, "ESTABLISHED", count=0)
