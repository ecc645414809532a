"""S01: a client connects to a host where nothing listens on the port."""

import pytest

from harness.capture import capture
from harness.timing import SCHEDULING_SLACK

pytestmark = pytest.mark.faults

SCENARIO = {
    "id": "S01",
    "title": "Connect to a host where nothing listens on the port",
    "fault": "None: the server host is up, no process listens on the port",
    "linux": "The server's kernel answers the SYN with RST/ACK; nothing is retransmitted, nothing lingers.",
    "expect": "ECONNREFUSED at once (well under a millisecond on a LAN).",
    "lesson": "ECONNREFUSED means the host is up and the service is not: retrying soon is reasonable, unlike "
              "after a timeout.",
}

PORT = 6666
# The first SYN retransmission comes 1 s (TCP_TIMEOUT_INIT) after the SYN. "At once" means the RST answered
# the first SYN: half of that leaves room for a loaded machine and still excludes a retransmission.
AT_ONCE = 0.5 + SCHEDULING_SLACK
# Packet times (pcap, CLOCK_REALTIME) are mapped to CLOCK_MONOTONIC with an offset sampled right after the
# capture; NTP may slew CLOCK_REALTIME by at most 500 ppm, i.e. 0.5 ms per second of test: 2 ms covers it.
CLOCK_ALIGNMENT = 0.002


def test_s01_connect_without_listener_is_refused_at_once(pair, record_property):
    """S01, seed experiment "客户端连接一个没有在监听的主机" (client connects to a host with no listener).

    The server host is up but no process listens on the port, so its kernel answers the SYN with RST/ACK and
    connect() fails with ECONNREFUSED at once: no retransmission, nothing left in SYN_SENT.
    """
    client, server = pair.client, pair.server
    record_property("kernel_wait", 0.0)
    with capture(client, f"tcp port {PORT}") as wire:
        rec = client.connect(addr=server.addr, port=PORT)
    evidence = f"\n{rec}\n{wire.table(since=rec.t0)}"

    assert rec.errname == "ECONNREFUSED", evidence
    assert rec.elapsed < AT_ONCE, evidence

    assert wire.complete, "tcpdump must have written every packet it was given" + evidence
    syn, rst = wire.tcp(port=PORT)
    assert (syn.flags, syn.src, syn.dst, syn.dport) == ("S", client.addr, server.addr, PORT), evidence
    assert (rst.flags, rst.src, rst.dst, rst.sport) == ("R.", server.addr, client.addr, PORT), evidence
    assert rst.dport == syn.sport and rst.ack == syn.seq + 1, evidence
    assert rec.t0 - CLOCK_ALIGNMENT <= syn.t <= rst.t <= rec.t1 + CLOCK_ALIGNMENT, evidence

    assert client.sockets(port=PORT) == [], "the refused socket must not linger (e.g. in SYN_SENT)"
    assert server.sockets(port=PORT) == [], "the server holds no socket on the port at all"
