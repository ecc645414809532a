"""Fault library benchmark: apply and heal latency of each fault kind on real containers.

    .venv/bin/python bench/fault_latency.py [--repeat 20] [--slow-repeat 3]

`apply` returns once the fault is in force (nft/iptables-restore return after the kernel committed the
transaction, the agent answers after the netlink change or the sysctl write, the engine after the cgroup
freeze or the reboot), so the time of the call is the time from the call to the fault being in force. Each
kind is applied once before timing (backend detection, the sysctl sidecar, pyroute2's first import are one-time
costs, shown as "first"). Prints figures (the issue's target in brackets); it does not fail on a missed target.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from benchlib import bench_testbed, percentile as _pct
from faults import Drop, Fault, LinkDown, Partition, Pause, PowerLoss, Reject, Restart, Signal, Sysctls
from faults.netem import Netem, netem_missing


def _time(make: Callable[[], Fault], repeat: int) -> tuple[float, float, list[float], list[float]]:
    """(first apply, first heal, warm applies, warm heals) in seconds."""
    applies, heals = [], []
    for _ in range(repeat + 1):
        fault = make()
        t0 = time.perf_counter()
        fault.apply()
        t1 = time.perf_counter()
        fault.heal()
        t2 = time.perf_counter()
        applies.append(t1 - t0)
        heals.append(t2 - t1)
    return applies[0], heals[0], applies[1:], heals[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20, help="timed apply/heal cycles per fast fault kind")
    parser.add_argument("--slow-repeat", type=int, default=3, help="cycles for faults that reboot a host")
    args = parser.parse_args()

    rows: list[tuple[str, float, float, list[float], list[float]]] = []
    skipped: list[tuple[str, str]] = []
    with bench_testbed() as bench:
        client, server = bench.testbed["client"], bench.testbed["server"]
        worker = server.spawn_worker("bench-worker")
        kinds: list[tuple[str, Callable[[], Fault], int]] = [
            ("Drop (nft)", lambda: Drop(server, dport=6666, backend="nft"), args.repeat),
            ("Drop (iptables)", lambda: Drop(server, dport=6666, backend="iptables"), args.repeat),
            ("Reject tcp-reset (nft)", lambda: Reject(server, "tcp-reset", dport=6666), args.repeat),
            ("Partition two-way (nft, 2 hosts)", lambda: Partition(client, server), args.repeat),
            ("PowerLoss (nft: ip + arp tables)", lambda: PowerLoss(server), args.repeat),
            ("PowerLoss (iptables + arptables)", lambda: PowerLoss(server, backend="iptables"), args.repeat),
            ("LinkDown eth0 (heal restores routes)", lambda: LinkDown(client), args.repeat),
            ("Sysctls (1 value, sidecar)", lambda: Sysctls(client, {"net.ipv4.tcp_syn_retries": 2}), args.repeat),
            ("Signal SIGSTOP/SIGCONT (worker)", lambda: Signal(worker, "SIGSTOP"), args.repeat),
            ("Pause (docker pause/unpause)", lambda: Pause(server), args.repeat),
            ("Restart hard (links down, kill, boot)", lambda: Restart(server), args.slow_repeat),
        ]
        missing = netem_missing(server)
        if missing is None:
            kinds.append(("Netem delay 10 ms (egress)", lambda: Netem(server, delay_ms=10), args.repeat))
        else:
            skipped.append(("Netem", missing))
        for name, make, repeat in kinds:
            print(f"timing {name} ({repeat} cycles)...", flush=True)
            rows.append((name, *_time(make, repeat)))

    print(f"\nnetfault fault benchmark (engine {bench.engine_version}, image {bench.image}); milliseconds")
    print(f"{'fault':<40} {'apply med':>9} {'p90':>8} {'heal med':>9} {'p90':>8} {'1st apply':>9} {'1st heal':>9}"
          "   [target: apply <= 20 ms median]")
    for name, first_apply, first_heal, applies, heals in rows:
        figures = [statistics.median(applies), _pct(applies, 0.9), statistics.median(heals), _pct(heals, 0.9),
                   first_apply, first_heal]
        print(f"{name:<40} " + " ".join(f"{value * 1e3:>{width}.1f}" for value, width in
                                         zip(figures, (9, 8, 9, 8, 9, 9))))
    for name, reason in skipped:
        print(f"{name:<40} skipped: {reason}")


if __name__ == "__main__":
    main()
