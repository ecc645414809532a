"""Foundation benchmark: host start time, agent RPC round trip, and S01's harness overhead.

    .venv/bin/python bench/foundation.py [--rpc 500] [--s01 20]

Prints figures (targets from the foundation issue in brackets); it does not fail on a missed target.
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchlib import bench_testbed, percentile as _pct
from harness.capture import capture

PORT = 6666


def _line(name: str, value: str, target: str) -> None:
    print(f"{name:<44} {value:>22}   [target {target}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpc", type=int, default=500, help="RPC round trips to time")
    parser.add_argument("--s01", type=int, default=20, help="S01 repetitions on reused hosts")
    args = parser.parse_args()

    started = time.monotonic()
    with bench_testbed() as bench:
        bed_ready = time.monotonic() - started
        testbed = bench.testbed
        host_ready = bench.backend.host_ready_seconds
        client_host, server_host = testbed["client"], testbed["server"]

        rtts = []
        for _ in range(args.rpc):
            t0 = time.perf_counter()
            client_host.channel.call("info")
            rtts.append(time.perf_counter() - t0)

        overheads, walls = [], []
        for _ in range(args.s01):
            t0 = time.perf_counter()
            with capture(client_host, f"tcp port {PORT}") as wire:
                rec = client_host.connect(addr=server_host.addr, port=PORT)
            assert rec.errname == "ECONNREFUSED" and len(wire.tcp(port=PORT)) == 2, rec
            client_host.sockets(port=PORT)
            testbed.reset()
            wall = time.perf_counter() - t0
            walls.append(wall)
            overheads.append(wall - rec.elapsed)

    print(f"netfault foundation benchmark (engine {bench.engine_version}, image {bench.image})")
    _line("test bed ready (image check, network, 2 hosts)", f"{bed_ready:.3f} s", "-")
    for name, seconds in sorted(host_ready.items()):
        _line(f"host {name} ready (container + agent)", f"{seconds:.3f} s", "<= 1 s")
    _line(f"agent RPC round trip, median of {args.rpc}", f"{statistics.median(rtts) * 1e3:.3f} ms", "<= 5 ms")
    _line("agent RPC round trip, p95", f"{_pct(rtts, 0.95) * 1e3:.3f} ms", "-")
    _line(f"S01 harness overhead, median of {args.s01}", f"{statistics.median(overheads):.3f} s", "<= 0.5 s")
    _line("S01 harness overhead, p95", f"{_pct(overheads, 0.95):.3f} s", "-")
    _line("S01 wall time, median", f"{statistics.median(walls):.3f} s", "-")


if __name__ == "__main__":
    main()
