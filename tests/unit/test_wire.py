"""pcap parsing on captures these tests write themselves with dpkt."""

import io
import socket

import dpkt
import pytest

from harness.wire import Wire, parse_pcap, tcp_flags

C, S = "10.213.5.10", "10.213.5.20"


def _eth(ip: dpkt.ip.IP) -> bytes:
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=ip))


def _ip(src: str, dst: str, p: int, data) -> dpkt.ip.IP:
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=p, data=data)
    ip.len += len(bytes(data))
    return ip


def _tcp(src, sport, dst, dport, flags, seq=0, ack=0, payload=b""):
    return _ip(src, dst, dpkt.ip.IP_PROTO_TCP,
               dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, win=64240, data=payload))


def _pcap(frames: list[tuple[float, dpkt.ip.IP]]) -> bytes:
    out = io.BytesIO()
    writer = dpkt.pcap.Writer(out, linktype=dpkt.pcap.DLT_EN10MB, nano=False)
    for ts, ip in frames:
        writer.writepkt(_eth(ip), ts=ts)
    return out.getvalue()


def test_flag_notation_is_tcpdumps():
    th = dpkt.tcp
    assert tcp_flags(th.TH_SYN) == "S"
    assert tcp_flags(th.TH_SYN | th.TH_ACK) == "S."
    assert tcp_flags(th.TH_RST | th.TH_ACK) == "R."
    assert tcp_flags(th.TH_FIN | th.TH_PUSH | th.TH_ACK) == "FP."
    assert tcp_flags(th.TH_ACK) == "."


def test_refused_connect_parses_to_syn_then_rst_with_monotonic_times():
    th = dpkt.tcp
    pcap = _pcap([
        (1000.25, _tcp(C, 40000, S, 6666, th.TH_SYN, seq=7)),
        (1000.2501, _tcp(S, 6666, C, 40000, th.TH_RST | th.TH_ACK, ack=8)),
    ])
    packets = parse_pcap(pcap, realtime_minus_monotonic=900.0)
    wire = Wire("client", packets)
    syn, rst = wire.tcp(port=6666)
    assert (syn.flags, syn.src, syn.dport, syn.seq) == ("S", C, 6666, 7)
    assert (rst.flags, rst.src, rst.ack) == ("R.", S, 8)
    assert syn.t == pytest.approx(100.25) and syn.t_real == pytest.approx(1000.25)
    assert rst.t - syn.t == pytest.approx(0.0001, abs=2e-6)
    assert wire.tcp(flags="R.") == [rst]
    assert wire.tcp(src=S) == [rst]
    assert wire.tcp(port=1) == []
    assert "Flags [S]" in wire.table() and "Flags [R.]" in wire.table()


def test_icmp_error_carries_the_quoted_flow():
    quoted = _ip(C, S, dpkt.ip.IP_PROTO_UDP, dpkt.udp.UDP(sport=5353, dport=9999, data=b"x"))
    unreach = dpkt.icmp.ICMP(type=3, code=3, data=dpkt.icmp.ICMP.Unreach(data=quoted))
    pcap = _pcap([(5.0, _ip(S, C, dpkt.ip.IP_PROTO_ICMP, unreach))])
    (icmp,) = parse_pcap(pcap)
    assert (icmp.proto, icmp.icmp_type, icmp.icmp_code) == ("icmp", 3, 3)
    assert (icmp.quoted_proto, icmp.quoted_src, icmp.quoted_dst, icmp.sport, icmp.dport) == (
        "udp", C, S, 5353, 9999)
    assert "quoting udp 10.213.5.10.5353 > 10.213.5.20.9999" in str(icmp)


def test_empty_capture_says_so():
    assert Wire("server", parse_pcap(_pcap([]))).table() == "(no packets captured on server)"
