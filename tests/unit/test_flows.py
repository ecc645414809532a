"""Wire analysis on pcaps these tests write with dpkt, modelled on what Linux sends (times, sequence numbers)."""

import io
import json
import socket

import dpkt
import pytest

from harness.flows import Kind, Times, tcp_flow, tcp_flows, udp_flow, udp_flows
from harness.wire import Wire, parse_pcap

C, S, GW = "10.213.5.10", "10.213.5.20", "10.213.5.1"
CP, SP = 40312, 6666
CISN, SISN = 3_000_000_000, 1_234_567
T0 = 5000.0               # capture (realtime) seconds of the first packet
OFFSET = 4000.0           # realtime - monotonic: packet times are T0 - OFFSET + ...
WIN = 502                 # 64240 >> 7 once window scaling is on
SYN_OPTS = b"\x02\x04\x05\xb4" b"\x04\x02" b"\x08\x0a\x00\x00\x00\x01\x00\x00\x00\x00" b"\x01" b"\x03\x03\x07"

_BITS = {"F": dpkt.tcp.TH_FIN, "S": dpkt.tcp.TH_SYN, "R": dpkt.tcp.TH_RST, "P": dpkt.tcp.TH_PUSH,
         ".": dpkt.tcp.TH_ACK}


def approx(value):
    """pcap times have microsecond resolution."""
    return pytest.approx(value, abs=2e-6)


def _ip(src: str, dst: str, p: int, data, ip_id: int = 0) -> dpkt.ip.IP:
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=p, id=ip_id, data=data)
    ip.len += len(bytes(data))
    return ip


def tcp(t: float, frm: str, flags: str, seq: int, ack: int = 0, n: int = 0, win: int = WIN, opts: bytes = b"",
        ports: tuple[int, int] = (CP, SP)) -> tuple[float, dpkt.ip.IP]:
    """A segment at T0 + t from the client ('c') or the server ('s') with `n` payload bytes."""
    (src, sport), (dst, dport) = ((C, ports[0]), (S, ports[1])) if frm == "c" else ((S, ports[1]), (C, ports[0]))
    segment = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq % 2**32, ack=ack % 2**32, win=win, opts=opts,
                           off=5 + len(opts) // 4, data=bytes(n),
                           flags=sum(_BITS[letter] for letter in flags))
    return T0 + t, _ip(src, dst, dpkt.ip.IP_PROTO_TCP, segment)


def sack(*blocks: tuple[int, int]) -> bytes:
    """nop, nop, SACK with absolute edges."""
    edges = b"".join(left.to_bytes(4, "big") + right.to_bytes(4, "big") for left, right in blocks)
    return b"\x01\x01\x05" + bytes([2 + len(edges)]) + edges


def icmp_error(t: float, src: str, dst: str, code: int, quoted: dpkt.ip.IP, keep: int | None = None):
    """ICMP destination unreachable from `src` quoting `quoted` (whole, or its first `keep` bytes)."""
    body = bytes(quoted) if keep is None else bytes(quoted)[:keep]
    error = dpkt.icmp.ICMP(type=3, code=code, data=dpkt.icmp.ICMP.Unreach(data=body))
    return T0 + t, _ip(src, dst, dpkt.ip.IP_PROTO_ICMP, error)


def parse(frames):
    out = io.BytesIO()
    writer = dpkt.pcap.Writer(out, linktype=dpkt.pcap.DLT_EN10MB)
    for ts, ip in frames:
        eth = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
        writer.writepkt(bytes(eth), ts=ts)
    return parse_pcap(out.getvalue(), realtime_minus_monotonic=OFFSET)


def handshake(t: float = 0.0, cisn: int = CISN, ports: tuple[int, int] = (CP, SP)) -> list:
    return [
        tcp(t, "c", "S", cisn, win=64240, opts=SYN_OPTS, ports=ports),
        tcp(t + 0.0001, "s", "S.", SISN, cisn + 1, win=65160, opts=SYN_OPTS, ports=ports),
        tcp(t + 0.0002, "c", ".", cisn + 1, SISN + 1, ports=ports),
    ]


def summary(flow) -> list[tuple]:
    return [(s.kind, "c" if s.from_client else "s", s.seq, s.ack, s.length) for s in flow.segments]


def test_handshake_and_data_with_acks():
    flow = tcp_flow(parse(handshake() + [
        tcp(0.01, "c", "P.", CISN + 1, SISN + 1, n=100),
        tcp(0.0101, "s", ".", SISN + 1, CISN + 101, win=509),
        tcp(0.02, "s", "P.", SISN + 1, CISN + 101, n=50, win=509),
        tcp(0.0201, "c", ".", CISN + 101, SISN + 51),
    ]))
    assert (flow.client, flow.server) == ((C, CP), (S, SP))
    assert summary(flow) == [
        (Kind.SYN, "c", 0, None, 0), (Kind.SYNACK, "s", 0, 1, 0), (Kind.ACK, "c", 1, 1, 0),
        (Kind.DATA, "c", 1, 1, 100), (Kind.ACK, "s", 1, 101, 0),
        (Kind.DATA, "s", 1, 101, 50), (Kind.ACK, "c", 101, 51, 0),
    ]
    syn = flow.segments[0].packet
    assert (syn.mss, syn.sack_permitted, syn.tsval, syn.tsecr, syn.wscale) == (1460, True, 1, 0, 7)
    assert str(syn).endswith("length 0, options [mss 1460,sackOK,TS val 1 ecr 0,wscale 7]")
    assert flow.segments[0].t == approx(T0 - OFFSET)
    assert flow.segments[3].packet.mss is None and flow.segments[3].win == WIN


def test_rendering_is_an_aligned_table_with_relative_numbers():
    flow = tcp_flow(parse([tcp(0.25, "c", "S", CISN, win=64240, opts=SYN_OPTS),
                           tcp(0.2501, "s", "R.", 0, CISN + 1, win=0)]))
    assert flow.render(since=T0 - OFFSET) == "\n".join([
        "TcpFlow client 10.213.5.10:40312 server 10.213.5.20:6666",
        "  +0.250000s  ->  [S]    seq 0              ack -           len     0 win 64240  syn"
        "                    mss 1460,sackOK,TS val 1 ecr 0,wscale 7",
        "  +0.250100s  <-  [R.]   seq 0              ack 1           len     0 win     0  rst",
    ])
    rows = json.loads(json.dumps(flow.to_json()))
    assert rows[1] == {"t": approx(T0 - OFFSET + 0.2501), "rel": approx(0.0001), "dir": "s>c", "kind": "rst",
                       "flags": "R.", "seq": 0, "ack": 1, "len": 0, "win": 0, "options": []}
    assert [row["kind"] for row in rows] == ["syn", "rst"]


def test_syn_retried_with_doubling_timeouts_and_no_answer():
    # tcp_syn_retries=3 with tcp_syn_linear_timeouts=0: SYNs at 0, 1, 3, 7 s, then connect() gives up.
    flow = tcp_flow(parse([tcp(t, "c", "S", CISN, win=64240, opts=SYN_OPTS) for t in (0.0, 1.0, 3.0, 7.0)]))
    assert flow.kinds() == [Kind.SYN] + [Kind.SYN_RETRANSMISSION] * 3
    schedule = flow.syn_schedule()
    assert schedule.offsets == approx([0, 1, 3, 7])
    assert schedule.intervals == approx([1, 2, 4])
    assert schedule.ratios == approx([2, 2])


def test_synack_retransmitted_when_the_third_ack_is_lost():
    # Captured on the client: its ACK is lost after the capture point, the SYN/ACK comes again.
    flow = tcp_flow(parse(handshake() + [
        tcp(1.0, "s", "S.", SISN, CISN + 1, win=65160, opts=SYN_OPTS),
        tcp(1.0001, "c", ".", CISN + 1, SISN + 1),
    ]))
    assert flow.kinds() == [Kind.SYN, Kind.SYNACK, Kind.ACK, Kind.SYNACK_RETRANSMISSION, Kind.DUP_ACK]
    assert flow.schedule(flow.segments[1]).intervals == approx([1.0 - 0.0001])


def test_data_retransmitted_with_doubling_rto():
    flow = tcp_flow(parse(handshake() + [
        tcp(0.01, "c", "P.", CISN + 1, SISN + 1, n=100),
        tcp(0.0101, "s", ".", SISN + 1, CISN + 101),
        tcp(1.0, "c", "P.", CISN + 101, SISN + 1, n=100),
        tcp(1.2, "c", "P.", CISN + 101, SISN + 1, n=100),
        tcp(1.6, "c", "P.", CISN + 101, SISN + 1, n=100),
        tcp(2.4, "c", "P.", CISN + 101, SISN + 1, n=100),
    ]))
    assert flow.kinds(from_client=True)[2:] == [Kind.DATA, Kind.DATA] + [Kind.RETRANSMISSION] * 3
    assert [s.seq for s in flow.of(Kind.RETRANSMISSION)] == [101, 101, 101]
    assert len(flow.data_schedule(0)) == 1
    schedule = flow.data_schedule(1)
    assert schedule.offsets == approx([0, 0.2, 0.6, 1.4])
    assert schedule.intervals == approx([0.2, 0.4, 0.8])
    assert schedule.ratios == approx([2, 2])
    assert flow.schedule(flow.of(Kind.RETRANSMISSION)[-1]) == schedule


def test_tail_loss_probe_resends_the_last_segment():
    flow = tcp_flow(parse(handshake() + [
        tcp(0.01, "c", "P.", CISN + 1, SISN + 1, n=1),
        tcp(0.03, "c", "P.", CISN + 1, SISN + 1, n=1),
        tcp(0.2301, "c", "P.", CISN + 1, SISN + 1, n=1),
    ]))
    assert flow.kinds()[3:] == [Kind.DATA, Kind.RETRANSMISSION, Kind.RETRANSMISSION]
    assert flow.data_schedule(0).intervals == approx([0.02, 0.2001])


def test_fast_retransmission_after_duplicate_acks_with_sack():
    flow = tcp_flow(parse(handshake() + [
        tcp(0.01, "c", "P.", CISN + 1, SISN + 1, n=100),
        tcp(0.0101, "c", "P.", CISN + 101, SISN + 1, n=100),
        tcp(0.0102, "c", "P.", CISN + 201, SISN + 1, n=100),
        tcp(0.0103, "c", "P.", CISN + 301, SISN + 1, n=100),
        tcp(0.0111, "s", ".", SISN + 1, CISN + 101),
        tcp(0.0112, "s", ".", SISN + 1, CISN + 101, opts=sack((CISN + 201, CISN + 301))),
        tcp(0.0113, "s", ".", SISN + 1, CISN + 101, opts=sack((CISN + 201, CISN + 401))),
        tcp(0.0114, "c", "P.", CISN + 101, SISN + 1, n=100),
        tcp(0.0124, "s", ".", SISN + 1, CISN + 401),
    ]))
    assert flow.kinds()[3:] == [Kind.DATA] * 4 + [Kind.ACK, Kind.DUP_ACK, Kind.DUP_ACK, Kind.RETRANSMISSION,
                                                  Kind.ACK]
    dupacks = flow.of(Kind.DUP_ACK)
    assert [d.sack for d in dupacks] == [((201, 301),), ((201, 401),)]
    assert "sack 201:301" in flow.render()
    assert flow.data_schedule(1).intervals == approx([0.0013])


def test_partial_overlap_is_a_retransmission_of_each_segment_it_covers():
    flow = tcp_flow(parse(handshake() + [
        tcp(0.01, "c", ".", CISN + 1, SISN + 1, n=1000),
        tcp(0.0101, "c", "P.", CISN + 1001, SISN + 1, n=1000),
        tcp(0.2101, "c", ".", CISN + 501, SISN + 1, n=1000),
        tcp(0.6101, "c", "P.", CISN + 1, SISN + 1, n=2000),
        tcp(0.7, "c", "P.", CISN + 1501, SISN + 1, n=1000),
        tcp(0.8, "c", "P.", CISN + 2501, SISN + 1, n=500),
    ]))
    assert flow.kinds()[3:] == [Kind.DATA, Kind.DATA] + [Kind.RETRANSMISSION] * 3 + [Kind.DATA]
    assert flow.data_schedule(0).offsets == approx([0, 0.6001])
    assert flow.data_schedule(1).offsets == approx([0, 0.2, 0.6])
    assert flow.data_schedule(2).offsets == [0]


def test_retransmission_across_sequence_wrap_around():
    isn = 2**32 - 150
    flow = tcp_flow(parse(handshake(cisn=isn) + [
        tcp(0.01, "c", "P.", isn + 1, SISN + 1, n=100),
        tcp(0.0101, "c", "P.", isn + 101, SISN + 1, n=100),
        tcp(0.0102, "c", "P.", isn + 201, SISN + 1, n=100),
        tcp(0.0111, "s", ".", SISN + 1, isn + 101),
        tcp(0.2102, "c", "P.", isn + 101, SISN + 1, n=100),
        tcp(0.6102, "c", "P.", isn + 201, SISN + 1, n=100),
        tcp(0.6112, "s", ".", SISN + 1, isn + 301),
    ]))
    assert [s.packet.seq for s in flow.of(Kind.DATA)] == [2**32 - 149, 2**32 - 49, 51]
    assert summary(flow)[3:] == [
        (Kind.DATA, "c", 1, 1, 100), (Kind.DATA, "c", 101, 1, 100), (Kind.DATA, "c", 201, 1, 100),
        (Kind.ACK, "s", 1, 101, 0), (Kind.RETRANSMISSION, "c", 101, 1, 100), (Kind.RETRANSMISSION, "c", 201, 1, 100),
        (Kind.ACK, "s", 1, 301, 0),
    ]
    assert flow.data_schedule(2).intervals == approx([0.6])


def test_fin_retransmitted_when_its_ack_is_late():
    # S11 seen from the client: the server's kernel closes, the client's delayed ACK comes after the RTO.
    flow = tcp_flow(parse(handshake() + [
        tcp(5.0, "s", "F.", SISN + 1, CISN + 1),
        tcp(5.2, "s", "F.", SISN + 1, CISN + 1),
        tcp(5.2001, "c", ".", CISN + 1, SISN + 2),
        tcp(5.2002, "c", ".", CISN + 1, SISN + 2),
    ]))
    assert flow.kinds()[3:] == [Kind.FIN, Kind.FIN_RETRANSMISSION, Kind.ACK, Kind.DUP_ACK]
    assert flow.fin_schedule(from_client=False).intervals == approx([0.2])
    with pytest.raises(LookupError, match="no FIN from the client"):
        flow.fin_schedule(from_client=True)


def test_keepalive_probes_answered_then_unanswered():
    # keepidle 5, keepintvl 1: probes carry seq = snd_una - 1 and no data; the peer answers with a duplicate ACK.
    # The server's application reads the data only after the third probe: a window update, no probe answer.
    frames = handshake() + [tcp(0.01, "c", "P.", CISN + 1, SISN + 1, n=3000),
                            tcp(0.0101, "s", ".", SISN + 1, CISN + 3001, win=479)]
    for i in range(3):
        frames += [tcp(5.01 + i, "c", ".", CISN + 3000, SISN + 1),
                   tcp(5.0101 + i, "s", ".", SISN + 1, CISN + 3001, win=479)]
    frames.append(tcp(7.5, "s", ".", SISN + 1, CISN + 3001))
    frames += [tcp(8.01 + i, "c", ".", CISN + 3000, SISN + 1) for i in range(2)]
    flow = tcp_flow(parse(frames))
    assert flow.kinds()[5:] == ([Kind.KEEPALIVE, Kind.KEEPALIVE_ACK] * 3 + [Kind.WINDOW_UPDATE]
                                + [Kind.KEEPALIVE] * 2)
    assert {s.seq for s in flow.of(Kind.KEEPALIVE)} == {3000}
    assert flow.times(Kind.KEEPALIVE).intervals == approx([1, 1, 1, 1])
    assert flow.times(Kind.KEEPALIVE_ACK, from_client=False).offsets == approx([0, 1, 2])


def test_one_garbage_byte_keepalive_only_once_everything_is_acked():
    flow = tcp_flow(parse(handshake() + [
        tcp(0.01, "c", "P.", CISN + 1, SISN + 1, n=1),
        tcp(0.21, "c", "P.", CISN + 1, SISN + 1, n=1),
        tcp(0.2101, "s", ".", SISN + 1, CISN + 2),
        tcp(7200.0, "c", ".", CISN + 1, SISN + 1, n=1),
        tcp(7200.0001, "s", ".", SISN + 1, CISN + 2, opts=sack((CISN + 1, CISN + 2))),
    ]))
    assert flow.kinds()[3:] == [Kind.DATA, Kind.RETRANSMISSION, Kind.ACK, Kind.KEEPALIVE, Kind.KEEPALIVE_ACK]


def test_zero_window_probes_back_off_until_the_window_opens():
    # S22: the paused server's buffer fills; the client's persist timer probes at RTO, doubling.
    frames = handshake() + [
        tcp(0.01, "c", ".", CISN + 1, SISN + 1, n=1000),
        tcp(0.0102, "s", ".", SISN + 1, CISN + 1001, win=0),
    ]
    probes = [0.2102, 0.6102, 1.4102, 3.0102]
    for t in probes[:3]:
        frames += [tcp(t, "c", ".", CISN + 1000, SISN + 1), tcp(t + 0.0001, "s", ".", SISN + 1, CISN + 1001, win=0)]
    frames += [tcp(probes[3], "c", ".", CISN + 1000, SISN + 1),
               tcp(probes[3] + 0.0001, "s", ".", SISN + 1, CISN + 1001, win=0),
               tcp(3.5, "s", ".", SISN + 1, CISN + 1001, win=250),
               tcp(3.5001, "c", "P.", CISN + 1001, SISN + 1, n=1000)]
    flow = tcp_flow(parse(frames))
    assert flow.kinds()[3:] == ([Kind.DATA, Kind.ZERO_WINDOW] + [Kind.ZERO_WINDOW_PROBE, Kind.ZERO_WINDOW_PROBE_ACK] * 4
                                + [Kind.WINDOW_UPDATE, Kind.DATA])
    assert {s.seq for s in flow.of(Kind.ZERO_WINDOW_PROBE)} == {1000}
    probing = flow.times(Kind.ZERO_WINDOW_PROBE)
    assert probing.offsets == approx([p - probes[0] for p in probes])
    assert probing.intervals == approx([0.4, 0.8, 1.6])
    assert probing.ratios == approx([2, 2])


def test_a_probe_answered_by_an_open_window_is_a_window_update():
    flow = tcp_flow(parse(handshake() + [
        tcp(0.01, "c", ".", CISN + 1, SISN + 1, n=1000),
        tcp(0.0102, "s", ".", SISN + 1, CISN + 1001, win=0),
        tcp(0.2102, "c", ".", CISN + 1000, SISN + 1),
        tcp(0.2103, "s", ".", SISN + 1, CISN + 1001, win=100),
    ]))
    assert flow.kinds()[3:] == [Kind.DATA, Kind.ZERO_WINDOW, Kind.ZERO_WINDOW_PROBE, Kind.WINDOW_UPDATE]


def test_rst_from_a_rebooted_server_and_a_new_connection_on_the_same_ports():
    # The rebooted server has no socket: it answers data with RST (seq = the segment's ack, no ACK flag).
    new_isn = CISN + 5_000_000
    flows = tcp_flows(parse(handshake() + [
        tcp(3.0, "c", "P.", CISN + 1, SISN + 1, n=5),
        tcp(3.0001, "s", "R", SISN + 1),
        tcp(4.0, "c", "S", new_isn, win=64240, opts=SYN_OPTS),
        tcp(4.0001, "s", "R.", 0, new_isn + 1, win=0),
    ]))
    assert [f.kinds() for f in flows] == [[Kind.SYN, Kind.SYNACK, Kind.ACK, Kind.DATA, Kind.RST],
                                          [Kind.SYN, Kind.RST]]
    assert (flows[0].segments[-1].seq, flows[0].segments[-1].ack) == (1, None)
    assert (flows[1].segments[-1].seq, flows[1].segments[-1].ack) == (0, 1)


def test_simultaneous_open_is_one_flow():
    flows = tcp_flows(parse([
        tcp(0.0, "c", "S", CISN, win=64240, opts=SYN_OPTS),
        tcp(0.0001, "s", "S", SISN, win=64240, opts=SYN_OPTS),
        tcp(0.0002, "c", "S.", CISN, SISN + 1, win=64240, opts=SYN_OPTS),
        tcp(0.0003, "s", "S.", SISN, CISN + 1, win=64240, opts=SYN_OPTS),
    ]))
    assert [f.kinds() for f in flows] == [[Kind.SYN, Kind.SYN, Kind.SYNACK, Kind.SYNACK]]


def test_flow_seen_from_the_synack_has_the_synack_receiver_as_client():
    flow = tcp_flow(parse(handshake()[1:]))
    assert (flow.client, flow.server) == ((C, CP), (S, SP))
    assert summary(flow) == [(Kind.SYNACK, "s", 0, 0, 0), (Kind.ACK, "c", 0, 1, 0)]


def test_flow_without_its_syn_starts_at_the_first_packet():
    flow = tcp_flow(parse([
        tcp(0.0, "s", "P.", SISN + 501, CISN + 1, n=100),
        tcp(0.0001, "c", ".", CISN + 1, SISN + 601),
        tcp(0.2, "s", "P.", SISN + 501, CISN + 1, n=100),
        tcp(75.0, "c", ".", CISN, SISN + 601),
        tcp(75.0001, "s", ".", SISN + 601, CISN + 1),
    ]))
    assert (flow.client, flow.server) == ((S, SP), (C, CP))
    assert summary(flow) == [
        (Kind.DATA, "c", 0, 0, 100), (Kind.ACK, "s", 0, 100, 0), (Kind.RETRANSMISSION, "c", 0, 0, 100),
        (Kind.KEEPALIVE, "s", -1, 100, 0), (Kind.KEEPALIVE_ACK, "c", 100, 0, 0),
    ]
    with pytest.raises(LookupError, match="no SYN from the client"):
        flow.syn_schedule()


def test_icmp_host_unreachable_quoting_a_syn_is_attached_to_the_flow():
    # The gateway gives up resolving the server and answers the SYN retransmission.
    frames = [tcp(0.0, "c", "S", CISN, win=64240, opts=SYN_OPTS), tcp(1.0, "c", "S", CISN, win=64240, opts=SYN_OPTS)]
    frames.append(icmp_error(1.003, GW, C, 1, frames[1][1]))
    flow = tcp_flow(parse(frames))
    assert flow.kinds() == [Kind.SYN, Kind.SYN_RETRANSMISSION]
    (error,) = flow.icmp
    assert (error.name, error.quotes_client, error.seq, error.packet.src) == ("host-unreachable", True, 0, GW)
    assert error.t == approx(T0 - OFFSET + 1.003)
    assert flow.render().splitlines()[-1] == (
        "  +1.003000s  <-  ICMP host-unreachable (3/1) from 10.213.5.1, quoting seq 0")
    assert [row["kind"] for row in flow.to_json()] == ["syn", "syn-retransmission", "icmp"]


def test_icmp_quoting_only_eight_bytes_of_tcp_still_names_the_segment():
    data = tcp(0.01, "c", "P.", CISN + 1, SISN + 1, n=100)
    flow = tcp_flow(parse(handshake() + [data, icmp_error(0.0102, S, C, 13, data[1], keep=28)]))
    (error,) = flow.icmp
    assert (error.name, error.seq) == ("admin-prohibited", 1)


def test_udp_datagram_answered_by_port_unreachable():
    datagram = _ip(C, S, dpkt.ip.IP_PROTO_UDP, dpkt.udp.UDP(sport=5353, dport=9999, ulen=13, data=b"hello"),
                   ip_id=77)
    packets = parse([(T0, datagram), icmp_error(0.0001, S, C, 3, datagram),
                     (T0 + 1, _ip(S, C, dpkt.ip.IP_PROTO_UDP,
                                  dpkt.udp.UDP(sport=9999, dport=5353, ulen=9, data=b"x")))])
    assert tcp_flows(packets) == []
    flow = udp_flow(packets, port=9999)
    assert [(d.from_client, d.length, d.packet.ip_id) for d in flow.datagrams] == [(True, 5, 77), (False, 1, 0)]
    (error,) = flow.icmp
    assert (error.name, error.quotes_client, error.seq) == ("port-unreachable", True, None)
    assert flow.times().intervals == approx([1.0])
    assert flow.render().splitlines()[1:] == [
        "  +0.000000s  ->  UDP len 5",
        "  +0.000100s  <-  ICMP port-unreachable (3/3) from 10.213.5.20",
        "  +1.000000s  <-  UDP len 1",
    ]


def test_lookup_by_port_and_peer():
    packets = parse(handshake() + handshake(0.5, cisn=7, ports=(40313, SP)) + handshake(0.7, ports=(40314, 80)))
    assert [f.client[1] for f in tcp_flows(packets, port=SP)] == [CP, 40313]
    assert tcp_flow(packets, port=80).server == (S, 80)
    assert tcp_flow(Wire("client", packets), port=40313, peer=S).client == (C, 40313)
    assert tcp_flows(packets, peer="10.0.0.1") == [] and udp_flows(packets) == []
    with pytest.raises(LookupError, match=r"found 2\n  10.213.5.10:40312 > 10.213.5.20:6666\n"):
        tcp_flow(packets, port=SP)


def test_schedule_needs_a_segment_that_sends_sequence_space():
    flow = tcp_flow(parse(handshake()))
    with pytest.raises(ValueError, match="a ack segment"):
        flow.schedule(flow.segments[2])
    with pytest.raises(LookupError, match="no data segment #0 from the client"):
        flow.data_schedule(0)


def test_times_backoff_ratios():
    times = Times((10.0, 10.0, 10.5, 11.5))
    assert times.intervals == [0.0, 0.5, 1.0]
    assert times.ratios == [float("inf"), 2.0]
    assert times.offsets == [0.0, 0.0, 0.5, 1.5]
