"""Socket states over time: a sampler in a host's agent (`sample`), the history it records, and `wait_for`.

    with sample(client, port=PORT, period_ms=10) as history:
        client.close(handle)
        wait_for(client, "FIN_WAIT2", dport=PORT)
    (span,) = history.spans("FIN_WAIT1", dport=PORT)

Times are CLOCK_MONOTONIC seconds, the clock of syscall records, captures and faults. A sampler only sees a
socket when it dumps the table, so each edge of a span is known within one sampling interval: a change
happened after the previous sample began and before the sample that saw it ended (`Span.bounds`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import tenacity

from . import evidence
from .endpoint import Endpoint
from .errors import NetfaultError

if TYPE_CHECKING:
    from .backends.base import Host

KEY = ("proto", "family", "src", "sport", "dst", "dport", "cookie")
WHERE = ("port", "sport", "dport", "src", "dst", "proto", "family", "cookie", "handle")
TCP_INFO_SHOWN = ("rto_us", "backoff", "retransmits", "probes", "unacked", "lost", "total_retrans")
WAIT_POLL = 0.02

Entry = dict[str, Any]


class SamplerFailed(NetfaultError):
    """A sampler's dump failed and ended it early; `history` holds what it recorded until then."""

    def __init__(self, history: StateHistory) -> None:
        super().__init__(f"the socket sampler on {history.host} ended early: {history.error}\n{history.table()}")
        self.history = history


class StateNotReached(AssertionError):
    """`wait_for` timed out; `snapshot` is the last socket table it read (also in the message)."""

    def __init__(self, message: str, snapshot: list[Entry]) -> None:
        super().__init__(message)
        self.snapshot = snapshot


@dataclass(frozen=True)
class Span:
    """One stretch of one socket in one state.

    `start` and `end` are the times of the first sample that showed the state and of the first that showed
    another one (or the socket gone); `end` is None when the state lasted until sampling stopped. The change
    into the state happened in (`entered_after`, `entered_by`], the change out of it in (`left_after`,
    `left_by`]; `entered_after` is None when the socket was in the state when sampling began.
    """

    state: str
    start: float
    end: float | None
    entered_after: float | None
    entered_by: float
    left_after: float
    left_by: float | None

    @property
    def duration(self) -> float | None:
        """`end - start`: each edge is late by less than one sampling interval. None while open."""
        return None if self.end is None else self.end - self.start

    @property
    def bounds(self) -> tuple[float, float | None]:
        """The shortest and the longest time the socket can have been in the state, given the samples
        (longest None when an edge is open)."""
        shortest = max(0.0, self.left_after - self.entered_by)
        if self.left_by is None or self.entered_after is None:
            return shortest, None
        return shortest, self.left_by - self.entered_after


class SocketHistory:
    """The entries of one socket (its 4-tuple and kernel cookie) in time order, and its spans."""

    def __init__(self, entries: list[Entry], last_sample: float) -> None:
        self.entries = entries
        self.spans = _spans(entries, last_sample)
        first = entries[0]
        self.proto, self.family, self.src, self.sport, self.dst, self.dport, self.cookie = (
            first[name] for name in KEY)

    @property
    def states(self) -> list[str]:
        """The states it went through, in order (not "GONE")."""
        return [span.state for span in self.spans]

    @property
    def label(self) -> str:
        return f"{self.proto} {_addr(self.src, self.sport)} -> {_addr(self.dst, self.dport)} (cookie {self.cookie})"

    def matches(self, where: dict[str, Any]) -> bool:
        for name, value in where.items():
            if name == "port":
                found = value in (self.sport, self.dport)
            elif name == "handle":
                found = any(entry["handle"] == value for entry in self.entries)
            else:
                found = getattr(self, name) == value
            if not found:
                return False
        return True


def _spans(entries: list[Entry], last_sample: float) -> list[Span]:
    """Consecutive entries in one state (changes of fields only) make one span."""
    spans, current = [], None
    for entry in entries:
        if current is not None and entry["state"] == current["state"]:
            continue
        if current is not None:
            spans.append(Span(current["state"], current["t"], entry["t"], current["prev_t"], current["t_end"],
                              entry["prev_t"], entry["t_end"]))
        current = None if entry["state"] == "GONE" else entry
    if current is not None:
        spans.append(Span(current["state"], current["t"], None, current["prev_t"], current["t_end"],
                          last_sample, None))
    return spans


class StateHistory:
    """What a sampler recorded on `host`; empty until the sampler stops (`load`).

    `entries` are the agent's (docs/design.md, "Socket samplers"), `figures` the rest of its stop result:
    samples, missed ticks, interval/late/dump statistics (ms), the sampler thread's CPU time, and `error`.
    Filters (`**where`) select sockets by port (either end), sport, dport, src, dst, proto, family, cookie or
    handle (any of its entries).
    """

    def __init__(self, host: str) -> None:
        self.host = host
        self.entries: list[Entry] = []
        self.figures: dict[str, Any] = {}
        self.sockets: list[SocketHistory] = []

    def load(self, result: dict[str, Any]) -> None:
        self.entries = list(result["entries"])
        self.figures = {name: value for name, value in result.items() if name != "entries"}
        grouped: dict[tuple[Any, ...], list[Entry]] = {}
        for entry in self.entries:
            grouped.setdefault(tuple(entry[name] for name in KEY), []).append(entry)
        self.sockets = [SocketHistory(entries, result["t_last"]) for entries in grouped.values()]

    @property
    def error(self) -> dict[str, Any] | None:
        """The agent's error object when a failed dump ended the sampler early, else None."""
        return self.figures.get("error")

    def select(self, **where: Any) -> list[SocketHistory]:
        unknown = sorted(set(where) - set(WHERE))
        if unknown:
            raise TypeError(f"unknown socket filter {unknown[0]!r}; filters: {', '.join(WHERE)}")
        return [sock for sock in self.sockets if sock.matches(where)]

    def spans(self, state: str | None = None, **where: Any) -> list[Span]:
        """Spans in `state` (any state if None) of the sockets `where` selects, by start time."""
        return sorted((span for sock in self.select(**where) for span in sock.spans
                       if state is None or span.state == state), key=lambda span: span.start)

    def held(self, state: str, **where: Any) -> list[float]:
        """How long each selected socket stayed in `state`, for the spans that ended while sampling."""
        return [span.duration for span in self.spans(state, **where) if span.duration is not None]

    def first(self, state: str, **where: Any) -> Span | None:
        """The earliest span in `state`, None if no selected socket reached it."""
        return next(iter(self.spans(state, **where)), None)

    def base_rto(self, before: float) -> float:
        """The RTO (seconds) last recorded at or before `before` with no backoff: the timeout a retransmission
        schedule starting then doubles from (needs `fields=True` or a state change to have recorded tcp_info)."""
        found = [e["tcp_info"]["rto_us"] for e in self.entries
                 if e.get("tcp_info") and e["t"] <= before and e["tcp_info"]["backoff"] == 0]
        if not found:
            raise LookupError(f"no tcp_info without backoff recorded by {before:.6f}:\n{self.table()}")
        return found[-1] / 1e6

    def states_reached(self, **where: Any) -> set[str]:
        return {span.state for span in self.spans(None, **where)}

    def to_json(self) -> list[Entry]:
        """The entries, JSON-serialisable (the agent's own dicts)."""
        return [dict(entry) for entry in self.entries]

    def events(self) -> list[tuple[float, str, Entry]]:
        """(t, text, entry) per entry, for the timeline (harness.timeline)."""
        return [(entry["t"], f"{_addr(entry['src'], entry['sport'])} > {_addr(entry['dst'], entry['dport'])} "
                             f"{entry['change']:<6} {_details(entry)}", entry) for entry in self.entries]

    def table(self) -> str:
        """The history per socket, times relative to the first sample, for failure messages."""
        if not self.figures:
            return f"(the sampler on {self.host} has not stopped: no history yet)"
        origin = self.figures["t_first"]
        interval = self.figures["interval_ms"] or {}
        lines = [f"sampler on {self.host}: {self.figures['samples']} samples every {self.figures['period_ms']:g} ms, "
                 f"{self.figures['missed']} ticks missed, interval p50 {interval.get('p50', 0):.1f} ms max "
                 f"{interval.get('max', 0):.1f} ms; t=0 at {origin:.6f} (CLOCK_MONOTONIC)"]
        if self.error is not None:
            lines.append(f"ended early: {self.error['type']}: {self.error['message']}")
        if not self.sockets:
            return "\n".join([*lines, "(no socket matched the sampler's filters)"])
        rows = [["t (s)", "change", "State", "Recv-Q", "Send-Q", "Timer", "tcp_info", "handle"]]
        owners: list[SocketHistory | None] = [None]
        for sock in self.sockets:
            for entry in sock.entries:
                state, recv_q, send_q, _, _, timer, info, handle = _columns(entry)
                rows.append([f"{entry['t'] - origin:+.6f}", entry["change"], state, recv_q, send_q, timer, info,
                             handle])
                owners.append(sock)
        aligned = _align(rows)
        lines.append("  " + aligned[0])
        for row, sock, previous in zip(aligned[1:], owners[1:], owners):
            if sock is not previous:
                lines.append(sock.label)
            lines.append("  " + row)
        return "\n".join(lines)

    __str__ = table


@contextmanager
def sample(host: Endpoint, *, proto: str = "tcp", port: int | None = None, sport: int | None = None,
           dport: int | None = None, states: Sequence[str] | None = None, period_ms: float = 10.0,
           fields: bool = False) -> Iterator[StateHistory]:
    """Sample `host`'s sockets (the filters of `Endpoint.sockets`) every `period_ms` during the block; with
    `fields`, record changes of the queues and of tcp_info's retransmits, backoff, probes, rto and unacked too.

    The history is filled when the block ends, also when it raises. A sampler that a failed dump ended early
    raises SamplerFailed at the end of a block that did not raise itself.
    """
    sampler = Sampler(host, proto=proto, port=port, sport=sport, dport=dport, states=states,
                      period_ms=period_ms, fields=fields)
    history = sampler.start()
    try:
        yield history
    finally:
        sampler.stop()
    if history.error is not None:
        raise SamplerFailed(history)


class Sampler:
    """A sampler in `host`'s agent, for lifetimes that are not a block: `start()`, then `stop()`."""

    def __init__(self, host: Endpoint, **filters: Any) -> None:
        self.host = host
        self.filters = filters
        self.history = StateHistory(host.host)
        self.id: str | None = None

    def start(self) -> StateHistory:
        """Returns once the first sample is taken; the history it returns fills at `stop`."""
        self.id = self.host.sampler_start(**self.filters)["id"]
        return self.history

    def stop(self) -> StateHistory:
        self.history.load(self.host.sampler_stop(self.id))
        evidence.note_history(self.host.host, self.history)
        return self.history


def wait_for(host: Endpoint, state: str, *, proto: str = "tcp", port: int | None = None, sport: int | None = None,
             dport: int | None = None, count: int = 1, timeout: float = 5.0, poll: float = WAIT_POLL) -> list[Entry]:
    """Poll `host.sockets` until at least `count` sockets with these filters are in `state`; returns those.

    Raises StateNotReached (an AssertionError) after `timeout` seconds, with the last snapshot in the message.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count!r}")
    filters = {name: value for name, value in (("port", port), ("sport", sport), ("dport", dport))
               if value is not None}
    where = ", ".join(f"{name}={value}" for name, value in filters.items()) or "any port"
    found: list[Entry] = []
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(timeout), wait=tenacity.wait_fixed(poll),
                                     retry=tenacity.retry_if_exception_type(StateNotReached), reraise=True):
        with attempt:
            snapshot = host.sockets(proto=proto, **filters)
            found = [entry for entry in snapshot if entry["state"] == state]
            if len(found) < count:
                when = f" at t={snapshot[0]['t']:.6f}" if snapshot else ""
                raise StateNotReached(
                    f"{host.host}: {len(found)} of {count} {proto} socket(s) with {where} in {state} after "
                    f"{timeout} s; last snapshot{when}:\n{format_sockets(snapshot)}", snapshot)
    return found


def acked_connection(client: Endpoint, server: Host, port: int, options: dict[str, Any] | None = None) -> str:
    """A connection from `client` to a new listener of `server` on `port` whose first 1000 bytes are
    acknowledged (so its RTT, hence its RTO, is measured); returns the client's handle."""
    listener = server.listen(port=port, accept=True)
    conn = client.connect(addr=server.addr, port=port, options=options)
    assert listener.ok and conn.ok, (listener, conn)
    sent = client.send(conn.handle, size=1000)
    assert sent.ok, sent
    wait_acked(client, port=port)
    return conn.handle


def wait_acked(host: Endpoint, *, port: int, timeout: float = 5.0, poll: float = WAIT_POLL) -> list[Entry]:
    """Poll `host.sockets` until its TCP sockets on `port` have nothing unacknowledged (Send-Q 0, not LISTEN)."""
    for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(timeout), wait=tenacity.wait_fixed(poll),
                                     retry=tenacity.retry_if_exception_type(StateNotReached), reraise=True):
        with attempt:
            snapshot = [e for e in host.sockets(port=port) if e["state"] != "LISTEN"]
            if not snapshot or any(e["send_q"] for e in snapshot):
                raise StateNotReached(f"{host.host}: data on port {port} still unacknowledged after {timeout} s:\n"
                                      f"{format_sockets(snapshot)}", snapshot)
    return snapshot


def format_sockets(entries: list[Entry]) -> str:
    """Socket entries (a snapshot, or sampler entries) as an aligned table, like `ss -tanoi`."""
    if not entries:
        return "(no sockets)"
    header = ["State", "Recv-Q", "Send-Q", "Local", "Peer", "Timer", "tcp_info", "handle"]
    return "\n".join(_align([header, *(_columns(entry) for entry in entries)]))


def _columns(entry: Entry) -> list[str]:
    """State, Recv-Q, Send-Q, local, peer, timer, tcp_info, handle; blank where the entry has nothing."""
    if entry["state"] == "GONE":
        return ["GONE", "", "", _addr(entry["src"], entry["sport"]), _addr(entry["dst"], entry["dport"]), "", "", ""]
    timer = entry.get("timer_name") or str(entry.get("timer", ""))
    shown_timer = "" if timer == "off" else f"{timer} {entry.get('expires_ms', 0)}ms"
    return [entry["state"], str(entry["recv_q"]), str(entry["send_q"]), _addr(entry["src"], entry["sport"]),
            _addr(entry["dst"], entry["dport"]), shown_timer, _tcp_info(entry.get("tcp_info")),
            entry.get("handle") or ""]


def _details(entry: Entry) -> str:
    state, recv_q, send_q, _, _, timer, info, handle = _columns(entry)
    queues = f"recv_q {recv_q} send_q {send_q}" if state != "GONE" else ""
    return "  ".join(filter(None, [state, queues, timer, info, handle]))


def _tcp_info(info: dict[str, int] | None) -> str:
    if not info:
        return ""
    shown = [f"rto {info['rto_us'] / 1000:g}ms" if "rto_us" in info else ""]
    shown += [f"{name} {info[name]}" for name in TCP_INFO_SHOWN[1:] if name in info]
    return " ".join(filter(None, shown))


def _addr(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _align(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [" ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
