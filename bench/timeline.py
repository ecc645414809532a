"""Observation benchmark: from the end of a test to its parsed timeline, for a capture of about 10 MB.

    .venv/bin/python bench/timeline.py [--megabytes 10]

The client sends a bulk TCP transfer to the server while tcpdump captures on the client; once it is acked,
each step a test's end goes through is timed: stopping the capture and bringing the pcap over the agent's channel,
parsing it (dpkt), the per-flow analysis, and building and rendering the timeline. Prints figures.
"""

from __future__ import annotations

import argparse
import base64
import time

from benchlib import bench_testbed
from harness import evidence
from harness.flows import tcp_flows
from harness.sockets import wait_for
from harness.timeline import Timeline
from harness.wire import Wire, parse_pcap

PORT = 6666
CHUNK = 65536
# The server reads and discards whatever comes, so that the transfer is not held up by a full window.
SINK = f"""
import socket
listener = socket.create_server(("0.0.0.0", {PORT}))
conn, _ = listener.accept()
while conn.recv(1 << 20):
    pass
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=10.0, help="size of the pcap to aim for")
    args = parser.parse_args()

    with bench_testbed() as bench:
        client, server = bench.testbed["client"], bench.testbed["server"]
        server.spawn(["python3", "-c", SINK], name="sink")
        wait_for(server, "LISTEN", port=PORT)
        conn = client.connect(addr=server.addr, port=PORT)
        assert conn.ok, conn
        capture_id = client.capture_start(filter=f"tcp port {PORT}")
        client.send(conn.handle, size=CHUNK, count=int(args.megabytes * 2**20 / CHUNK))
        while client.sockets(port=PORT)[0]["send_q"]:
            time.sleep(0.01)
        offset = client.realtime_minus_monotonic
        with evidence.collecting() as collected:
            t0 = time.perf_counter()
            result = client.channel.call("capture_stop", id=capture_id)
            pcap = base64.b64decode(result["pcap"])
            t1 = time.perf_counter()
            wire = Wire("client", parse_pcap(pcap, offset))
            evidence.note_wire(wire)
            t2 = time.perf_counter()
            flows = tcp_flows(wire)
            t3 = time.perf_counter()
            timeline = Timeline.of(collected)
            text = timeline.render()
            t4 = time.perf_counter()

    print(f"netfault timeline benchmark (image {bench.image}): pcap {len(pcap) / 2**20:.1f} MB, "
          f"{len(wire)} packets, {len(flows)} flow(s), {sum(len(f.segments) for f in flows)} segments")
    for step, seconds in (("stop capture + pcap over the agent channel", t1 - t0), ("parse pcap (dpkt)", t2 - t1),
                          ("per-flow analysis", t3 - t2), ("timeline: build + render", t4 - t3),
                          ("test end -> parsed timeline, total", t4 - t0)):
        print(f"  {step:<44} {seconds:8.3f} s")
    print(f"  rendered timeline: {len(text.splitlines())} lines (first and last rows kept)")


if __name__ == "__main__":
    main()
