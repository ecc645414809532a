"""Writing a run's results from pytest: a bundle per test where it ran, the manifest in one process.

Under xdist each worker writes the bundles of the tests it ran (their names come from the nodeids, so they
never collide) and sends its hosts' facts to the controller in `workeroutput`; the controller alone writes
manifest.json at the end of the session (without xdist the session is both). See harness/results.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .errors import ResultsError
from .evidence import Evidence
from .manifest import host_facts, run_manifest, runtime_facts, timestamp
from .report_html import write_html_report
from .results import MANIFEST, CompletedTest, point_latest, write_bundle, write_json

if TYPE_CHECKING:
    from .backends.base import Host

EVIDENCE_PROPERTY = "netfault.evidence"
_HOSTS_OUTPUT = "netfault_hosts"
LONGREPR_MAX = 4000


def outcome_of(reports: Mapping[str, pytest.TestReport]) -> tuple[str, dict[str, str] | None]:
    """A test's outcome as pytest counts it (passed, failed, skipped, error, xfailed, xpassed) from its setup,
    call and teardown reports, and the summary of the report that decided it (failure or skip), if any."""
    setup, call, teardown = (reports.get(phase) for phase in ("setup", "call", "teardown"))
    if setup is not None and setup.failed:
        return "error", _summary(setup)
    if setup is not None and setup.skipped:
        return "skipped", _summary(setup)
    if call is None:
        return "error", None
    xfail = hasattr(call, "wasxfail")
    if call.failed:
        return "failed", _summary(call)
    if call.skipped:
        return ("xfailed" if xfail else "skipped"), _summary(call)
    if teardown is not None and teardown.failed:
        return "error", _summary(teardown)
    return ("xpassed" if xfail else "passed"), None


def _summary(report: pytest.TestReport) -> dict[str, str]:
    """The phase and a short text of a failed or skipped report: the crash message, or the skip reason."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):
        text = str(longrepr[2])
    elif hasattr(longrepr, "reprcrash") and longrepr.reprcrash is not None:
        text = longrepr.reprcrash.message
    else:
        text = report.longreprtext or getattr(report, "wasxfail", "")
    return {"phase": report.when, "summary": text[:LONGREPR_MAX]}


def _jsonable_property(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


class ResultsRecorder:
    """The results of this pytest process: its tests' bundles and, in the controller, the manifest."""

    def __init__(self, config: pytest.Config, results: Path, run_id: str, worker: str,
                 only_with_evidence: bool = False) -> None:
        """`only_with_evidence`: write nothing unless a test used the hosts (the project's default results
        directory, so that a unit-test run leaves no empty run behind)."""
        self.config = config
        self.only_with_evidence = only_with_evidence
        self.results = results
        self.run_id = run_id
        self.worker = worker
        self.run_dir = results / run_id
        self.controller = not hasattr(config, "workerinput")
        self.start = timestamp()
        self.hosts: dict[tuple[str, str], dict[str, Any]] = {}
        self.tests: list[dict[str, str]] = []
        self.workers: list[str] = []
        self.report: str | None = None
        if self.controller and (self.run_dir / MANIFEST).exists():
            raise pytest.UsageError(
                f"netfault: {self.run_dir} already holds a finished run (it has {MANIFEST}): give another "
                f"--netfault-results directory, or unset NETFAULT_RUN_ID so this run gets a new id")
        if not only_with_evidence:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def note_hosts(self, hosts: Mapping[str, Host]) -> None:
        """Read each host's kernel release and baseline sysctls the first time this process uses it."""
        for name, host in hosts.items():
            if (self.worker, name) not in self.hosts:
                self.hosts[(self.worker, name)] = host_facts(self.worker, host)

    def write(self, item: pytest.Item, reports: Mapping[str, pytest.TestReport], evidence: Evidence | None,
              sysctls: dict[str, dict[str, Any]], hosts: Mapping[str, Host]) -> list[tuple[str, Any]]:
        """Write the bundle of a test whose teardown report is in `reports`; returns the JUnit properties: its
        directory and key figures."""
        outcome, longrepr = outcome_of(reports)
        result = CompletedTest(
            nodeid=item.nodeid, run_id=self.run_id, worker=self.worker, outcome=outcome,
            duration=sum(report.duration for report in reports.values()),
            phases={phase: {"outcome": report.outcome, "duration": report.duration}
                    for phase, report in reports.items()},
            longrepr=longrepr, sysctls=sysctls, evidence=evidence,
            agent_logs={name: host.channel.transport.stderr_tail() for name, host in hosts.items()},
            properties={name: _jsonable_property(value) for name, value in item.user_properties},
        )
        bundle, outcome = write_bundle(self.run_dir, result)
        counts = outcome["counts"]
        return [(EVIDENCE_PROPERTY, str(bundle)), ("netfault.syscalls", counts["syscalls"]),
                ("netfault.packets", counts["packets"]), ("netfault.faults", len(outcome["faults"])),
                ("netfault.pcaps_truncated", outcome["pcaps_truncated"])]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """The controller lists every bundle written, whichever process wrote it."""
        if self.controller and report.when == "teardown":
            for name, value in report.user_properties:
                if name == EVIDENCE_PROPERTY:
                    self.tests.append({"nodeid": report.nodeid, "bundle": Path(value).name})

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """Keep a finished xdist worker's host facts."""
        self.workers.append(node.gateway.id)
        for facts in json.loads(node.workeroutput.get(_HOSTS_OUTPUT, "[]")):
            self.hosts[(facts["worker"], facts["host"])] = facts

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if not self.controller:
            self.config.workeroutput[_HOSTS_OUTPUT] = json.dumps(list(self.hosts.values()))
            return
        if self.only_with_evidence and not self.tests:
            return
        write_json(self.run_dir / MANIFEST, self.manifest(int(exitstatus)))
        point_latest(self.results, self.run_id)
        try:
            self.report = f"report: {write_html_report(self.run_dir)}"
        except ResultsError as exc:  # an interrupted run's half-written bundle: said in the summary
            self.report = f"no report: {exc}; `netfault report {self.run_dir}` once the cause is fixed"

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """Where the run's results and report are."""
        if self.report is not None:
            terminalreporter.write_line(f"netfault results: {self.run_dir} ({self.report})")

    def manifest(self, exitstatus: int) -> dict[str, Any]:
        """The run's manifest, once every test has run."""
        return run_manifest(self.run_dir, self.run_id, self.start, runtime_facts(self.config),
                            [self.hosts[key] for key in sorted(self.hosts)], sorted(self.workers) or [self.worker],
                            exitstatus, self.tests)
