"""Wire analysis: the TCP and UDP flows of a capture, each TCP segment classified from the flow's history.

A flow is a 4-tuple regardless of direction; its client is the side that sent the first SYN (or the first packet
when no SYN was captured). Sequence numbers are relative to the first one seen in each direction (the ISN when
the SYN was captured, so data starts at 1 as in tcpdump) and unwrapped, so they keep growing across 2**32.
ICMP errors quoting a flow's packets are attached to it. Times are the packets' `t` (CLOCK_MONOTONIC).
"""

from __future__ import annotations

import abc
import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from .wire import Packet

Endpoint = tuple[str, int]

_ICMP_NAMES = {
    (3, 0): "net-unreachable", (3, 1): "host-unreachable", (3, 2): "protocol-unreachable",
    (3, 3): "port-unreachable", (3, 4): "frag-needed", (3, 9): "net-prohibited", (3, 10): "host-prohibited",
    (3, 13): "admin-prohibited", (11, 0): "ttl-exceeded",
}


class Kind(enum.StrEnum):
    """What a TCP segment is, judged from what both sides sent before it in the flow.

    - retransmission: payload starting below the highest sequence number its side sent (so also partial
      overlaps, segments repacketized, Linux's tail loss probes, and gaps left by a loss before the capture point);
    - keepalive / zero-window-probe: seq = the side's next sequence number - 1, no payload (or one byte once all
      is acked); a zero-window probe when the peer's last window was 0;
    - keepalive-ack / zero-window-probe-ack: the peer's pure ACK after such a probe (a window update if it opens
      the window after a zero-window probe);
    - zero-window: a pure ACK advertising window 0; window-update: a pure ACK repeating the last ACK with another
      window; dup-ack: a pure ACK repeating the last ACK and window.
    """

    SYN = "syn"
    SYN_RETRANSMISSION = "syn-retransmission"
    SYNACK = "synack"
    SYNACK_RETRANSMISSION = "synack-retransmission"
    DATA = "data"
    RETRANSMISSION = "retransmission"
    FIN = "fin"
    FIN_RETRANSMISSION = "fin-retransmission"
    ACK = "ack"
    DUP_ACK = "dup-ack"
    KEEPALIVE = "keepalive"
    KEEPALIVE_ACK = "keepalive-ack"
    ZERO_WINDOW_PROBE = "zero-window-probe"
    ZERO_WINDOW_PROBE_ACK = "zero-window-probe-ack"
    ZERO_WINDOW = "zero-window"
    WINDOW_UPDATE = "window-update"
    RST = "rst"


# Segments that send sequence space (SYN, data, FIN), the first time or again.
_TRANSMISSIONS = frozenset({
    Kind.SYN, Kind.SYN_RETRANSMISSION, Kind.SYNACK, Kind.SYNACK_RETRANSMISSION, Kind.DATA, Kind.RETRANSMISSION,
    Kind.FIN, Kind.FIN_RETRANSMISSION,
})


@dataclass(frozen=True)
class Segment:
    """A TCP segment of a flow with its kind; `seq`, `ack` and `sack` edges are relative (`ack` None without ACK)."""

    packet: Packet
    kind: Kind
    from_client: bool
    seq: int
    ack: int | None
    sack: tuple[tuple[int, int], ...] = ()

    @property
    def t(self) -> float:
        return self.packet.t

    @property
    def flags(self) -> str:
        return self.packet.flags

    @property
    def length(self) -> int:
        return self.packet.length

    @property
    def win(self) -> int:
        return self.packet.win

    @property
    def end(self) -> int:
        """The relative sequence number after this segment (a SYN and a FIN count one)."""
        return self.seq + self.length + ("S" in self.flags) + ("F" in self.flags)


@dataclass(frozen=True)
class Datagram:
    """A UDP datagram of a flow."""

    packet: Packet
    from_client: bool

    @property
    def t(self) -> float:
        return self.packet.t

    @property
    def length(self) -> int:
        return self.packet.length


@dataclass(frozen=True)
class IcmpError:
    """An ICMP error quoting a packet of the flow; `seq` is the quoted TCP segment's relative sequence number."""

    packet: Packet
    quotes_client: bool
    seq: int | None = None

    @property
    def t(self) -> float:
        return self.packet.t

    @property
    def name(self) -> str:
        """'host-unreachable', 'port-unreachable', ... or 'type T code C'."""
        key = (self.packet.icmp_type, self.packet.icmp_code)
        return _ICMP_NAMES.get(key, f"type {key[0]} code {key[1]}")


@dataclass(frozen=True)
class Times:
    """The times of repeated transmissions (or probes), with the intervals between them and their ratios."""

    times: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.times)

    @property
    def offsets(self) -> list[float]:
        """Each time relative to the first."""
        return [t - self.times[0] for t in self.times]

    @property
    def intervals(self) -> list[float]:
        """times[i+1] - times[i]."""
        return [b - a for a, b in zip(self.times, self.times[1:])]

    @property
    def ratios(self) -> list[float]:
        """The backoff: intervals[i+1] / intervals[i] (inf after a zero interval)."""
        intervals = self.intervals
        return [b / a if a else math.inf for a, b in zip(intervals, intervals[1:])]


@dataclass
class _Flow(abc.ABC):
    client: Endpoint
    server: Endpoint
    icmp: list[IcmpError] = field(default_factory=list)

    def matches(self, port: int | None = None, peer: str | None = None) -> bool:
        """Whether `port` is one of the flow's ports and `peer` one of its addresses (None matches all)."""
        return ((port is None or port in (self.client[1], self.server[1]))
                and (peer is None or peer in (self.client[0], self.server[0])))

    @abc.abstractmethod
    def _rows(self) -> list[dict]:
        """One dict per packet of the flow's own protocol, with `t`, `dir` and `kind`."""

    def to_json(self, since: float | None = None) -> list[dict]:
        """The flow as a timeline: one dict per packet in time order, `t` monotonic, `rel` since `since`."""
        rows = sorted(self._rows() + [_icmp_row(error) for error in self.icmp], key=lambda row: row["t"])
        origin = rows[0]["t"] if since is None and rows else since
        return [{"t": row["t"], "rel": row["t"] - origin, **row} for row in rows]

    def render(self, since: float | None = None) -> str:
        """An aligned table of the flow for failure messages (times relative to `since`, or to its first packet)."""
        title = f"{type(self).__name__} client {_end(self.client)} server {_end(self.server)}"
        return "\n".join([title] + [_text(row) for row in self.to_json(since)])

    def __str__(self) -> str:
        return self.render()


F = TypeVar("F", bound=_Flow)


@dataclass
class TcpFlow(_Flow):
    """A TCP connection's segments (both directions, in capture order) and the ICMP errors quoting it."""

    segments: list[Segment] = field(default_factory=list)

    def of(self, *kinds: Kind | str, from_client: bool | None = None) -> list[Segment]:
        """The segments of any of `kinds` (all when none given), from the client, the server or both (None)."""
        return [s for s in self.segments
                if (not kinds or s.kind in kinds) and (from_client is None or s.from_client == from_client)]

    def kinds(self, *, from_client: bool | None = None) -> list[Kind]:
        """The kinds of the segments in order."""
        return [s.kind for s in self.of(from_client=from_client)]

    def times(self, *kinds: Kind | str, from_client: bool | None = None) -> Times:
        """The times of the segments of `kinds`, e.g. the keepalive probes."""
        return Times(tuple(s.t for s in self.of(*kinds, from_client=from_client)))

    def schedule(self, segment: Segment) -> Times:
        """Every transmission of the sequence number `segment` starts with (the original, then retransmissions,
        whatever their boundaries), from the same side."""
        if segment.kind not in _TRANSMISSIONS:
            raise ValueError(f"a {segment.kind} segment sends no sequence space to retransmit")
        return Times(tuple(s.t for s in self.of(*_TRANSMISSIONS, from_client=segment.from_client)
                           if s.seq <= segment.seq < s.end))

    def syn_schedule(self) -> Times:
        """The SYN and its retransmissions."""
        return self.schedule(self._first(Kind.SYN, True, "SYN"))

    def data_schedule(self, n: int = 0, *, from_client: bool = True) -> Times:
        """The `n`th (from 0) original data segment of a side and its retransmissions."""
        originals = self.of(Kind.DATA, from_client=from_client)
        if n >= len(originals):
            raise LookupError(f"no data segment #{n} from the {_side(from_client)}, {len(originals)} in\n{self}")
        return self.schedule(originals[n])

    def fin_schedule(self, *, from_client: bool = True) -> Times:
        """A side's FIN and its retransmissions."""
        return self.schedule(self._first(Kind.FIN, from_client, "FIN"))

    def _first(self, kind: Kind, from_client: bool, what: str) -> Segment:
        found = self.of(kind, from_client=from_client)
        if not found:
            raise LookupError(f"no {what} from the {_side(from_client)} in\n{self}")
        return found[0]

    def _rows(self) -> list[dict]:
        return [{"t": s.t, "dir": "c>s" if s.from_client else "s>c", "kind": str(s.kind), "flags": s.flags,
                 "seq": s.seq, "ack": s.ack, "len": s.length, "win": s.win,
                 "options": s.packet.options(sack=s.sack)} for s in self.segments]


@dataclass
class UdpFlow(_Flow):
    """The UDP datagrams between two endpoints (client: the first sender) and the ICMP errors quoting them."""

    datagrams: list[Datagram] = field(default_factory=list)

    def times(self, *, from_client: bool | None = None) -> Times:
        """The times of the datagrams from the client, the server or both (None)."""
        return Times(tuple(d.t for d in self.datagrams if from_client is None or d.from_client == from_client))

    def _rows(self) -> list[dict]:
        return [{"t": d.t, "dir": "c>s" if d.from_client else "s>c", "kind": "udp", "len": d.length}
                for d in self.datagrams]


def _side(from_client: bool) -> str:
    return "client" if from_client else "server"


def _end(endpoint: Endpoint) -> str:
    return f"{endpoint[0]}:{endpoint[1]}"


def _icmp_row(error: IcmpError) -> dict:
    return {"t": error.t, "dir": "s>c" if error.quotes_client else "c>s", "kind": "icmp", "icmp": error.name,
            "icmp_type": error.packet.icmp_type, "icmp_code": error.packet.icmp_code, "from": error.packet.src,
            "quoted_seq": error.seq}


def _text(row: dict) -> str:
    head = f"{row['rel']:+11.6f}s  {'->' if row['dir'] == 'c>s' else '<-'}  "
    if row["kind"] == "icmp":
        quoting = "" if row["quoted_seq"] is None else f", quoting seq {row['quoted_seq']}"
        return head + f"ICMP {row['icmp']} ({row['icmp_type']}/{row['icmp_code']}) from {row['from']}{quoting}"
    if row["kind"] == "udp":
        return head + f"UDP len {row['len']}"
    seq = f"{row['seq']}:{row['seq'] + row['len']}" if row["len"] else str(row["seq"])
    ack = "-" if row["ack"] is None else str(row["ack"])
    return (head + f"{'[' + row['flags'] + ']':<6} seq {seq:<14} ack {ack:<11} len {row['len']:>5} "
            f"win {row['win']:>5}  {row['kind']:<22} {','.join(row['options'])}").rstrip()


@dataclass
class _Side:
    """What one side of a TCP flow sent so far, in its own unwrapped sequence space."""

    base: int | None = None      # the first sequence number seen, relative 0
    ref: int | None = None       # the last unwrapped number: the next one is taken as the nearest to it
    nxt: int | None = None       # the highest sequence number sent + 1
    syn: int | None = None       # the sequence number of its SYN
    synack: int | None = None    # the sequence number of its SYN/ACK
    fin: int | None = None       # the sequence number of its FIN
    last_ack: int | None = None  # the last ACK this side sent (in the peer's space)
    last_win: int | None = None  # the last window this side advertised
    probing: Kind | None = None  # a keepalive or zero-window probe the peer has not answered yet

    def unwrap(self, value: int) -> int:
        """The unwrapped sequence number nearest the last one (the value itself for the first)."""
        return value if self.ref is None else self.ref + (value - self.ref + 2**31) % 2**32 - 2**31

    def relative(self, value: int) -> int:
        """`value` relative to the base, taking it as the new reference."""
        self.ref = self.unwrap(value)
        if self.base is None:
            self.base = self.ref
        return self.ref - self.base


class _TcpTracker:
    """Classifies the segments of one TCP flow as they come."""

    def __init__(self, flow: TcpFlow) -> None:
        self.flow = flow
        self.sides = {flow.client: _Side(), flow.server: _Side()}

    def starts_anew(self, p: Packet) -> bool:
        """A SYN with a new ISN from a side that already sent (not a simultaneous open): a new connection."""
        side = self.sides[(p.src, p.sport)]
        return "S" in p.flags and "." not in p.flags and side.nxt is not None and (
            side.syn != side.unwrap(p.seq) - side.base)

    def add(self, p: Packet) -> None:
        side, peer = self.sides[(p.src, p.sport)], self.sides[(p.dst, p.dport)]
        seq = side.relative(p.seq)
        ack = peer.relative(p.ack) if "." in p.flags else None
        sack = tuple((peer.unwrap(left) - peer.base, peer.unwrap(right) - peer.base) for left, right in p.sack)
        kind = self._classify(p, side, peer, seq, ack)
        self.flow.segments.append(Segment(p, kind, (p.src, p.sport) == self.flow.client, seq, ack, sack))
        if "S" in p.flags and "." in p.flags:
            side.synack = seq
        elif "S" in p.flags:
            side.syn = seq
        if "F" in p.flags:
            side.fin = seq + p.length
        end = seq + p.length + ("S" in p.flags) + ("F" in p.flags)
        side.nxt = end if side.nxt is None else max(side.nxt, end)
        side.last_win = p.win
        if ack is not None:
            side.last_ack = ack
        side.probing = kind if kind in (Kind.KEEPALIVE, Kind.ZERO_WINDOW_PROBE) else None
        peer.probing = None

    @staticmethod
    def _classify(p: Packet, side: _Side, peer: _Side, seq: int, ack: int | None) -> Kind:
        if "R" in p.flags:
            return Kind.RST
        if "S" in p.flags and "." in p.flags:
            return Kind.SYNACK_RETRANSMISSION if side.synack == seq else Kind.SYNACK
        if "S" in p.flags:
            return Kind.SYN_RETRANSMISSION if side.syn == seq else Kind.SYN
        if "F" in p.flags:
            return Kind.FIN_RETRANSMISSION if side.fin == seq + p.length else Kind.FIN
        # Linux probes with seq = snd_una - 1 and no data (other stacks send one garbage byte) once all is acked.
        if side.nxt is not None and seq == side.nxt - 1 and (
                p.length == 0 or (p.length == 1 and peer.last_ack == side.nxt)):
            return Kind.ZERO_WINDOW_PROBE if peer.last_win == 0 else Kind.KEEPALIVE
        if p.length:
            return Kind.RETRANSMISSION if side.nxt is not None and seq < side.nxt else Kind.DATA
        if peer.probing is not None:
            if peer.probing == Kind.KEEPALIVE:
                return Kind.KEEPALIVE_ACK
            return Kind.ZERO_WINDOW_PROBE_ACK if p.win == 0 else Kind.WINDOW_UPDATE
        if p.win == 0:
            return Kind.ZERO_WINDOW
        if ack is not None and ack == side.last_ack:
            return Kind.WINDOW_UPDATE if p.win != side.last_win else Kind.DUP_ACK
        return Kind.ACK


class _Analysis:
    """One pass over a capture's packets, building its TCP and UDP flows in order of their first packet."""

    def __init__(self, packets: Iterable[Packet]) -> None:
        self.tcp: list[TcpFlow] = []
        self.udp: list[UdpFlow] = []
        self._trackers: dict[frozenset[Endpoint], _TcpTracker] = {}
        self._datagram_flows: dict[frozenset[Endpoint], UdpFlow] = {}
        for p in packets:
            if p.proto == "tcp":
                self._segment(p)
            elif p.proto == "udp":
                flow = self._udp_flow((p.src, p.sport), (p.dst, p.dport))
                flow.datagrams.append(Datagram(p, (p.src, p.sport) == flow.client))
            elif p.proto == "icmp" and p.quoted_proto in ("tcp", "udp"):
                self._icmp(p)

    def _segment(self, p: Packet) -> None:
        tracker = self._trackers.get(frozenset({(p.src, p.sport), (p.dst, p.dport)}))
        if tracker is None or tracker.starts_anew(p):
            ends = [(p.src, p.sport), (p.dst, p.dport)]
            tracker = self._new_tracker(*(reversed(ends) if "S" in p.flags and "." in p.flags else ends))
        tracker.add(p)

    def _icmp(self, p: Packet) -> None:
        quoted_from, quoted_to = (p.quoted_src, p.sport), (p.quoted_dst, p.dport)
        if p.quoted_proto == "udp":
            flow = self._udp_flow(quoted_from, quoted_to)
            flow.icmp.append(IcmpError(p, quoted_from == flow.client))
            return
        tracker = self._trackers.get(frozenset({quoted_from, quoted_to})) or self._new_tracker(quoted_from, quoted_to)
        seq = None if p.quoted_seq is None else tracker.sides[quoted_from].relative(p.quoted_seq)
        tracker.flow.icmp.append(IcmpError(p, quoted_from == tracker.flow.client, seq))

    def _new_tracker(self, client: Endpoint, server: Endpoint) -> _TcpTracker:
        tracker = self._trackers[frozenset({client, server})] = _TcpTracker(TcpFlow(client, server))
        self.tcp.append(tracker.flow)
        return tracker

    def _udp_flow(self, client: Endpoint, server: Endpoint) -> UdpFlow:
        """The flow between the two endpoints, made with `client` as its client if there is none yet."""
        key = frozenset({client, server})
        if key not in self._datagram_flows:
            self._datagram_flows[key] = UdpFlow(client, server)
            self.udp.append(self._datagram_flows[key])
        return self._datagram_flows[key]


def tcp_flows(packets: Iterable[Packet], *, port: int | None = None, peer: str | None = None) -> list[TcpFlow]:
    """The TCP flows in `packets` (a Wire or a list), optionally those with `port` or the address `peer`."""
    return [f for f in _Analysis(packets).tcp if f.matches(port, peer)]


def udp_flows(packets: Iterable[Packet], *, port: int | None = None, peer: str | None = None) -> list[UdpFlow]:
    """The UDP flows in `packets`, optionally those with `port` or the address `peer`."""
    return [f for f in _Analysis(packets).udp if f.matches(port, peer)]


def tcp_flow(packets: Iterable[Packet], *, port: int | None = None, peer: str | None = None) -> TcpFlow:
    """The one TCP flow with `port` and `peer`; LookupError naming the flows there are otherwise."""
    return _one(tcp_flows(packets, port=port, peer=peer), "TCP", port, peer)


def udp_flow(packets: Iterable[Packet], *, port: int | None = None, peer: str | None = None) -> UdpFlow:
    """The one UDP flow with `port` and `peer`; LookupError naming the flows there are otherwise."""
    return _one(udp_flows(packets, port=port, peer=peer), "UDP", port, peer)


def _one(found: list[F], proto: str, port: int | None, peer: str | None) -> F:
    if len(found) != 1:
        listed = "".join(f"\n  {_end(f.client)} > {_end(f.server)}" for f in found)
        raise LookupError(f"expected one {proto} flow with port={port} peer={peer}, found {len(found)}{listed}")
    return found[0]
