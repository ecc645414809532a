"""The kernel matrix compared (`netfault matrix`): one run of the catalogue per kernel, as one table of tests
(rows, grouped by scenario) by kernels (columns), with what differs and the recorded sysctls that may explain it.

- Per test and kernel, the facts and tolerances are harness.compare's: outcome, errnos, the key syscall's
  elapsed time, retransmission and probe schedules, socket states reached.
- Reference: a row's cells are compared with the first kernel given in which the test ran (present, not
  skipped), else the first that has it. So give the baseline kernel first: a fixed reference (not the
  majority, which two kernels do not have) keeps "X vs Y" meaning "this kernel vs the baseline" in every row.
- A test skipped on a kernel (a kernel feature missing) is highlighted with its reason but does not fail;
  a test missing from a run fails, as in `netfault compare`.
- Explanations, for a differing row: the baseline sysctls (manifest.json `hosts`) whose presence or value
  differs between the reference and the kernels on which the test ran differently (a skip or a missing test
  is its own explanation), except those the test pinned (outcome.json `sysctls`) to the same value on each of
  them, which are listed as pinned instead. Nothing is known in advance of which kernel or scenario differs.

Exit status: 0 when all agree; 1 when an outcome or errno differs or a test is missing from a run, and
(strict) when anything differs, times, schedules, states and skips included.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

from .catalogue import load_scenario, scenario_files
from .compare import TOLERANCE_RATIO, TOLERANCE_SECONDS, Change, Facts, diff, facts, run_facts
from .flows import Kind, Times
from .report_data import message_of, scenario_of
from .report_html import REPORT_HTML
from .results_reader import Bundle, Run

NOT_SET = "absent"
_SHORT = {Kind.SYN_RETRANSMISSION: "SYN", Kind.SYNACK_RETRANSMISSION: "SYN/ACK", Kind.RETRANSMISSION: "data",
          Kind.FIN_RETRANSMISSION: "FIN", Kind.KEEPALIVE: "keepalive", Kind.ZERO_WINDOW_PROBE: "zero-window"}
_TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class Cell:
    """One test under one kernel: its bundle and facts (None: not in that run), and how it differs from the
    row's reference (each Change's `a` is the reference's value, `b` this kernel's)."""

    kernel: str
    run: Run
    bundle: Bundle | None
    facts: Facts | None
    changes: tuple[Change, ...] = ()

    @property
    def skipped(self) -> bool:
        return self.facts is not None and self.facts.outcome == "skipped"

    @property
    def failing(self) -> bool:
        """Whether the cell fails the comparison without `strict`: an outcome or errno difference, not a skip."""
        return not self.skipped and any(change.failing for change in self.changes)

    @property
    def lines(self) -> list[str]:
        """Outcome; errno and elapsed time of the key syscall; retransmissions and probes per kind
        (`SYN×3 2,4s`: three SYN retransmissions, 2 s then 4 s apart)."""
        if self.facts is None:
            return ["absent"]
        f = self.facts
        lines = [f.outcome]
        if f.key:
            lines.append(" ".join(filter(None, (f.key.errname, f"{f.key.elapsed:.2f}s"))))
        for name, times in f.repeats.items():  # name: "host kind"
            schedule = f"{_SHORT[Kind(name.partition(' ')[2])]}×{len(times)}"
            intervals = Times(times).intervals
            if intervals:
                schedule += " " + ",".join(f"{round(i, 2):g}" for i in intervals) + "s"
            if schedule not in lines:  # both ends' captures: the same schedule once
                lines.append(schedule)
        return lines


@dataclass(frozen=True)
class Row:
    """A test (nodeid) under every kernel, compared with its reference kernel, and why they may differ."""

    nodeid: str
    scenario: str
    title: str
    reference: str
    cells: tuple[Cell, ...]
    explanations: tuple[str, ...]

    @property
    def name(self) -> str:
        """The test's name and parameters (the nodeid without its file)."""
        return self.nodeid.partition("::")[2] or self.nodeid

    @property
    def differs(self) -> bool:
        return any(cell.changes for cell in self.cells)

    @property
    def failing(self) -> bool:
        return any(cell.failing for cell in self.cells)


@dataclass(frozen=True)
class MatrixComparison:
    """Runs under several kernels compared: the manifests' facts per kernel, and one row per test."""

    kernels: tuple[str, ...]
    runs: tuple[Run, ...]
    header: tuple[tuple[str, tuple[str, ...]], ...]
    rows: tuple[Row, ...]

    @property
    def differing(self) -> list[Row]:
        return [row for row in self.rows if row.differs]

    def exit_status(self, strict: bool = False) -> int:
        """0 when all agree; 1 when an outcome or errno differs or a test is missing, or (strict) anything differs."""
        return int(any(row.failing or (strict and row.differs) for row in self.rows))


def compare_matrix(runs: Sequence[tuple[str, Run]], titles: Mapping[str, str] | None = None) -> MatrixComparison:
    """Compare runs labelled by kernel release, the baseline first; `titles` maps scenario ids to titles
    (default: those of this checkout's scenario files). ResultsError for a damaged bundle."""
    kernels = tuple(label for label, _ in runs)
    if not runs or len(set(kernels)) != len(kernels):
        raise ValueError(f"compare_matrix needs runs with distinct labels, not {list(kernels)}")
    titles = scenario_titles() if titles is None else titles
    nodeids = sorted({nodeid for _, run in runs for nodeid in run.bundles}, key=lambda n: (scenario_of(n), n))
    described = [run_facts(run.manifest) for _, run in runs]
    return MatrixComparison(kernels, tuple(run for _, run in runs),
                            tuple((label, tuple(d[label] for d in described)) for label in described[0]),
                            tuple(_row(nodeid, runs, titles) for nodeid in nodeids))


def label_runs(runs: Sequence[Run]) -> list[tuple[str, Run]]:
    """Each run labelled by its hosts' kernel release(s) (else the engine's kernel), with its run id added where
    that label is not unique, and then its position where that is not either (the same run given twice)."""
    labels = [", ".join(sorted({h["kernel_release"] for h in run.manifest["hosts"]}))
              or run.manifest["engine"]["kernel_version"] or run.manifest["run_id"] for run in runs]
    labels = [label if labels.count(label) == 1 else f"{label} ({run.manifest['run_id']})"
              for label, run in zip(labels, runs)]
    return [(label if labels.count(label) == 1 else f"{label} #{i}", run)
            for i, (label, run) in enumerate(zip(labels, runs), 1)]


def scenario_titles() -> dict[str, str]:
    """Scenario id -> title, from this checkout's scenario files ({} where there are none)."""
    return {s.fields["id"]: s.fields["title"] for s in map(load_scenario, scenario_files())}


def summary(comparison: MatrixComparison) -> str:
    """'N tests, M differ across K kernels' with how many in outcome or errno, and the tolerance."""
    n, m = len(comparison.rows), len(comparison.differing)
    failing = sum(row.failing for row in comparison.rows)
    return (f"{n} tests, {m} differ across {len(comparison.kernels)} kernels"
            + (f", {failing} in outcome or errno" if m else ": all agree")
            + f" (times within {TOLERANCE_RATIO:.0%} or {TOLERANCE_SECONDS * 1000:.0f} ms are not differences)")


def statement(change: Change) -> str:
    """A difference as text: this kernel's value vs the reference's."""
    return f"{change.aspect}: {change.b} vs {change.a}"


def render_text(comparison: MatrixComparison) -> str:
    """The comparison for a terminal: the runs, the table (one line per test, '*' on a cell that differs from
    its row's reference), the summary, then each differing test's differences and explanations."""
    lines = _aligned([["", "", *comparison.kernels],
                      *([label, "*" if len(set(values)) > 1 else "", *values] for label, values in comparison.header)])
    table = _aligned([["", "test", *comparison.kernels],
                      *([_mark(row), row.name, *(("*" if c.changes else " ") + " ".join(c.lines) for c in row.cells)]
                        for row in comparison.rows)])
    lines += ["", table[0]]
    body = iter(table[1:])
    for group, rows in _groups(comparison.rows):
        lines += [group, *(next(body) for _ in rows)]
    lines += ["", summary(comparison), ""]
    for row in comparison.differing:
        lines.append(f"{_mark(row)} {row.nodeid} (reference {row.reference})")
        lines += [f"    {cell.kernel}: {statement(change)}" for cell in row.cells for change in cell.changes]
        lines += [f"    {line}" for line in row.explanations]
    return "\n".join(lines).rstrip() + "\n"


def render_html(comparison: MatrixComparison, page_dir: Path | str = ".") -> str:
    """The comparison as one static HTML page (inline CSS, nothing fetched) to be written in `page_dir`: cells
    link to their test's bundle and run's report.html by paths relative to it."""
    def href(path: Path) -> str:
        return quote(os.path.relpath(path, page_dir))

    def links(cell: Cell) -> list[tuple[str, str]]:
        report = cell.run.path / REPORT_HTML
        return ([("bundle", href(cell.bundle.path))] if cell.bundle else []) + (
            [("report", href(report))] if report.is_file() else [])

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template("matrix.html.j2").render(
        comparison=comparison, summary=summary(comparison), groups=_groups(comparison.rows), links=links,
        statement=statement, mark=_mark,
        anchors={row.nodeid: f"diff-{i}" for i, row in enumerate(comparison.differing, 1)},
        columns=[(kernel, href(run.path)) for kernel, run in zip(comparison.kernels, comparison.runs)])


def explain(cells: Sequence[Cell]) -> tuple[str, ...]:
    """Why the kernels of `cells` (the reference's first) may differ: the baseline sysctls that differ between
    their runs, but for those the test pinned to the same value on each, then the sysctls the test pinned."""
    baselines = {cell.kernel: _baseline(cell.run.manifest) for cell in cells}
    pins = {cell.kernel: _pinned(cell.bundle) for cell in cells}
    pinned_alike = {key for key in pins[cells[0].kernel] if len(_by_value(pins, key, "")) == 1}
    differing = {key for values in baselines.values() for key in values if len(_by_value(baselines, key, NOT_SET)) > 1}
    lines = [f"sysctl {key}: {_text(baselines, key, NOT_SET)}" for key in sorted(differing - pinned_alike)]
    lines = lines or ["no recorded baseline sysctl differs between these kernels"]
    return tuple(lines + [f"pinned by the test: {key}: {_text(pins, key, 'not pinned')}"
                          + (f" (baseline: {_text(baselines, key, NOT_SET)})" if key in differing else "")
                          for key in sorted({key for values in pins.values() for key in values})])


def _row(nodeid: str, runs: Sequence[tuple[str, Run]], titles: Mapping[str, str]) -> Row:
    cells = [Cell(label, run, run.bundles.get(nodeid), facts(run.bundles[nodeid]) if nodeid in run.bundles else None)
             for label, run in runs]
    ran = [cell for cell in cells if cell.facts is not None and not cell.skipped]
    reference = (ran or [cell for cell in cells if cell.facts is not None])[0]
    cells = [cell if cell is reference else replace(cell, changes=_changes(reference, cell)) for cell in cells]
    involved = [reference, *(cell for cell in cells if cell.changes and cell.bundle and not cell.skipped)]
    scenario = scenario_of(nodeid)
    return Row(nodeid, scenario, titles.get(scenario, ""), reference.kernel, tuple(cells),
               explain(involved) if len(involved) > 1 else ())


def _changes(reference: Cell, cell: Cell) -> tuple[Change, ...]:
    """`cell`'s differences from `reference`; a skip (with its reason) is one, whatever else differs."""
    if cell.bundle and reference.facts and cell.skipped and not reference.skipped:
        reason = message_of(cell.bundle.outcome) or "no reason recorded"
        return (Change("outcome", reference.facts.outcome, f"skipped ({reason})"),)
    return diff(reference.facts, cell.facts)


def _baseline(manifest: dict[str, Any]) -> dict[str, str]:
    """Per sysctl, its value if every host has the same, else each host's ('client 6, server absent')."""
    per_host: dict[str, dict[str, str]] = {}
    for host in manifest["hosts"]:
        per_host.setdefault(host["host"], {}).update({key: str(value) for key, value in host["sysctls"].items()})
    merged = {}
    for key in {key for values in per_host.values() for key in values}:
        values = {host: values.get(key, NOT_SET) for host, values in sorted(per_host.items())}
        distinct = set(values.values())
        merged[key] = distinct.pop() if len(distinct) == 1 else ", ".join(f"{h} {v}" for h, v in values.items())
    return merged


def _pinned(bundle: Bundle | None) -> dict[str, str]:
    """Per sysctl the test pinned, each host's value ('client 2')."""
    pinned: dict[str, list[str]] = {}
    for host, values in sorted((bundle.outcome["sysctls"] if bundle else {}).items()):
        for key, value in values.items():
            pinned.setdefault(key, []).append(f"{host} {value}")
    return {key: ", ".join(texts) for key, texts in pinned.items()}


def _by_value(per_kernel: Mapping[str, Mapping[str, str]], key: str, missing: str) -> dict[str, list[str]]:
    """The kernels grouped by their value of `key` (`missing` where they have none), in the kernels' order."""
    groups: dict[str, list[str]] = {}
    for kernel, values in per_kernel.items():
        groups.setdefault(values.get(key, missing), []).append(kernel)
    return groups


def _text(per_kernel: Mapping[str, Mapping[str, str]], key: str, missing: str) -> str:
    groups = _by_value(per_kernel, key, missing)
    if len(groups) == 1:
        return f"{next(iter(groups))} on each"
    return ", ".join(f"{value} on {' and '.join(kernels)}" for value, kernels in groups.items())


def _mark(row: Row) -> str:
    return "FAIL" if row.failing else "note" if row.differs else ""


def _groups(rows: Sequence[Row]) -> list[tuple[str, list[Row]]]:
    """The rows by scenario ('S02 <title>', 'other tests' for those of none), in order."""
    return [(f"{scenario} {title}".rstrip() if scenario != "-" else "other tests", list(members))
            for (scenario, title), members in itertools.groupby(rows, key=lambda r: (r.scenario, r.title))]


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
