"""The kernel matrix (``netfault matrix``): one command per kernel, each in a QEMU guest booting that kernel.

Every guest runs ``guest_command`` (the fault catalogue on the netns backend) or, with ``smoke``,
``smoke_command`` (two namespaces, a veth pair, netem delay then loss: proof that the kernel's modules load
and netem works, and the kernel's SYN retransmissions), with ``<results>/matrix-<run id>/`` shared writable
at the same path inside the guest. That directory gets a directory per kernel release (what the command
wrote), a serial log per kernel and ``matrix.json``: per kernel, the release, the spec, the results
directory and the guest's figures.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import matrix_compare
from .errors import NetfaultError
from .guest import GUEST_HOME, GUEST_PATH, GuestResult, run_guest
from .images import REPO_ROOT
from .kernels import Kernel, resolve
from .results import write_json
from .results_reader import load_run
from .runinfo import RunInfo

Progress = Callable[[str], None]

MATRIX_JSON = "matrix.json"
SMOKE_JSON = "smoke.json"
SMOKE_DELAY_MS = 200  # well above what TCG adds to a round trip on veth (50-100 ms seen)
SMOKE_SYN_RETRIES = 2
MEMORY_MB = 2048  # guest RAM; QEMU only holds what the guest touched (830 MB seen for two scenarios)
CPUS = 1

# Runs in the guest as root: namespaces nf-a and nf-b joined by a veth pair, netem delay on nf-a's end, then a
# connect from nf-a to a closed port of nf-b: refused after one round trip, which netem must lengthen. Then netem
# loses everything and a connect with tcp_syn_retries=2 times out after the kernel's SYN schedule, its SYN
# retransmissions counted (Tcp RetransSegs): tcp_syn_linear_timeouts, where the kernel has it, changes them.
SMOKE = r"""
import ctypes, errno, json, pathlib, platform, socket, subprocess, sys, time
out, delay, syn_retries = pathlib.Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
def run(*argv):
    subprocess.run(argv, check=True)
def retrans_segs():
    tcp = [line.split() for line in open("/proc/thread-self/net/snmp") if line.startswith("Tcp:")]
    return int(tcp[1][tcp[0].index("RetransSegs")])
def connect():
    sock = socket.socket()
    started = time.monotonic()
    err = sock.connect_ex(("10.99.0.2", 9))
    return errno.errorcode.get(err, err), time.monotonic() - started
run("/sbin/ip", "netns", "add", "nf-a")
run("/sbin/ip", "netns", "add", "nf-b")
run("/sbin/ip", "link", "add", "nf-a0", "netns", "nf-a", "type", "veth", "peer", "name", "nf-b0", "netns", "nf-b")
for ns, dev, addr in (("nf-a", "nf-a0", "10.99.0.1/24"), ("nf-b", "nf-b0", "10.99.0.2/24")):
    run("/sbin/ip", "-n", ns, "addr", "add", addr, "dev", dev)
    run("/sbin/ip", "-n", ns, "link", "set", dev, "up")
run("/sbin/tc", "-n", "nf-a", "qdisc", "add", "dev", "nf-a0", "root", "netem", "delay", f"{delay:g}ms")
qdisc = subprocess.run(["/sbin/tc", "-n", "nf-a", "qdisc", "show", "dev", "nf-a0"], capture_output=True,
                       text=True, check=True).stdout.strip()
with open("/run/netns/nf-a") as ns:
    if ctypes.CDLL(None, use_errno=True).setns(ns.fileno(), 0x40000000) != 0:  # CLONE_NEWNET
        sys.exit(f"setns: {errno.errorcode[ctypes.get_errno()]}")
refused, rtt = connect()
run("/sbin/tc", "-n", "nf-a", "qdisc", "change", "dev", "nf-a0", "root", "netem", "loss", "100%")
pathlib.Path("/proc/sys/net/ipv4/tcp_syn_retries").write_text(str(syn_retries))  # nf-a's, as this thread is there
before = retrans_segs()
timed_out, syn_s = connect()
syn_retransmissions = retrans_segs() - before
linear = pathlib.Path("/proc/sys/net/ipv4/tcp_syn_linear_timeouts")
result = {"release": platform.release(), "qdisc": qdisc, "connect": refused, "connect_ms": round(rtt * 1000, 1),
          "netem_delay_ms": delay, "tcp_syn_retries": syn_retries, "lost_syns_connect": timed_out,
          "lost_syns_connect_s": round(syn_s, 2), "lost_syns_retransmissions": syn_retransmissions,
          "tcp_syn_linear_timeouts": int(linear.read_text()) if linear.exists() else None}
out.mkdir(parents=True, exist_ok=True)
(out / "smoke.json").write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps(result))
sys.exit(0 if refused == "ECONNREFUSED" and rtt * 1000 >= delay and timed_out == "ETIMEDOUT" else 1)
"""

Command = tuple[list[str], dict[str, str]]


def guest_env(kernel: Kernel) -> dict[str, str]:
    """The guest command's whole environment."""
    return {"PATH": GUEST_PATH, "HOME": GUEST_HOME, "LANG": "C.UTF-8", "TERM": "dumb", "PYTHONDONTWRITEBYTECODE": "1",
            "NETFAULT_KERNEL": kernel.release}


def guest_command(kernel: Kernel, results_dir: Path, extra: Sequence[str] = ()) -> Command:
    """The command each guest runs: the fault catalogue on the netns backend, results in ``results_dir``."""
    argv = [sys.executable, "-m", "harness.cli", "catalogue", "--backend", "netns", "--results", str(results_dir),
            *(["--", *extra] if extra else [])]
    return argv, guest_env(kernel)


def smoke_command(kernel: Kernel, results_dir: Path) -> Command:
    """The smoke test: netns, veth, netem and the SYN schedule in the guest; writes ``results_dir/smoke.json``."""
    return ([sys.executable, "-c", SMOKE, str(results_dir), str(SMOKE_DELAY_MS), str(SMOKE_SYN_RETRIES)],
            guest_env(kernel))


@dataclass
class Entry:
    """One kernel of the matrix: what it resolved to, how its guest went (matrix.json's ``kernels`` items)."""

    spec: str
    release: str | None = None
    suite: str | None = None
    version: str | None = None
    results: str | None = None  # the kernel's results directory (the command's --results)
    serial_log: str | None = None
    accel: str | None = None
    returncode: int | None = None
    first_output_s: float | None = None
    boot_to_command_s: float | None = None
    wall_s: float | None = None
    peak_rss_mb: float | None = None
    smoke: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.returncode == 0


def _run_one(spec: str, matrix_dir: Path, *, smoke: bool, extra: Sequence[str], timeout: float,
             accel: str | None, run: RunInfo, say: Progress, cancel: threading.Event) -> Entry:
    entry = Entry(spec)
    try:
        say(f"{spec}: resolving")
        kernel = resolve(spec, progress=lambda line: say(f"{spec}: {line}"))
        entry.release, entry.suite, entry.version = kernel.release, kernel.suite, kernel.version
        results = matrix_dir / kernel.release
        results.mkdir(exist_ok=True)
        entry.results, log = str(results), matrix_dir / f"{kernel.release}.serial.log"
        entry.serial_log = str(log)
        argv, env = smoke_command(kernel, results) if smoke else guest_command(kernel, results, extra)
        say(f"{kernel.release}: booting")
        result = run_guest(kernel, argv, share=matrix_dir, share_mount=str(matrix_dir), cwd=str(REPO_ROOT),
                           env=env, timeout=timeout, log_path=log, memory_mb=MEMORY_MB, cpus=CPUS, accel=accel,
                           run=run, progress=lambda line: say(f"{kernel.release}: {line}"), cancel=cancel)
    except NetfaultError as exc:
        entry.error = str(exc)
        say(f"{entry.release or spec}: failed: {exc}")
        return entry
    _figures(entry, result)
    if smoke and (results / SMOKE_JSON).exists():
        entry.smoke = json.loads((results / SMOKE_JSON).read_text())
    say(f"{kernel.release}: done in {result.wall_s:.0f} s (command started {entry.boot_to_command_s} s after "
        f"boot, QEMU peak RSS {entry.peak_rss_mb} MB, {result.accel}): exit status {result.returncode}")
    return entry


def _figures(entry: Entry, result: GuestResult) -> None:
    entry.accel, entry.returncode = result.accel, result.returncode
    entry.first_output_s = None if result.first_output_s is None else round(result.first_output_s, 2)
    entry.boot_to_command_s = None if result.command_start_s is None else round(result.command_start_s, 2)
    entry.wall_s, entry.peak_rss_mb = round(result.wall_s, 2), round(result.peak_rss_kb / 1024, 1)


def compare_kernels(entries: Sequence[Entry], matrix_dir: Path, say: Progress) -> None:
    """The single call site of the cross-kernel comparison (harness/matrix_compare.py) of the catalogue runs:
    its table on stdout and in ``matrix_dir/comparison.html``."""
    runs = [(e.release, load_run(Path(e.results) / "latest")) for e in entries
            if e.release and e.results and (Path(e.results) / "latest").exists()]
    if len(runs) < 2:
        say(f"comparison: {len(runs)} catalogue run(s) to compare, nothing to compare")
        return
    comparison = matrix_compare.compare_matrix(runs)
    print(matrix_compare.render_text(comparison), end="")
    (matrix_dir / "comparison.html").write_text(matrix_compare.render_html(comparison, matrix_dir))
    say(f"comparison: {matrix_dir / 'comparison.html'}")


def run_matrix(specs: Sequence[str], *, results: Path, parallel: int, timeout: float, accel: str | None = None,
               smoke: bool = False, extra: Sequence[str] = (),
               progress: Progress = lambda line: None) -> tuple[Path, list[Entry]]:
    """Run the matrix over ``specs`` (``parallel`` guests at a time); returns the matrix directory (with
    matrix.json) and the entries. A kernel that fails is recorded with its error; the others run."""
    if parallel < 1:
        raise NetfaultError(f"--parallel must be 1 or more, not {parallel}")
    run = RunInfo.current()
    matrix_dir = results.resolve() / f"matrix-{run.run_id}"
    matrix_dir.mkdir(parents=True)
    started = time.monotonic()
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            progress(f"[{time.monotonic() - started:6.1f}s] {line}")

    say(f"matrix {run.run_id}: {len(specs)} kernel(s), {parallel} at a time, "
        f"{'smoke test' if smoke else 'fault catalogue'}, results in {matrix_dir}")
    cancel = threading.Event()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [pool.submit(_run_one, spec, matrix_dir, smoke=smoke, extra=extra, timeout=timeout, accel=accel,
                               run=run, say=say, cancel=cancel) for spec in specs]
        try:
            entries = [f.result() for f in futures]
        except BaseException:
            cancel.set()  # the guests still running kill their QEMU and stop
            for f in futures:
                f.cancel()
            raise
    write_json(matrix_dir / MATRIX_JSON, {
        "run_id": run.run_id, "command": "smoke" if smoke else "catalogue", "parallel": parallel,
        "wall_s": round(time.monotonic() - started, 1), "kernels": [asdict(e) for e in entries]})
    say(f"matrix: {sum(e.ok for e in entries)}/{len(entries)} kernel(s) passed in {time.monotonic() - started:.0f} s; "
        f"{matrix_dir / MATRIX_JSON}")
    if not smoke:
        compare_kernels(entries, matrix_dir, say)
    return matrix_dir, entries
