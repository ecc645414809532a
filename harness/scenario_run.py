"""Running a scenario file: its hosts up, captures and samplers on, the workload launched and the faults applied on
their schedule, everything healed and removed (also on failure and Ctrl-C), then its expectations checked.

    run = run_scenario(load_scenario(path), "docker", RunInfo.current(), progress=print)
    run.failures        # "file:line: field: what came, expected what" per expectation that does not hold

The evidence is what a Python test's is (harness.evidence: syscall records, faults, pcaps, socket histories,
programs), so it is written as a results bundle by the same writer (`write_results`, or the pytest plugin).
Times in progress lines and reports are seconds after the scenario's start (t=0), CLOCK_MONOTONIC.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faults import Fault, Schedule

from . import evidence
from .backends import open_backend
from .backends.base import Host, Testbed
from .capture import capture
from .errors import MissingCapability
from .evidence import Evidence
from .flows import tcp_flows
from .images import REPO_ROOT
from .manifest import run_manifest, runtime_facts, timestamp
from .programs import Program, ProgramResult
from .records import SendLoop, SyscallRecord
from .results import MANIFEST, CompletedTest, point_latest, write_bundle, write_json
from .results_plugin import LONGREPR_MAX
from .runinfo import RunInfo
from .scenario_file import SUFFIX, UNUSED, Expectation, HostDecl, ProbeDecl, ProgramDecl, Scenario, expand
from .sockets import StateHistory, sample
from .topology import HostSpec, Topology

Progress = Callable[[str], None]
# The compose file's base sysctl for every host: answer every probe (ICMP rate limiting eats replies).
BASE_SYSCTLS = {"net.ipv4.icmp_ratelimit": "0"}
# Seconds a program killed at the end gets to report its end.
COLLECT = 5.0
# Lines of each program's stdout and stderr shown in a report.
OUTPUT_LINES = 30


@dataclass
class ScenarioRun:
    """What a scenario did: programs' results, probe steps' records, the faults' plan and times, the evidence,
    and the expectations that failed (empty: it passed)."""

    scenario: Scenario
    evidence: Evidence = field(default_factory=Evidence)
    origin: float | None = None
    programs: dict[str, ProgramResult] = field(default_factory=dict)
    killed_at_end: set[str] = field(default_factory=set)
    steps: dict[str, SyscallRecord | SendLoop] = field(default_factory=dict)
    blocked: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    schedule: list[dict[str, Any]] = field(default_factory=list)
    histories: dict[tuple[str, int | None], StateHistory] = field(default_factory=dict)
    sysctls: dict[str, dict[str, str]] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    start: dict[str, Any] = field(default_factory=timestamp)
    duration: float = 0.0
    ended: bool = False

    @property
    def passed(self) -> bool:
        return not self.failures

    def t(self, when: float | None) -> str:
        """A CLOCK_MONOTONIC time as seconds after the start."""
        return "-" if when is None or self.origin is None else f"{round(when - self.origin, 3) + 0.0:+.3f}"

    def report(self) -> str:
        """The failed expectations (if any) and the scenario's timeline: faults planned and done, programs, probes."""
        checked = len(self.scenario.expectations) + len(self.errors)
        head = (f"scenario {self.scenario.name}: " + (f"{len(self.failures)} of {checked} expectations failed"
                                                      if self.failures else f"all {checked} expectations hold"))
        lines = [head, *(f"  {failure}" for failure in self.failures), "timeline (t in s after the start):"]
        for fault in self.schedule:
            planned = f"planned +{fault['at']:g}" + ("" if fault["duration"] is None
                                                     else f"..+{fault['at'] + fault['duration']:g}")
            lines.append(f"  fault   {planned}: applied {self.t(fault['applied_at'])}, healed "
                         f"{self.t(fault['healed_at'])}: {fault['describe']}")
        for name, result in self.programs.items():
            end = ("still running at the end" + (": killed" if name in self.killed_at_end else "")
                   if name in self.killed_at_end or result.running else f"{result.status()} at {self.t(result.t1)}")
            lines.append(f"  program {name} on {result.host}: started {self.t(result.t0)}, {end}")
            for stream in ("stdout", "stderr"):
                tail = getattr(result, stream).decode(errors="replace").splitlines()[-OUTPUT_LINES:]
                lines += [f"    {stream}: {line}" for line in tail]
        for name, record in self.steps.items():
            lines.append(f"  probe   {name}: started {self.t(_first(record).t0)}, {_final(record)}")
        lines += [f"  probe   {name}: still blocked at the end" for name in sorted(self.blocked)]
        return "\n".join(lines)


def _first(record: SyscallRecord | SendLoop) -> SyscallRecord:
    return record[0] if isinstance(record, SendLoop) else record


def _final(record: SyscallRecord | SendLoop) -> SyscallRecord:
    return record[-1] if isinstance(record, SendLoop) else record


class _ProgramTarget:
    """A program of the scenario as the target of a `signal` fault (faults.Signal), once it runs."""

    def __init__(self, name: str, programs: dict[str, Program]) -> None:
        self.name = name
        self.programs = programs

    def signal(self, sig: str) -> SyscallRecord:
        program = self.programs.get(self.name)
        if program is None:
            raise ProcessLookupError(f"program {self.name} is not running: its launch failed")
        t0, real0 = time.monotonic(), time.time()
        program.kill(sig)
        return SyscallRecord("kill", None, 0, 0, None, None, None, t0, time.monotonic(), real0, time.time())


def host_spec(host: HostDecl, image: str | None) -> HostSpec:
    """The topology's view of a declared host (its sysctls set when it is made, so a reboot keeps them)."""
    return HostSpec(host.name, host.host_number, sysctls={**BASE_SYSCTLS, **host.sysctls}, command=host.command,
                    image=image, environment=host.environment)


def _image(host: HostDecl, progress: Progress) -> str | None:
    """The host's image: the one named, the peer image with its extra packages (built if missing), or None."""
    if not host.extra_packages:
        return host.image
    from .docker_client import connect_docker
    from .images import ensure_peer_image

    return ensure_peer_image(connect_docker(), extra_packages=host.extra_packages, progress=progress)


def run_scenario(scenario: Scenario, backend: str, run: RunInfo, *, image: str | None = None, worker: str = "main",
                 progress: Progress = lambda line: None,
                 on_hosts: Callable[[dict[str, Host]], None] = lambda hosts: None) -> ScenarioRun:
    """Run `scenario` on a test bed of its own made by `backend` (`image`: the peer image, default the current
    sources' one), removed when it returns (or raises). `on_hosts` gets the hosts once they are up, before
    anything else happens on them."""
    result = ScenarioRun(scenario, sysctls={h.name: dict(h.sysctls) for h in scenario.hosts if h.sysctls})
    topology = Topology.of([host_spec(host, _image(host, progress)) for host in scenario.hosts],
                           source=str(scenario.path))
    with ExitStack() as stack:
        bed = open_backend(backend, topology, run, image=image, progress=progress)
        stack.callback(bed.destroy)
        started = time.monotonic()
        testbed = bed.create(worker)
        result.hosts = dict(testbed.hosts)
        on_hosts(result.hosts)
        progress(f"hosts up in {time.monotonic() - started:.1f} s: "
                 + ", ".join(f"{host.name} {host.addr}" for host in testbed.hosts.values()))
        for decl in scenario.hosts:
            for file in decl.files:
                testbed[decl.name].put_file(file.dest, file.data(), file.mode)
        with evidence.collecting() as collected:
            result.evidence = collected
            _run(scenario, testbed, result, progress)
    result.failures = result.errors + check(result)
    result.duration = time.monotonic() - started
    return result


def _run(scenario: Scenario, testbed: Testbed, result: ScenarioRun, progress: Progress) -> None:
    """The part of a run with evidence collected: captures, samplers, the schedule and the workload."""
    addrs = {name: host.addr for name, host in testbed.hosts.items()} | {UNUSED: testbed.unused_addr}
    programs: dict[str, Program] = {name: testbed[name].main_program() for name in scenario.main_programs}

    def done(action: str, fault: Fault) -> None:
        at = fault.applied_at if action == "apply" else fault.healed_at
        progress(f"t={result.t(at) if result.origin else '+0.000'} {'applied' if action == 'apply' else 'healed '} "
                 f"{fault.describe()}")

    schedule = Schedule(on_done=done)
    for decl in scenario.timeline:
        schedule.add(decl.make(testbed.__getitem__, lambda name: _ProgramTarget(name, programs)), decl.at,
                     decl.duration)
    try:
        with _recorded(result, "running the scenario"):
            _workload(scenario, testbed, schedule, programs, addrs, result, progress)
        progress(f"t={result.t(time.monotonic())} end: faults healed, evidence collected")
    finally:
        result.schedule = schedule.records()
        result.ended = True


def _workload(scenario: Scenario, testbed: Testbed, schedule: Schedule, programs: dict[str, Program],
              addrs: dict[str, str], result: ScenarioRun, progress: Progress) -> None:
    """Captures and samplers on, the schedule running, the workload launched; all stopped when it returns."""
    with ExitStack() as stack:
        for decl in scenario.captures:
            stack.enter_context(capture(testbed[decl.host], expand(decl.filter, addrs), decl.iface))
        for decl in scenario.samplers:
            result.histories[(decl.host, decl.port)] = stack.enter_context(
                sample(testbed[decl.host], port=decl.port, period_ms=decl.period_ms, fields=decl.fields))
        pool = ThreadPoolExecutor(max_workers=max(1, len(scenario.programs) + len(scenario.probes)),
                                  thread_name_prefix="workload")
        stack.callback(pool.shutdown, wait=False, cancel_futures=True)
        stack.enter_context(schedule)
        result.origin = origin = schedule.started_at
        assert origin is not None
        deadline = origin + scenario.duration
        futures = [pool.submit(_program, decl, testbed[decl.host], addrs, origin, deadline, programs, result,
                               progress) for decl in scenario.programs]
        futures += [pool.submit(_probe, decl, testbed[decl.host], addrs, origin, result, progress)
                    for decl in scenario.probes]
        wait_all(futures, timeout=max(0.0, deadline - time.monotonic()))
        schedule.wait(max(0.0, deadline - time.monotonic()))
        _end_programs(scenario, programs, result, progress)


@contextmanager
def _recorded(result: ScenarioRun, what: str) -> Iterator[None]:
    """An error in the block is a failure of the scenario (with what was being done), not the end of the run."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - reported as the scenario's failure; the run goes on
        if isinstance(exc.__cause__ or exc, MissingCapability):
            raise  # the kernel cannot do it: a skip, not a failure
        if not result.ended:  # after the end, a probe step still blocked fails as its host goes: no news
            result.errors.append(f"{result.scenario.path}: {what}: {type(exc).__name__}: {exc}")


def _sleep_until(when: float) -> None:
    time.sleep(max(0.0, when - time.monotonic()))


def _program(decl: ProgramDecl, host: Host, addrs: dict[str, str], origin: float, deadline: float,
             programs: dict[str, Program], result: ScenarioRun, progress: Progress) -> None:
    _sleep_until(origin + decl.at)
    with _recorded(result, f"workload {decl.name}: launching {' '.join(decl.argv)} on {decl.host}"):
        program = host.launch([expand(arg, addrs) for arg in decl.argv], decl.name,
                              env={k: expand(v, addrs) for k, v in decl.env.items()} or None, cwd=decl.cwd)
        programs[decl.name] = program
        progress(f"t={result.t(time.monotonic())} launched {decl.name} on {decl.host}: {' '.join(program.argv)}")
        ended = program.wait(max(0.0, deadline - time.monotonic()))
        if not ended.running:
            progress(f"t={result.t(ended.t1)} {decl.name} {ended.status()}")


def _probe(decl: ProbeDecl, host: Host, addrs: dict[str, str], origin: float, result: ScenarioRun,
           progress: Progress) -> None:
    """The probe's steps in order on one socket; a step that cannot run (no socket) ends it."""
    _sleep_until(origin + decl.at)
    handle = None
    for step in decl.steps:
        name = f"{decl.name}.{step.name}"
        if step.at is not None:
            _sleep_until(origin + step.at)
        args = dict(step.args)
        if step.op == "connect":
            args["addr"] = addrs[args.pop("to")]
        elif step.op != "listen":
            if handle is None:
                return
            args["handle"] = handle
        if "data" in args:
            args["data"] = args["data"].encode()
        result.blocked.add(name)
        with _recorded(result, f"probe step {name}"):
            record = getattr(host, step.op)(**args)
            result.steps[name] = record
            handle = _final(record).handle if step.op in ("connect", "listen") else handle
            progress(f"t={result.t(_final(record).t1)} probe {name} on {decl.host}: {_final(record)}")
        result.blocked.discard(name)


def _end_programs(scenario: Scenario, programs: dict[str, Program], result: ScenarioRun,
                  progress: Progress) -> None:
    """Kill the workload programs still running at the end; collect every program's result (an ended one's
    output goes to the evidence as it ends, a main program still running gives its output so far)."""
    for name, program in programs.items():
        if name not in scenario.main_programs and program.running():
            result.killed_at_end.add(name)
            progress(f"t={result.t(time.monotonic())} {name} still running at the end: SIGKILL")
            with _recorded(result, f"killing program {name} at the end"):
                program.kill("SIGKILL")
    for name, program in programs.items():
        with _recorded(result, f"collecting the result of program {name}"):
            result.programs[name] = program.wait(COLLECT if name in result.killed_at_end else 0)
            if result.programs[name].running:
                evidence.note_output(result.programs[name])  # a main program's output so far


def scenario_nodeid(path: Path) -> str:
    """The id of a scenario file's run in results: its path from the repository (as pytest names it), "::" and
    its name without the suffix."""
    path = path.resolve()
    shown = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
    return f"{shown}::{path.name.removesuffix(SUFFIX)}"


def write_results(run: ScenarioRun, results: Path, run_id: str, hosts: list[dict[str, Any]]) -> Path:
    """Write `run` as the results run results/<run_id>/ (a manifest and its one bundle, as a pytest session
    writes them, so `netfault report` and `compare` read it) and point results/latest at it; returns the run
    directory. `hosts`: manifest.host_facts of each host."""
    run_dir = results / run_id
    run_dir.mkdir(parents=True)
    nodeid = scenario_nodeid(run.scenario.path)
    outcome = "passed" if run.passed else "failed"
    phases = {"setup": {"outcome": "passed", "duration": 0.0}, "call": {"outcome": outcome, "duration": run.duration},
              "teardown": {"outcome": "passed", "duration": 0.0}}
    longrepr = None if run.passed else {"phase": "call", "summary": run.report()[:LONGREPR_MAX]}
    logs = {name: host.channel.transport.stderr_tail() for name, host in run.hosts.items()}
    bundle, _ = write_bundle(run_dir, CompletedTest(nodeid, run_id, "main", outcome, run.duration, phases, longrepr,
                                                    run.sysctls, run.evidence, logs))
    write_json(run_dir / MANIFEST, run_manifest(run_dir, run_id, run.start, runtime_facts(None), hosts, ["main"],
                                                int(not run.passed), [{"nodeid": nodeid, "bundle": bundle.name}]))
    point_latest(results, run_id)
    return run_dir


# ---------------------------------------------------------------- expectations


def check(run: ScenarioRun) -> list[str]:
    """A line per expectation that does not hold: its place in the file, what came and what was expected."""
    failures = []
    for expectation in run.scenario.expectations:
        problem = _CHECKS[expectation.section](run, expectation)
        if problem:
            failures.append(f"{expectation.where}: {problem}")
    return failures


def _within(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


def _range(bounds: tuple[float, float], unit: str = " s") -> str:
    return f"{bounds[0]:g}{unit}" if bounds[0] == bounds[1] else f"{bounds[0]:g} .. {bounds[1]:g}{unit}"


def _check_program(run: ScenarioRun, e: Expectation) -> str | None:
    result = run.programs.get(e.subject)
    if result is None:
        return f"program {e.subject} never ran (see the errors above)"
    still = e.subject in run.killed_at_end or result.running
    if e.field == "still_running_at":
        ended = None if still else result.t1
        if ended is not None and run.origin is not None and ended <= run.origin + e.value:
            return f"{result.status()} at {run.t(ended)} s, expected still running at +{e.value:g} s"
        return None
    if still:
        return f"still running at the end (+{run.scenario.duration:g} s), expected {e.field} {e.value!r}"
    if e.field == "exit_code" and (result.signal is not None or result.returncode != e.value):
        return f"{result.status()}, expected exit status {e.value}"
    if e.field == "signal" and result.signal != e.value:
        return f"{result.status()}, expected " + (f"killed by {e.value}" if e.value else "no signal")
    if e.field in ("stdout", "stderr"):
        text = getattr(result, e.field).decode(errors="replace")
        if not re.search(e.value, text):
            return f"{e.field} does not match {e.value!r}; it was:\n{text[-2000:]}"
    if e.field == "exits_within" and (result.t0 is None or result.t1 is None):
        return f"{result.status()}, but when it started is unknown (a container's command started with it)"
    if e.field == "exits_within" and not _within(result.t1 - result.t0, e.value):
        return f"{result.status()} after {result.t1 - result.t0:.3f} s, expected after {_range(e.value)}"
    return None


def _check_probe(run: ScenarioRun, e: Expectation) -> str | None:
    if e.subject in run.blocked:
        return f"still blocked at the end (+{run.scenario.duration:g} s), expected {e.field} {e.value!r}"
    record = run.steps.get(e.subject)
    if record is None:
        return "did not run: an earlier step of the probe left no socket"
    last = _final(record)
    if e.field == "errno" and last.errname != e.value:
        return f"{last}: errno {last.errname or 'none (success)'}, expected {e.value or 'success'}"
    elapsed = last.t1 - _first(record).t0
    if e.field == "elapsed" and not _within(elapsed, e.value):
        return f"{last}: elapsed {elapsed:.4f} s, expected {_range(e.value)}"
    if e.field == "ret" and last.ret != e.value:
        return f"{last}: returned {last.ret}, expected {e.value}"
    return None


def _check_sockets(run: ScenarioRun, e: Expectation) -> str | None:
    history = run.histories.get((e.subject, e.port)) or run.histories[(e.subject, None)]
    sockets = history.select(port=e.port) if e.port is not None else history.sockets
    reached = {state for sock in sockets for state in sock.states}
    seen = f"\n{history.table()}"
    if e.field == "reached" and not set(e.value) <= reached:
        return f"{', '.join(sorted(set(e.value) - reached))} not reached" + seen
    if e.field == "not_reached" and set(e.value) & reached:
        return f"{', '.join(sorted(set(e.value) & reached))} reached" + seen
    if e.field == "states" and [sock.states for sock in sockets] != e.value:
        return f"states per socket {[sock.states for sock in sockets]}, expected {e.value}" + seen
    return None


def _check_packets(run: ScenarioRun, e: Expectation) -> str | None:
    wires = [wire for wire in run.evidence.wires if wire.host == e.subject]
    count = sum(len(flow.of(e.kind)) for wire in wires for flow in tcp_flows(wire, port=e.port))
    if not _within(count, e.value):
        flows = "\n".join(flow.render() for wire in wires for flow in tcp_flows(wire, port=e.port))
        return f"{count} {e.kind} segments, expected {_range(e.value, '')}\n{flows}"
    return None


_CHECKS: dict[str, Callable[[ScenarioRun, Expectation], str | None]] = {
    "programs": _check_program, "probes": _check_probe, "sockets": _check_sockets, "packets": _check_packets}
