"""The catalogue report: a Markdown summary of a run, from pytest's JUnit XML."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

_SCENARIO = re.compile(r"test_(s\d\d)_", re.IGNORECASE)


@dataclass(frozen=True)
class TestOutcome:
    """One test case of a run."""

    nodeid: str
    scenario: str
    outcome: str
    seconds: float
    message: str


def read_junit(path: Path) -> list[TestOutcome]:
    """The test cases of a JUnit XML file written by pytest --junitxml."""
    outcomes = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name", "")
        match = _SCENARIO.search(name)
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (node.get("message") or "").splitlines()[0] if node.get("message") else ""
                break
        outcomes.append(TestOutcome(
            nodeid=f"{case.get('classname', '')}::{name}",
            scenario=match.group(1).upper() if match else "-",
            outcome=outcome,
            seconds=float(case.get("time", 0) or 0),
            message=message,
        ))
    return outcomes


def write_report(run_dir: Path, run_id: str, returncode: int) -> Path:
    """Write run_dir/report.md from run_dir/junit.xml and return its path."""
    outcomes = read_junit(run_dir / "junit.xml")
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.outcome] = counts.get(o.outcome, 0) + 1
    lines = [
        f"# netfault catalogue run {run_id}",
        "",
        f"pytest exit status {returncode}; " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())),
        "",
        "| scenario | test | outcome | seconds | message |",
        "|---|---|---|---:|---|",
    ]
    for o in sorted(outcomes, key=lambda o: (o.scenario, o.nodeid)):
        message = o.message.replace("|", "\\|")[:160]
        lines.append(f"| {o.scenario} | `{o.nodeid}` | {o.outcome} | {o.seconds:.2f} | {message} |")
    report = run_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
