"""Catalogue benchmark: the scenario catalogue's wall time against the kernel waits it cannot avoid.

    .venv/bin/python bench/catalogue.py [--workers 2] [--repeat 1]

Each scenario records the seconds it must spend waiting for kernel timers (`kernel_wait`, computed from its
expectation: S02's SYN schedule, S08's retransmission budget, ...). Run with N pytest-xdist workers, the
catalogue can at best take sum(kernel_wait) / N; the issue's target is a wall time of at most 1.5 times that.
Prints, per run, the wall time, that bound and their ratio, and the slowest tests with their overhead.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from harness.catalogue import REPO_ROOT, scenario_files


def run(workers: int, junit: Path) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "pytest", "-m", "faults", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
           *(["-n", str(workers)] if workers else []), *map(str, scenario_files())]
    started = time.monotonic()
    returncode = subprocess.call(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
    return time.monotonic() - started, returncode


def tests_of(junit: Path) -> list[tuple[str, float, float | None, str | None]]:
    """(test id, duration, kernel_wait or None, failure message or None) of every test case in a JUnit file."""
    found = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        wait = next((float(p.get("value")) for p in case.iter("property") if p.get("name") == "kernel_wait"), None)
        failure = next((f"{f.tag}: {f.get('message', '')[:300]}" for f in case if f.tag in ("failure", "error")), None)
        found.append((f"{case.get('classname')}::{case.get('name')}", float(case.get("time")), wait, failure))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (0: none)")
    parser.add_argument("--repeat", type=int, default=1, help="runs in a row (the issue asks for 5 with no failure)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(1, args.repeat + 1):
            junit = Path(tmp) / f"run{n}.xml"
            wall, returncode = run(args.workers, junit)
            tests = tests_of(junit)
            waits = [w for _, _, w, _ in tests if w is not None]
            bound = sum(waits) / max(1, args.workers)
            print(f"run {n}: exit {returncode}, {len(tests)} tests ({len(waits)} with kernel_wait), wall {wall:.1f} s; "
                  f"sum(kernel_wait) {sum(waits):.1f} s / {max(1, args.workers)} workers = {bound:.1f} s; "
                  f"ratio {wall / bound if bound else float('inf'):.2f} (target <= 1.5)", flush=True)
            slowest = sorted(tests, key=lambda t: t[1], reverse=True)[:5]
            for name, duration, wait, _ in slowest:
                print(f"    {duration:6.1f} s  kernel_wait {'-' if wait is None else f'{wait:.1f}'} s  {name}")
            for name, _, _, failure in tests:
                if failure is not None:
                    print(f"    FAILED {name}: {failure}")
            missing = [name for name, _, wait, _ in tests if wait is None]
            if missing:
                print(f"    without kernel_wait: {', '.join(missing)}")


if __name__ == "__main__":
    main()
