"""The ``netfault`` command.

A subcommand is a function ``(args) -> exit status`` registered with ``@command(name, help, *arguments)``,
where each argument is ``arg(*flags, **add_argument_kwargs)``.
"""
from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .catalogue import INDEX, scenario_files
from .catalogue import index as catalogue_index
from . import matrix_compare
from .compare import Comparison, compare, render_html, render_text
from .docker_client import connect_docker
from .errors import EngineUnavailable, NetfaultError, ResultsError
from .images import BASE_MODES, REPO_ROOT, build_scratch_image, compile_static, ensure_peer_image
from .reaper import reap, reap_namespaces
from .report import write_report
from .report_html import REPORT_HTML, write_html_report
from .results import point_latest
from .results_reader import load_run
from .runinfo import RUN_ID_ENV, new_run_id

RESULTS_DIR = REPO_ROOT / "results"

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Arg:
    """One ``add_argument`` call."""

    flags: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


def arg(*flags: str, **kwargs: Any) -> Arg:
    """An argument of a subcommand, as ``parser.add_argument(*flags, **kwargs)`` takes it."""
    return Arg(flags, kwargs)


@dataclass(frozen=True)
class Command:
    """A registered subcommand."""

    name: str
    help: str
    args: tuple[Arg, ...]
    handler: Handler


COMMANDS: list[Command] = []


def command(name: str, help: str, *args: Arg) -> Callable[[Handler], Handler]:
    """Register the decorated function as the subcommand ``name``; its docstring is the description."""
    def register(handler: Handler) -> Handler:
        COMMANDS.append(Command(name, help, args, handler))
        return handler
    return register


def _remainder(args: list[str]) -> list[str]:
    """Arguments given after the command's own, without the `--` that may separate them."""
    return args[1:] if args[:1] == ["--"] else args


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@command("build", "build the peer image (a no-op when it is up to date)",
         arg("--base", choices=BASE_MODES, default="auto",
             help="where the Debian base comes from: auto (default) uses debian:bookworm-slim if the engine "
                  "has it or a registry answers, else debootstrap; registry or debootstrap force one"),
         arg("--force", action="store_true",
             help="rebuild even if up to date (the debootstrap base too, when it is the one used)"),
         arg("--extra-packages", nargs="+", default=[], metavar="PKG",
             help="build the peer image plus these Debian packages (from the base's mirror) and print its tag"),
         arg("--scratch", type=Path, default=None, metavar="SOURCE.c",
             help="compile SOURCE.c statically and build a FROM scratch image holding only that binary; print "
                  "its tag (e.g. examples/c/tcpprobe.c)"))
def build(args: argparse.Namespace) -> int:
    """Build netfault/peer:<content hash> and tag it netfault/peer:latest.

    The tag hashes the Dockerfile, images/peer/packages.txt, the agent's files and the base image, so an
    up-to-date image is found in a second. Without a registry the Debian base is made with debootstrap
    from the mirror the host's apt uses ($NETFAULT_DEBIAN_MIRROR overrides it). Progress goes to stderr,
    the tag to stdout; step logs to $XDG_CACHE_HOME/netfault/build/ (default ~/.cache/netfault/build/).
    With --extra-packages, netfault/peer-<hash of the packages>:<content hash> is built on it (apt in a build
    container, from the same mirror) and its tag printed; with --scratch, the FROM scratch image's."""
    client = connect_docker()
    if args.scratch is not None:
        print(build_scratch_image(client, compile_static(args.scratch, client=client, progress=_progress),
                                  progress=_progress))
        return 0
    print(ensure_peer_image(client, base=args.base, force=args.force, progress=_progress,
                            extra_packages=args.extra_packages))
    return 0


@command("reap", "remove containers, networks, namespaces and QEMU guests left by runs whose process is gone",
         arg("--all", action="store_true", dest="everything",
             help="remove every netfault-labelled resource, live runs included"),
         arg("--run", default=None, help="remove only the resources of this run id"),
         arg("--backend", choices=["docker", "netns", "all"], default="all",
             help="which backend's leftovers (default: all; an unreachable Docker engine is then reported and "
                  "passed over)"))
def reap_command(args: argparse.Namespace) -> int:
    """Remove leftovers: every resource netfault creates carries netfault.run=<run id> and the pid of the
    process that made it (container and network labels, a label file per network namespace under
    /run/netfault/netns/, a QEMU guest's -name netfault/<run id>/<pid>/...); those whose process no longer runs
    on this machine are removed (guests: killed by pid). Sessions do this at start too, so a SIGKILLed pytest
    leaves nothing behind for long."""
    if args.backend in ("docker", "all"):
        try:
            client = connect_docker()
        except EngineUnavailable as exc:
            if args.backend == "docker":
                raise
            _progress(f"docker: not reaped: {exc}")
        else:
            report = reap(client, everything=args.everything, run_id=args.run, progress=_progress)
            _progress("docker: " + report.summary())
    if args.backend in ("netns", "all") and os.geteuid() == 0:
        _progress("netns: " + reap_namespaces(everything=args.everything, run_id=args.run,
                                              progress=_progress).summary())
    elif args.backend == "netns":
        raise NetfaultError("reaping network namespaces needs root")
    if args.backend == "all":
        from .guest import reap_guests

        _progress("guests: " + reap_guests(everything=args.everything, run_id=args.run,
                                           progress=_progress).summary())
    return 0


@command("catalogue", "run the fault catalogue and write results/<run-id>/ with its report",
         arg("--results", type=Path, default=RESULTS_DIR, help=f"results directory (default: {RESULTS_DIR})"),
         arg("--backend", choices=["docker", "netns"], default=None,
             help="where hosts run: docker containers or network namespaces of this machine (root, no engine); "
                  "default: the pytest setting (ini, $NETFAULT_BACKEND), else docker"),
         arg("--workers", type=int, default=None,
             help="parallel pytest-xdist workers, each with its own network and hosts (default: the CPU count, "
                  "at most 4, and none on one CPU; 0 runs in this process)"),
         arg("pytest_args", nargs=argparse.REMAINDER, help="more pytest arguments, e.g. -k s01"))
def catalogue(args: argparse.Namespace) -> int:
    """Run `pytest -m faults` over the scenario files tests/faults/test_sNN_*.py with this run's id, in
    parallel, write <results>/<run-id>/ (manifest.json, an evidence bundle per test under tests/, junit.xml,
    report.md and report.html; see results/README.md), and point <results>/latest at it. The exit status is
    pytest's."""
    cpus = os.cpu_count() or 1
    workers = (min(cpus, 4) if cpus > 1 else 0) if args.workers is None else args.workers
    if workers < 0:
        raise NetfaultError(f"--workers must be 0 (no xdist) or more, not {workers}")
    run_id = new_run_id()
    results = args.results.resolve()
    run_dir = results / run_id
    run_dir.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pytest", "-m", "faults", *map(str, scenario_files()), "-p", "no:cacheprovider",
           f"--junitxml={run_dir / 'junit.xml'}", f"--netfault-results={results}",
           *(["-n", str(workers)] if workers else []),
           *([f"--netfault-backend={args.backend}"] if args.backend else []), *_remainder(args.pytest_args)]
    _progress(f"run {run_id}: {' '.join(cmd)}")
    returncode = subprocess.call(cmd, cwd=REPO_ROOT, env={**os.environ, RUN_ID_ENV: run_id})
    if not (run_dir / "junit.xml").exists():
        raise NetfaultError(f"pytest (exit status {returncode}) wrote no {run_dir / 'junit.xml'}: see its output above")
    report = write_report(run_dir, run_id, returncode)
    written = run_dir / REPORT_HTML  # by the results plugin as pytest ended
    html = written if written.exists() else write_html_report(run_dir)
    point_latest(results, run_id)
    _progress(f"report: {report}, {html}")
    return returncode


@command("report", "write RUN/report.html: a summary table and each test's timeline picture",
         arg("run", type=Path, nargs="?", default=RESULTS_DIR / "latest",
             help=f"the run directory (default: {RESULTS_DIR / 'latest'})"))
def report_command(args: argparse.Namespace) -> int:
    """Write the run's HTML report, one static file that opens offline: a summary (scenario, test, outcome,
    errno of the key syscall, its elapsed time, retransmissions, duration) and per test a timeline with one
    lane per host: packets (retransmissions in red), syscalls with their errno, fault windows shaded, socket
    state changes; failures show their message. Prints the file's path."""
    print(write_html_report(args.run))
    return 0


@command("run", "run a scenario file (hosts, workload, fault timeline, expectations); write its results and report",
         arg("file", type=Path, help="the scenario file, e.g. examples/http_power_loss.netfault.yaml "
                                     "(format: docs/scenario-files.md)"),
         arg("--backend", choices=["docker", "netns"], default=None,
             help="where hosts run (default: the file's `backend`, else $NETFAULT_BACKEND, else docker)"),
         arg("--results", type=Path, default=RESULTS_DIR, help=f"results directory (default: {RESULTS_DIR})"))
def run_command(args: argparse.Namespace) -> int:
    """Check the file (every problem listed as file:line: field: message, before anything starts), make its
    hosts, run its workload and fault timeline with a progress line per event (hosts up, each fault applied and
    healed, programs launched and ended, probe results), heal and remove everything, check its expectations and
    write <results>/<run-id>/ (manifest.json and one evidence bundle, as a pytest run writes them, for `netfault
    report` and `compare`) with report.html, pointing <results>/latest at it.

    Exit status: 0 every expectation holds; 1 one does not (they are listed, with the scenario's timeline);
    2 the file is not a valid scenario file."""
    from .manifest import host_facts
    from .runinfo import RunInfo
    from .scenario_file import ScenarioError, load_scenario
    from .scenario_run import run_scenario, write_results

    try:
        scenario = load_scenario(args.file)
    except ScenarioError as exc:
        print(f"netfault run: {args.file} is not a valid scenario file:\n{exc}", file=sys.stderr)
        return 2
    backend = args.backend or scenario.backend or os.environ.get("NETFAULT_BACKEND") or "docker"
    if scenario.backend not in (None, backend):
        print(f"netfault run: {args.file} needs the {scenario.backend} backend (its `backend:`), not {backend}",
              file=sys.stderr)
        return 2
    run_id = new_run_id()
    hosts: list[dict[str, Any]] = []
    _progress(f"run {run_id}: scenario {scenario.name} ({args.file}) on {backend}")
    run = run_scenario(scenario, backend, RunInfo.current(run_id), progress=_progress,
                       on_hosts=lambda up: hosts.extend(host_facts("main", host) for host in up.values()))
    run_dir = write_results(run, args.results.resolve(), run_id, hosts)
    print(run.report())
    _progress(f"results: {run_dir}, report: {write_html_report(run_dir)}")
    return 0 if run.passed else 1


@command("scenarios", "write docs/scenarios.md, the catalogue's index, from the scenario tests",
         arg("--check", action="store_true", help="only check that docs/scenarios.md is up to date (exit 1 if not)"))
def scenarios(args: argparse.Namespace) -> int:
    """Generate the human index of the catalogue from each tests/faults/test_sNN_*.py: its SCENARIO dict
    (id, title, fault, linux, expect, lesson) and its tests' docstrings."""
    text = catalogue_index()
    if args.check:
        current = INDEX.read_text() if INDEX.exists() else ""
        if current != text:
            _progress(f"{INDEX} is out of date: run `netfault scenarios`")
            return 1
        _progress(f"{INDEX} is up to date")
        return 0
    INDEX.write_text(text)
    _progress(f"wrote {INDEX} ({len(scenario_files())} scenarios)")
    return 0


@command("compare", "say what changed between two runs: outcome, errno, timing, retransmissions, states",
         arg("run_a", type=Path, metavar="RUN_A", help="the reference run: results/<run-id>/ or results/latest"),
         arg("run_b", type=Path, metavar="RUN_B", help="the run compared with it"),
         arg("more", type=Path, nargs="*", metavar="RUN",
             help="more runs: all are compared as a kernel matrix, one column per run (harness/matrix_compare.py)"),
         arg("--html", type=Path, metavar="FILE", default=None, help="also write the comparison as HTML to FILE"),
         arg("--strict", action="store_true",
             help="exit 1 on any change, timing, retransmission and state changes included"))
def compare_command(args: argparse.Namespace) -> int:
    """Compare two runs test by test (matched by nodeid): outcome, the errnos of the failed syscalls, the
    elapsed time of the key syscall, the retransmission schedule from the captures and the socket states
    reached, under a header with both runs' kernels, harness versions and commits. Times within 10 % or
    50 ms are not changes (harness/compare.py says what is compared). With three or more runs (one per kernel),
    one table of tests by runs labelled by kernel release, each test compared with the first run that ran it,
    and the recorded sysctls that differ (harness/matrix_compare.py).

    Exit status: 0 no change; 1 an outcome or errno changed, or a test is in one run only (with --strict:
    any change); 2 bad input (a missing or half-written run, a manifest of another format)."""
    try:
        runs = [load_run(path) for path in (args.run_a, args.run_b, *args.more)]
        comparison = (compare(*runs) if len(runs) == 2
                      else matrix_compare.compare_matrix(matrix_compare.label_runs(runs)))
    except ResultsError as exc:
        print(f"netfault compare: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(comparison, Comparison):
        print(render_text(comparison), end="")
        page = render_html(comparison) if args.html else None
    else:
        print(matrix_compare.render_text(comparison), end="")
        page = matrix_compare.render_html(comparison, args.html.parent) if args.html else None
    if page is not None:
        args.html.write_text(page)
        _progress(f"wrote {args.html}")
    return comparison.exit_status(args.strict)


@command("matrix", "run the fault catalogue (or --smoke) in QEMU guests booting other Debian kernels",
         arg("--kernel", action="append", dest="kernels", metavar="SPEC", default=None,
             help="a kernel: a series (6.1; 7 is the newest 7.x), a Debian release (6.1.0-41-amd64) or a vmlinuz "
                  "path; repeat for more (default: 5.10, 6.1, 6.12, 7)"),
         arg("--parallel", type=int, default=os.cpu_count() or 1,
             help=f"guests at a time, one vCPU each (default: the CPU count, {os.cpu_count()})"),
         arg("--timeout", type=float, default=None,
             help="seconds a guest may run before it is killed (default: 3600, 300 with --smoke)"),
         arg("--accel", choices=["kvm", "tcg"], default=None,
             help="QEMU accelerator (default: $NETFAULT_QEMU_ACCEL, else kvm if a test boot works, else tcg)"),
         arg("--results", type=Path, default=RESULTS_DIR, help=f"results directory (default: {RESULTS_DIR})"),
         arg("--smoke", action="store_true",
             help="instead of the catalogue, prove in each guest that namespaces, veth and netem work"),
         arg("extra", nargs=argparse.REMAINDER, help="after --: more arguments for the catalogue in each guest"))
def matrix_command(args: argparse.Namespace) -> int:
    """Boot each kernel in a QEMU guest (no network device; the host's root filesystem read-only over 9p)
    and run the fault catalogue there on the netns backend, writing <results>/matrix-<run-id>/: a directory
    per kernel release with its catalogue run, a serial log per kernel, and matrix.json (per kernel: release,
    spec, results directory, boot-to-command seconds, wall seconds, QEMU peak RSS, accelerator, exit status).
    Kernels are fetched from the Debian mirror the host's apt uses into $XDG_CACHE_HOME/netfault/kernels/
    (harness/kernels.py). The exit status is 1 unless every guest's command exited 0."""
    from .kernels import DEFAULT_KERNELS
    from .matrix import run_matrix

    extra = _remainder(args.extra)
    if extra and args.smoke:
        raise NetfaultError(f"--smoke runs a fixed command: extra arguments {extra} have no use with it")
    _, entries = run_matrix(args.kernels or DEFAULT_KERNELS, results=args.results, parallel=args.parallel,
                            timeout=args.timeout or (300 if args.smoke else 3600), accel=args.accel,
                            smoke=args.smoke, extra=extra, progress=_progress)
    return 0 if all(entry.ok for entry in entries) else 1


def make_parser() -> argparse.ArgumentParser:
    """The parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="netfault",
        description="netfault: network fault injection between Docker containers, for pytest.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=inspect.getdoc(cmd.handler),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        for a in cmd.args:
            p.add_argument(*a.flags, **a.kwargs)
        p.set_defaults(handler=cmd.handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``netfault`` console script."""
    args = make_parser().parse_args(argv)
    try:
        return args.handler(args)
    except NetfaultError as exc:  # expected: the message says what to do, a traceback would not help
        print(f"netfault {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"netfault {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
