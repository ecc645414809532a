"""What crossed the wire: pcap files parsed (with dpkt) into packets with tcpdump-style flags."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import dpkt

_DLT_EN10MB = 1
_DLT_RAW = 101
_DLT_LINUX_SLL = 113
_DLT_LINUX_SLL2 = 276

# tcpdump's order and letters; ACK is printed last as '.'.
_FLAG_LETTERS = (
    (dpkt.tcp.TH_FIN, "F"), (dpkt.tcp.TH_SYN, "S"), (dpkt.tcp.TH_RST, "R"), (dpkt.tcp.TH_PUSH, "P"),
    (dpkt.tcp.TH_URG, "U"), (dpkt.tcp.TH_ECE, "E"), (dpkt.tcp.TH_CWR, "W"),
)


def tcp_flags(bits: int) -> str:
    """tcpdump's notation: 'S', 'S.', 'R.', 'FP.', '.'."""
    letters = "".join(letter for bit, letter in _FLAG_LETTERS if bits & bit)
    return letters + ("." if bits & dpkt.tcp.TH_ACK else "")


@dataclass(frozen=True)
class Packet:
    """One IPv4 packet seen by a capture.

    `t_real` is the capture timestamp (CLOCK_REALTIME); `t` the same instant on CLOCK_MONOTONIC, the clock of
    the agent's syscall records. ICMP errors carry the ports of the packet they quote in sport/dport (and the
    quoted addresses in quoted_src/quoted_dst are those of the original packet, with its TCP sequence number in
    quoted_seq) so they can be matched to a flow. TCP options: `mss`, `wscale`, `sack_permitted`, `sack` (the
    SACK blocks' left and right edges), `tsval`/`tsecr`; None or empty when absent.
    """

    t: float
    t_real: float
    proto: str
    src: str
    dst: str
    sport: int = 0
    dport: int = 0
    flags: str = ""
    seq: int = 0
    ack: int = 0
    length: int = 0
    win: int = 0
    icmp_type: int | None = None
    icmp_code: int | None = None
    quoted_proto: str = ""
    quoted_src: str = ""
    quoted_dst: str = ""
    quoted_seq: int | None = None
    ip_id: int = 0
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    sack: tuple[tuple[int, int], ...] = ()
    tsval: int | None = None
    tsecr: int | None = None

    def __str__(self) -> str:
        if self.proto == "tcp":
            options = self.options()
            return (f"{self.src}.{self.sport} > {self.dst}.{self.dport}: Flags [{self.flags}], seq {self.seq}, "
                    f"ack {self.ack}, win {self.win}, length {self.length}"
                    + (f", options [{','.join(options)}]" if options else ""))
        if self.proto == "icmp":
            quoted = (f" (quoting {self.quoted_proto} {self.quoted_src}.{self.sport} > {self.quoted_dst}.{self.dport})"
                      if self.quoted_proto else "")
            return f"{self.src} > {self.dst}: ICMP type {self.icmp_type} code {self.icmp_code}{quoted}"
        return f"{self.src}.{self.sport} > {self.dst}.{self.dport}: {self.proto.upper()}, length {self.length}"

    def options(self, sack: tuple[tuple[int, int], ...] | None = None) -> list[str]:
        """The TCP options present, in tcpdump's words ('mss 1460', 'sackOK', 'TS val 1 ecr 0', 'wscale 7').

        `sack` replaces the packet's own SACK edges in the text (e.g. with relative ones).
        """
        sack = self.sack if sack is None else sack
        return [text for present, text in (
            (self.mss is not None, f"mss {self.mss}"),
            (self.sack_permitted, "sackOK"),
            (bool(sack), "sack " + " ".join(f"{left}:{right}" for left, right in sack)),
            (self.tsval is not None, f"TS val {self.tsval} ecr {self.tsecr}"),
            (self.wscale is not None, f"wscale {self.wscale}"),
        ) if present]

    def between(self, a: tuple[str, int], b: tuple[str, int]) -> bool:
        """Whether this packet belongs to the flow between endpoints a and b (either direction)."""
        ends = {(self.src, self.sport), (self.dst, self.dport)}
        return ends == {a, b}


def _ip_of(linktype: int, frame: bytes) -> dpkt.ip.IP | None:
    if linktype == _DLT_EN10MB:
        eth = dpkt.ethernet.Ethernet(frame)
        payload = eth.data
    elif linktype == _DLT_LINUX_SLL:
        payload = dpkt.sll.SLL(frame).data
    elif linktype == _DLT_LINUX_SLL2:
        payload = dpkt.sll2.SLL2(frame).data
    elif linktype == _DLT_RAW:
        payload = dpkt.ip.IP(frame)
    else:
        raise ValueError(f"unsupported pcap link type {linktype}")
    return payload if isinstance(payload, dpkt.ip.IP) else None


def _icmp_packet(t: float, t_real: float, ip: dpkt.ip.IP, icmp: dpkt.icmp.ICMP) -> Packet:
    fields: dict = {}
    inner = getattr(icmp.data, "data", None)
    if isinstance(inner, dpkt.ip.IP):
        body = bytes(inner.data)
        fields = {
            "quoted_src": socket.inet_ntoa(inner.src),
            "quoted_dst": socket.inet_ntoa(inner.dst),
            "quoted_proto": {dpkt.ip.IP_PROTO_TCP: "tcp", dpkt.ip.IP_PROTO_UDP: "udp"}.get(inner.p, str(inner.p)),
        }
        if len(body) >= 4:
            fields["sport"], fields["dport"] = int.from_bytes(body[0:2], "big"), int.from_bytes(body[2:4], "big")
        if inner.p == dpkt.ip.IP_PROTO_TCP and len(body) >= 8:
            fields["quoted_seq"] = int.from_bytes(body[4:8], "big")
    return Packet(t=t, t_real=t_real, proto="icmp", src=socket.inet_ntoa(ip.src), dst=socket.inet_ntoa(ip.dst),
                  icmp_type=icmp.type, icmp_code=icmp.code, length=len(ip.data), ip_id=ip.id, **fields)


def _tcp_options(tcp: dpkt.tcp.TCP) -> dict:
    """The options Packet carries, from the segment's option bytes (a malformed tail is left out, as dpkt does)."""
    fields: dict = {}
    for option in dpkt.tcp.parse_opts(tcp.opts):
        if option is None:
            break
        kind, data = option
        if kind == dpkt.tcp.TCP_OPT_MSS and len(data) == 2:
            fields["mss"] = int.from_bytes(data, "big")
        elif kind == dpkt.tcp.TCP_OPT_WSCALE and len(data) == 1:
            fields["wscale"] = data[0]
        elif kind == dpkt.tcp.TCP_OPT_SACKOK:
            fields["sack_permitted"] = True
        elif kind == dpkt.tcp.TCP_OPT_SACK:
            fields["sack"] = tuple((int.from_bytes(data[i:i + 4], "big"), int.from_bytes(data[i + 4:i + 8], "big"))
                                   for i in range(0, len(data) - 7, 8))
        elif kind == dpkt.tcp.TCP_OPT_TIMESTAMP and len(data) == 8:
            fields["tsval"], fields["tsecr"] = int.from_bytes(data[:4], "big"), int.from_bytes(data[4:], "big")
    return fields


def parse_pcap(data: bytes, realtime_minus_monotonic: float = 0.0) -> list[Packet]:
    """Parse a pcap (as written by tcpdump -w) into IPv4 packets; non-IP frames are skipped."""
    reader = dpkt.pcap.Reader(io.BytesIO(data))
    linktype = reader.datalink()
    packets = []
    for ts, frame in reader:
        ip = _ip_of(linktype, frame)
        if ip is None:
            continue
        t_real = float(ts)
        t = t_real - realtime_minus_monotonic
        src, dst = socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst)
        if isinstance(ip.data, dpkt.tcp.TCP):
            tcp = ip.data
            packets.append(Packet(
                t=t, t_real=t_real, proto="tcp", src=src, dst=dst, sport=tcp.sport, dport=tcp.dport,
                flags=tcp_flags(tcp.flags), seq=tcp.seq, ack=tcp.ack, length=len(tcp.data), win=tcp.win,
                ip_id=ip.id, **_tcp_options(tcp),
            ))
        elif isinstance(ip.data, dpkt.udp.UDP):
            udp = ip.data
            packets.append(Packet(t=t, t_real=t_real, proto="udp", src=src, dst=dst, sport=udp.sport,
                                  dport=udp.dport, length=len(udp.data), ip_id=ip.id))
        elif isinstance(ip.data, dpkt.icmp.ICMP):
            packets.append(_icmp_packet(t, t_real, ip, ip.data))
    return packets


class Wire:
    """The packets one capture saw, with filters for assertions and a table for failure messages."""

    def __init__(self, host: str, packets: Iterable[Packet] = ()) -> None:
        self.host = host
        self.packets: list[Packet] = list(packets)
        self.pcap = b""
        self.complete = True
        self.incomplete_because = ""

    def __iter__(self):
        return iter(self.packets)

    def __len__(self) -> int:
        return len(self.packets)

    def tcp(self, *, port: int | None = None, flags: str | None = None,
            src: str | None = None, dst: str | None = None) -> list[Packet]:
        """TCP segments, optionally to or from `port`, with exactly `flags` (tcpdump notation), from/to an address."""
        return [
            p for p in self.packets
            if p.proto == "tcp"
            and (port is None or port in (p.sport, p.dport))
            and (flags is None or p.flags == flags)
            and (src is None or p.src == src)
            and (dst is None or p.dst == dst)
        ]

    def table(self, since: float | None = None) -> str:
        """An aligned text table of the packets (times relative to `since`, or to the first packet)."""
        note = "" if self.complete else (f"\n(the capture on {self.host} is incomplete: tcpdump did not drain, or the "
                                         f"kernel dropped packets for want of buffer: {self.incomplete_because})")
        if not self.packets:
            return f"(no packets captured on {self.host})" + note
        origin = self.packets[0].t if since is None else since
        return "\n".join(f"{p.t - origin:+10.6f}s  {self.host:<8} {p}" for p in self.packets) + note
