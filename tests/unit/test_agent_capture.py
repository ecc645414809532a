"""Captures with tcpdump on the loopback interface, read back with dpkt (not with harness.wire)."""

from __future__ import annotations

import io
import os
import shutil

import dpkt
import pytest
from agent_helpers import LOOPBACK, free_port

from harness.channel import AgentChannel, AgentOSError, BadRequest, PipeTransport
from harness.endpoint import Endpoint

needs_tcpdump = pytest.mark.skipif(shutil.which("tcpdump") is None,
                                   reason="tcpdump is not installed on this machine (capture tests need it)")


def tcp_packets(pcap: bytes) -> list[tuple[float, int, int, str]]:
    """(timestamp, sport, dport, flags) of the TCP packets in a pcap of the loopback interface."""
    packets = []
    for ts, frame in dpkt.pcap.Reader(io.BytesIO(pcap)):
        tcp = dpkt.ethernet.Ethernet(frame).data.data
        flags = "".join(name for bit, name in ((dpkt.tcp.TH_SYN, "S"), (dpkt.tcp.TH_RST, "R"),
                                                (dpkt.tcp.TH_FIN, "F"), (dpkt.tcp.TH_ACK, ".")) if tcp.flags & bit)
        packets.append((ts, tcp.sport, tcp.dport, flags))
    return packets


@needs_tcpdump
def test_refused_connect_is_a_syn_answered_by_rst(agent: Endpoint) -> None:
    port = free_port()
    capture = agent.capture_start(iface="lo", filter=f"tcp port {port}")
    record = agent.connect(LOOPBACK, port)
    pcap = agent.capture_stop(capture)

    cport = record.extra["local"][1]
    packets = tcp_packets(pcap)
    assert [p[1:] for p in packets] == [(cport, port, "S"), (port, cport, "R.")]
    # The packets happened inside the connect() call, on the realtime clock of the record.
    assert all(record.t0_real - 0.001 <= ts <= record.t1_real + 0.001 for ts, *_ in packets)


@needs_tcpdump
def test_unknown_capture_and_bad_interface(agent: Endpoint) -> None:
    with pytest.raises(BadRequest, match="unknown capture 'c9'"):
        agent.capture_stop("c9")
    with pytest.raises(BadRequest, match="tcpdump exited with status 1 before listening.*nosuchif0"):
        agent.capture_start(iface="nosuchif0")


def test_missing_tcpdump_is_a_clear_error() -> None:
    channel = AgentChannel(PipeTransport(env={**os.environ, "PATH": "/nonexistent"}), "bare")
    try:
        with pytest.raises(AgentOSError, match="tcpdump is not installed in this host") as raised:
            Endpoint(channel, "bare").capture_start(iface="lo")
    finally:
        channel.close()
    assert raised.value.errname == "ENOENT"
