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
from .compare import compare, render_html, render_text
from .docker_client import connect_docker
from .errors import NetfaultError, ResultsError
from .images import BASE_MODES, REPO_ROOT, ensure_peer_image
from .reaper import reap
from .report import write_report
from .report_html import write_html_report
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


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@command("build", "build the peer image (a no-op when it is up to date)",
         arg("--base", choices=BASE_MODES, default="auto",
             help="where the Debian base comes from: auto (default) uses debian:bookworm-slim if the engine "
                  "has it or a registry answers, else debootstrap; registry or debootstrap force one"),
         arg("--force", action="store_true",
             help="rebuild even if up to date (the debootstrap base too, when it is the one used)"))
def build(args: argparse.Namespace) -> int:
    """Build netfault/peer:<content hash> and tag it netfault/peer:latest.

    The tag hashes the Dockerfile, images/peer/packages.txt, the agent's files and the base image, so an
    up-to-date image is found in a second. Without a registry the Debian base is made with debootstrap
    from the mirror the host's apt uses ($NETFAULT_DEBIAN_MIRROR overrides it). Progress goes to stderr,
    the tag to stdout; step logs to $XDG_CACHE_HOME/netfault/build/ (default ~/.cache/netfault/build/)."""
    tag = ensure_peer_image(connect_docker(), base=args.base, force=args.force, progress=_progress)
    print(tag)
    return 0


@command("reap", "remove containers and networks left by netfault runs whose process is gone",
         arg("--all", action="store_true", dest="everything",
             help="remove every netfault-labelled container and network, live runs included"),
         arg("--run", default=None, help="remove only the resources of this run id"))
def reap_command(args: argparse.Namespace) -> int:
    """Remove leftovers: every resource netfault creates carries netfault.run=<run id> and the pid of the
    process that made it; those whose process no longer runs on this machine are removed. Sessions do
    this at start too, so a SIGKILLed pytest leaves nothing behind for long."""
    report = reap(connect_docker(), everything=args.everything, run_id=args.run, progress=_progress)
    _progress(report.summary())
    return 0


@command("catalogue", "run the fault catalogue and write results/<run-id>/ with its report",
         arg("--results", type=Path, default=RESULTS_DIR, help=f"results directory (default: {RESULTS_DIR})"),
         arg("--workers", type=int, default=None,
             help="parallel pytest-xdist workers, each with its own network and hosts (default: the CPU count, "
                  "at most 4; 0 runs in this process)"),
         arg("pytest_args", nargs=argparse.REMAINDER, help="more pytest arguments, e.g. -k s01"))
def catalogue(args: argparse.Namespace) -> int:
    """Run `pytest -m faults` over the scenario files tests/faults/test_sNN_*.py with this run's id, in
    parallel, write <results>/<run-id>/ (manifest.json, an evidence bundle per test under tests/, junit.xml,
    report.md and report.html; see results/README.md), and point <results>/latest at it. The exit status is
    pytest's."""
    workers = min(os.cpu_count() or 1, 4) if args.workers is None else args.workers
    if workers < 0:
        raise NetfaultError(f"--workers must be 0 (no xdist) or more, not {workers}")
    run_id = new_run_id()
    results = args.results.resolve()
    run_dir = results / run_id
    run_dir.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pytest", "-m", "faults", *map(str, scenario_files()), "-p", "no:cacheprovider",
           f"--junitxml={run_dir / 'junit.xml'}", f"--netfault-results={results}",
           *(["-n", str(workers)] if workers else []), *args.pytest_args]
    _progress(f"run {run_id}: {' '.join(cmd)}")
    returncode = subprocess.call(cmd, cwd=REPO_ROOT, env={**os.environ, RUN_ID_ENV: run_id})
    if not (run_dir / "junit.xml").exists():
        raise NetfaultError(f"pytest (exit status {returncode}) wrote no {run_dir / 'junit.xml'}: see its output above")
    report = write_report(run_dir, run_id, returncode)
    html = write_html_report(run_dir)
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
         arg("--html", type=Path, metavar="FILE", default=None, help="also write the comparison as HTML to FILE"),
         arg("--strict", action="store_true",
             help="exit 1 on any change, timing, retransmission and state changes included"))
def compare_command(args: argparse.Namespace) -> int:
    """Compare two runs test by test (matched by nodeid): outcome, the errnos of the failed syscalls, the
    elapsed time of the key syscall, the retransmission schedule from the captures and the socket states
    reached, under a header with both runs' kernels, harness versions and commits. Times within 10 % or
    50 ms are not changes (harness/compare.py says what is compared).

    Exit status: 0 no change; 1 an outcome or errno changed, or a test is in one run only (with --strict:
    any change); 2 bad input (a missing or half-written run, a manifest of another format)."""
    try:
        comparison = compare(load_run(args.run_a), load_run(args.run_b))
    except ResultsError as exc:
        print(f"netfault compare: error: {exc}", file=sys.stderr)
        return 2
    print(render_text(comparison), end="")
    if args.html:
        args.html.write_text(render_html(comparison))
        _progress(f"wrote {args.html}")
    return comparison.exit_status(args.strict)


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
