"""Socket-sampler benchmark: the agent's CPU use while sampling, at 10 ms and 1 ms, with 10 and 200 sockets.

    .venv/bin/python bench/sampler.py [--seconds 10] [--sockets 10 200] [--periods 10 1] [--fields]

The client host holds N connections to the server (N sockets in its namespace, all on the sampled port). For
each N and period, a sampler runs for `--seconds` while the agent is otherwise idle; the agent process's CPU
time (utime + stime of /proc/<pid>/stat, all its threads, read through the agent) over that wall interval is
compared with an idle interval of the same length, and the sampler thread's own CPU time (its
CLOCK_THREAD_CPUTIME_ID) is shown beside it. Prints figures; it does not fail.
"""

from __future__ import annotations

import argparse
import os
import time

from benchlib import bench_testbed
from harness.backends.base import Host
from harness.records import SyscallRecord
from harness.sockets import Sampler, wait_for

PORT = 6666
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(host: Host, pid: int) -> float:
    """utime + stime of process `pid` in `host`, all threads, in seconds."""
    stat = host.run(["cat", f"/proc/{pid}/stat"], check=True).stdout
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _check(record: SyscallRecord) -> None:
    if not record.ok:
        raise SystemExit(f"setting up the connections failed: {record}")


def _agent_cpu(host: Host, pid: int, seconds: float, sampler: Sampler | None) -> tuple[float, dict | None]:
    """(share of one CPU the agent used over `seconds`, the sampler's figures) with `sampler` running, if any."""
    before, t0 = _cpu_seconds(host, pid), time.monotonic()
    if sampler is not None:
        sampler.start()
    time.sleep(seconds)
    figures = None if sampler is None else sampler.stop().figures
    after, t1 = _cpu_seconds(host, pid), time.monotonic()
    return (after - before) / (t1 - t0), figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="wall time per measurement")
    parser.add_argument("--sockets", type=int, nargs="+", default=[10, 200], help="connections to hold")
    parser.add_argument("--periods", type=float, nargs="+", default=[10.0, 1.0], help="sampling periods (ms)")
    parser.add_argument("--fields", action="store_true", help="also record queue and tcp_info changes")
    args = parser.parse_args()

    rows = []
    with bench_testbed() as bench:
        image = bench.image
        client, server = bench.testbed["client"], bench.testbed["server"]
        pid = client.info()["pid"]
        _check(server.listen(port=PORT, backlog=max(args.sockets), accept=True))
        held = 0
        for count in sorted(args.sockets):
            for _ in range(count - held):
                _check(client.connect(server.addr, PORT))
            held = count
            wait_for(client, "ESTABLISHED", dport=PORT, count=count)
            print(f"{count} sockets: idle agent for {args.seconds:g} s...", flush=True)
            idle, _ = _agent_cpu(client, pid, args.seconds, None)
            for period in args.periods:
                print(f"{count} sockets: sampler every {period:g} ms for {args.seconds:g} s...", flush=True)
                sampler = Sampler(client, port=PORT, period_ms=period, fields=args.fields)
                busy, figures = _agent_cpu(client, pid, args.seconds, sampler)
                rows.append((count, period, idle, busy, figures))

    print(f"\nnetfault sampler benchmark (image {image}, {os.cpu_count()} CPUs, {args.seconds:g} s per row"
          f"{', fields' if args.fields else ''}); CPU as % of one core")
    print(f"{'sockets':>7} {'period':>7} {'agent':>6} {'idle':>5} {'thread':>6} {'samples':>7} {'missed':>6} "
          f"{'dump p50':>9} {'interval p50':>12} {'p99':>8} {'max':>8}")
    for count, period, idle, busy, figures in rows:
        thread = figures["cpu_s"] / (figures["t_last"] - figures["t_first"])
        interval, dump = figures["interval_ms"], figures["dump_ms"]
        print(f"{count:>7} {period:>5g}ms {busy * 100:>5.1f}% {idle * 100:>4.1f}% {thread * 100:>5.1f}% "
              f"{figures['samples']:>7} {figures['missed']:>6} {dump['p50']:>7.3f}ms {interval['p50']:>10.3f}ms "
              f"{interval['p99']:>6.2f}ms {interval['max']:>6.1f}ms")


if __name__ == "__main__":
    main()
