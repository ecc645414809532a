"""Kernel matrix benchmark: boot-to-first-test per kernel, the matrix's wall time, QEMU's peak memory per guest.

    .venv/bin/python bench/matrix.py [--kernel 6.1 ...] [--parallel N] [--keep DIR] [-- -k s02]

Runs `netfault matrix` (default kernels: 5.10, 6.1, 6.12, 7) and prints, per kernel, the seconds from QEMU's
start to the guest's command (boot) and to the first event of the first test (a guest's CLOCK_MONOTONIC starts
at its boot, so the earliest event time of its run is that), the guest's wall time and peak RSS, and its
catalogue's outcome counts; then the matrix's wall time against the kernel waits of one catalogue run
(sum of the tests' `kernel_wait`), the issue's target being at most 2 times that for 4 kernels.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from harness.catalogue import REPO_ROOT
from harness.errors import ResultsError
from harness.results_reader import Run, load_run


def first_event(run: Run) -> float | None:
    """The earliest event time (guest CLOCK_MONOTONIC, so seconds since its boot) in the run's timelines."""
    times = []
    for bundle in run.bundles.values():
        path = bundle.path / "timeline.json"
        if path.exists():
            times += [event["t"] for event in json.loads(path.read_text())]
    return min(times, default=None)


def kernel_wait(run: Run) -> float:
    return sum(float(b.outcome.get("properties", {}).get("kernel_wait") or 0) for b in run.bundles.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", action="append", default=[], help="a kernel spec (repeat; default: the matrix's)")
    parser.add_argument("--parallel", type=int, default=None, help="guests at a time (default: the matrix's)")
    parser.add_argument("--keep", type=Path, default=None, help="results directory to keep (default: a temporary one)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: arguments for the catalogue in the guests")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = args.keep or Path(tmp)
        cmd = [sys.executable, "-m", "harness.cli", "matrix", "--results", str(results),
               *(a for k in args.kernel for a in ("--kernel", k)),
               *(["--parallel", str(args.parallel)] if args.parallel else []), *args.extra]
        started = time.monotonic()
        returncode = subprocess.call(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
        wall = time.monotonic() - started
        (matrix_dir,) = sorted(results.glob("matrix-*"))[-1:]
        matrix = json.loads((matrix_dir / "matrix.json").read_text())
        waits = []
        print(f"matrix exit {returncode}, {len(matrix['kernels'])} kernel(s), {matrix['parallel']} at a time, "
              f"wall {wall:.0f} s")
        for entry in matrix["kernels"]:
            try:
                run = load_run(Path(entry["results"]) / "latest")
            except (ResultsError, TypeError) as exc:
                print(f"  {entry['spec']:>5} {entry.get('release')}: no results ({exc}); error {entry.get('error')}")
                continue
            waits.append(kernel_wait(run))
            counts = Counter(b.outcome["outcome"] for b in run.bundles.values())
            first = first_event(run)
            print(f"  {entry['spec']:>5} {entry['release']:<24} boot {entry['boot_to_command_s']:5.1f} s, first test "
                  f"{'-' if first is None else f'{first:5.1f}'} s, guest wall {entry['wall_s']:6.1f} s, peak RSS "
                  f"{entry['peak_rss_mb']:6.0f} MB, {entry['accel']}; "
                  + ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())))
        if waits:
            one = max(waits)
            print(f"kernel waits of one catalogue run: {one:.1f} s; matrix wall / that = {wall / one:.2f} "
                  f"(target <= 2 for 4 kernels)")


if __name__ == "__main__":
    main()
