"""netem fallback benchmark: what the NFQUEUE delay line adds beyond the delay asked for, how exact the nft numgen
loss is, and how long apply and heal take (docs/netem-fallback.md quotes the figures).

    .venv/bin/python bench/netem_fallback.py [--probes 500] [--datagrams 20000] [--repeat 10]

A UDP echo between the test bed's two hosts (the client measures each round trip with perf_counter); the
fault is on the server's egress, so each echo's answer waits in the delay line. Added latency is a percentile
of the round trips minus the baseline median minus the delay asked for; jitter is their standard deviation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from benchlib import bench_testbed, percentile as _pct
from faults import Netem
from harness.backends.base import Host

PORT = 6688
DELAYS_MS = (0, 10, 50)
LOSSES_PCT = (1, 10, 50)
ECHO = """
import socket
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", %d))
while True:
    data, peer = sock.recvfrom(2048)
    sock.sendto(data, peer)
""" % PORT
PROBE = """
import json, socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(2)
rtts = []
for i in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    sock.sendto(str(i).encode(), (sys.argv[1], %d))
    while int(sock.recv(64)) != i:
        pass
    rtts.append((time.perf_counter() - t0) * 1000)
    time.sleep(0.005)
print(json.dumps(rtts))
""" % PORT
COUNT = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE
sock.bind(("0.0.0.0", %d))
sock.settimeout(2)
n = 0
try:
    while True:
        sock.recv(64)
        n += 1
except TimeoutError:
    print(n)
""" % (PORT + 1)
BLAST = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t0 = time.perf_counter()
for i in range(int(sys.argv[2])):
    sock.sendto(b"x", (sys.argv[1], %d))
print(time.perf_counter() - t0)
""" % (PORT + 1)


def _probe(client: Host, server: Host, probes: int) -> list[float]:
    return json.loads(client.run(["python3", "-c", PROBE, server.addr, str(probes)], timeout=600, check=True).stdout)


def _count(client: Host, server: Host, datagrams: int) -> tuple[int, float]:
    """Datagrams the client received of `datagrams` the server sent as fast as it could, and the send time."""
    client.spawn(["python3", "-c", COUNT], name="count")
    while not client.sockets(proto="udp", port=PORT + 1):
        time.sleep(0.05)
    took = float(server.run(["python3", "-c", BLAST, client.addr, str(datagrams)], timeout=600, check=True).stdout)
    return int(client.wait("count", timeout=600).check().stdout), took


def _dropped(host: Host, table: str) -> int:
    listing = json.loads(host.run(["nft", "-j", "list", "table", "netdev", table], check=True).stdout)["nftables"]
    return next(e["counter"]["packets"] for i in listing if "rule" in i for e in i["rule"]["expr"] if "counter" in e)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=500, help="echo round trips per condition")
    parser.add_argument("--datagrams", type=int, default=20000, help="datagrams per loss rate")
    parser.add_argument("--repeat", type=int, default=10, help="apply/heal timings per fault kind")
    args = parser.parse_args()

    with bench_testbed() as bench:
        image = bench.image
        client, server = bench.testbed["client"], bench.testbed["server"]
        server.spawn(["python3", "-c", ECHO], name="echo")
        while not server.sockets(proto="udp", port=PORT):
            time.sleep(0.05)
        kernel = server.kernel_release
        print(f"netem fallback benchmark (kernel {kernel}, image {image}, {args.probes} UDP echoes per row)")
        baseline = _probe(client, server, args.probes)
        base = statistics.median(baseline)
        print(f"{'condition':<26}{'median':>9}{'p90':>9}{'p99':>9}{'max':>9}{'stdev':>9}   (ms)")
        print(f"{'baseline (no fault)':<26}{base:>9.3f}{_pct(baseline, .9):>9.3f}{_pct(baseline, .99):>9.3f}"
              f"{max(baseline):>9.3f}{statistics.stdev(baseline):>9.3f}")
        for delay in DELAYS_MS:
            with Netem(server, delay_ms=delay, fallback="always") as fault:
                rtts = _probe(client, server, args.probes)
            late = fault.record()["fallback"]["delayline_exit"]["counters"]
            added = [_pct(rtts, q) - base - delay for q in (.5, .9, .99)] + [max(rtts) - base - delay]
            print(f"{f'delay {delay} ms: added':<26}" + "".join(f"{a:>9.3f}" for a in added)
                  + f"{statistics.stdev(rtts):>9.3f}   (delay line: releases late by up to "
                  f"{late['late_max_ms']:.3f} ms, mean {late['late_sum_ms'] / max(1, late['released']):.3f})")

        print(f"\nloss fallback, {args.datagrams} datagrams server -> client as fast as the sender goes")
        for loss in LOSSES_PCT:
            with Netem(server, loss_pct=loss, fallback="always") as fault:
                got, _ = _count(client, server, args.datagrams)
                dropped = _dropped(server, fault.substitute.name)
            rate = 100 * (args.datagrams - got) / args.datagrams
            sd = 100 * (loss / 100 * (1 - loss / 100) / args.datagrams) ** 0.5
            print(f"  loss {loss:>3} %: measured {rate:7.3f} %   (binomial sd {sd:.3f} %, "
                  f"{(rate - loss) / sd:+.1f} sd; the rule's counter: {dropped} dropped)")
        with Netem(server, fallback="always") as fault:
            got, took = _count(client, server, args.datagrams)
        dropped, held = args.datagrams - got, fault.record()["fallback"]["delayline_exit"]["counters"]["held_max"]
        print(f"  delay line at 0 ms under a blast of {args.datagrams / took:,.0f} datagrams/s: {dropped} dropped "
              f"(queue limit 1000), held at most {held}")

        print(f"\napply / heal wall time, median (max) of {args.repeat}, seen from the harness")
        for label, kwargs in (("loss", {"loss_pct": 1}), ("delay", {"delay_ms": 10}),
                              ("loss + delay", {"loss_pct": 1, "delay_ms": 10})):
            applies, heals = [], []
            for _ in range(args.repeat):
                fault = Netem(server, fallback="always", **kwargs)
                t0 = time.perf_counter()
                fault.apply()
                t1 = time.perf_counter()
                fault.heal()
                heals.append(time.perf_counter() - t1)
                applies.append(t1 - t0)
            print(f"  {label:<14} apply {1000 * statistics.median(applies):7.1f} ms ({1000 * max(applies):.1f})"
                  f"   heal {1000 * statistics.median(heals):7.1f} ms ({1000 * max(heals):.1f})")


if __name__ == "__main__":
    main()
