"""What changed between two runs (`netfault compare`): per test, matched by nodeid, its outcome, the errnos of
its syscalls, the elapsed time of its key syscall, its retransmission schedule and the socket states reached.

- errno: the failed syscalls (host, op, errname) in time order, consecutive repeats counted once (a poll loop's
  number of EAGAINs varies from run to run).
- key syscall (harness.timeline.key_syscall, shared with the HTML report): the first one that failed with an
  errno other than a "not yet" (EAGAIN, EINPROGRESS), else the one that took longest; its elapsed time is
  compared.
- retransmissions: per capture host and kind (SYN, SYN/ACK, data and FIN retransmissions, keepalive and
  zero-window probes, classified by harness.flows), the count and the intervals between them.
- states: per host, the TCP states its sockets were sampled in; a state seen in one sample only (held for less
  than a sampling interval, so caught or missed by chance) is within tolerance and not compared.

A time is changed only when it differs by more than TOLERANCE_RATIO of the first run's value and more than
TOLERANCE_SECONDS. Outcome and errno changes (a test present in one run only is an outcome change) fail;
timing, retransmission and state changes are reported and fail only when asked to (`strict`).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jsonschema

from .errors import ResultsError
from .flows import Kind, tcp_flows
from .results import TIMELINE
from .results_reader import Bundle, Run
from .results_schema import TIMELINE_SCHEMA
from .timeline import Event, key_syscall
from .wire import Packet

TOLERANCE_RATIO = 0.10
TOLERANCE_SECONDS = 0.050
REPEATS = (Kind.SYN_RETRANSMISSION, Kind.SYNACK_RETRANSMISSION, Kind.RETRANSMISSION, Kind.FIN_RETRANSMISSION,
           Kind.KEEPALIVE, Kind.ZERO_WINDOW_PROBE)
FAILING = frozenset({"outcome", "errno"})
ABSENT = "(not in this run)"


@dataclass(frozen=True)
class KeySyscall:
    """The syscall a test is about: `label` is 'host op' or 'host op ERRNAME'; `errname` its errno, if any."""

    label: str
    elapsed: float
    errname: str | None = None


@dataclass(frozen=True)
class Facts:
    """What is compared of one test's bundle."""

    outcome: str
    errnos: tuple[str, ...]
    key: KeySyscall | None
    repeats: dict[str, tuple[float, ...]]
    states: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class Change:
    """One aspect of a test that differs: its value in run A and in run B, as text."""

    aspect: str
    a: str
    b: str

    @property
    def failing(self) -> bool:
        """Whether the change fails the comparison without --strict (outcome or errno)."""
        return self.aspect in FAILING


@dataclass(frozen=True)
class TestDiff:
    """A test present in either run, and what changed."""

    nodeid: str
    changes: tuple[Change, ...]


@dataclass(frozen=True)
class Comparison:
    """Two runs compared: the manifests' facts side by side (label, A, B) and every test's changes."""

    a: Run
    b: Run
    header: tuple[tuple[str, str, str], ...]
    tests: tuple[TestDiff, ...]

    @property
    def changed(self) -> list[TestDiff]:
        return [test for test in self.tests if test.changes]

    def exit_status(self, strict: bool = False) -> int:
        """0 without changes; 1 when an outcome or errno changed, or (strict) anything changed."""
        changes = [change for test in self.tests for change in test.changes]
        return int(any(change.failing or strict for change in changes))


def compare(a: Run, b: Run) -> Comparison:
    """Compare run `a` with run `b`; ResultsError when a bundle's timeline is missing or damaged."""
    nodeids = sorted(set(a.bundles) | set(b.bundles))
    tests = tuple(TestDiff(nodeid, diff(*(facts(run.bundles[nodeid]) if nodeid in run.bundles else None
                                          for run in (a, b))))
                  for nodeid in nodeids)
    return Comparison(a, b, header(a.manifest, b.manifest), tests)


def header(a: dict[str, Any], b: dict[str, Any]) -> tuple[tuple[str, str, str], ...]:
    """The two manifests' run ids, harness versions and commits, engine and host kernels."""
    fa, fb = run_facts(a), run_facts(b)
    return tuple((label, fa[label], fb[label]) for label in fa)


def run_facts(m: dict[str, Any]) -> dict[str, str]:
    """A manifest's run id, harness version and commit, engine and host kernels, by label."""
    hosts = sorted({f"{h['host']} {h['kernel_release']}" for h in m["hosts"]})
    backends = sorted({h.get("backend", "docker") for h in m["hosts"]})
    engine = "-" if backends == ["netns"] else None
    return {"run id": m["run_id"], "harness": m["harness"]["version"], "commit": m["harness"]["git_commit"],
            "backend": ", ".join(backends) or "(none recorded)",
            "engine kernel": m["engine"]["kernel_version"] or engine or f"unknown ({m['engine']['error']})",
            "host kernels": ", ".join(hosts) or "(none recorded)",
            "docker": m["engine"]["server_version"] or engine or "unknown"}


def facts(bundle: Bundle) -> Facts:
    """The compared facts of a bundle, from its outcome.json and timeline.json."""
    timeline = _timeline(bundle)
    calls = [e for e in timeline if e["source"] == "syscall" and e["t"] == e["data"]["t1"]]
    failed = [e for e in calls if e["data"]["errname"]]
    errnos: list[str] = []
    for e in failed:
        text = f"{e['host']} {e['data']['op']} {e['data']['errname']}"
        if not errnos or errnos[-1] != text:
            errnos.append(text)
    return Facts(bundle.outcome["outcome"], tuple(errnos), _key(calls), _repeats(bundle, timeline),
                 _states(timeline))


def diff(a: Facts | None, b: Facts | None) -> tuple[Change, ...]:
    """The changes from `a` to `b` (None: the test is not in that run)."""
    if a is None or b is None:
        return (Change("outcome", a.outcome if a else ABSENT, b.outcome if b else ABSENT),)
    changes = []
    if a.outcome != b.outcome:
        changes.append(Change("outcome", a.outcome, b.outcome))
    if a.errnos != b.errnos:
        changes.append(Change("errno", _list(a.errnos), _list(b.errnos)))
    if (a.key is None) != (b.key is None) or (a.key and b.key and changed(a.key.elapsed, b.key.elapsed)):
        changes.append(Change("elapsed", _key_text(a.key), _key_text(b.key)))
    if any(_schedule_changed(a.repeats.get(name, ()), b.repeats.get(name, ()))
           for name in set(a.repeats) | set(b.repeats)):
        changes.append(Change("retransmissions", _repeats_text(a.repeats), _repeats_text(b.repeats)))
    if a.states != b.states:
        changes.append(Change("states", _states_text(a.states), _states_text(b.states)))
    return tuple(changes)


def changed(a: float, b: float) -> bool:
    """Whether two times differ beyond the tolerance (TOLERANCE_RATIO of `a` and TOLERANCE_SECONDS)."""
    return abs(b - a) > max(TOLERANCE_SECONDS, TOLERANCE_RATIO * abs(a))


def render_text(comparison: Comparison) -> str:
    """The comparison for a terminal."""
    width = max(len(a) for _, a, _ in comparison.header) + 2
    lines = [f"A: {comparison.a.path}", f"B: {comparison.b.path}", "",
             f"{'':16}{'A':<{width}}B"]
    lines += [f"{label:<14}{'*' if a != b else ' '} {a:<{width}}{b}" for label, a, b in comparison.header]
    lines += ["", _summary(comparison), ""]
    for test in comparison.changed:
        lines.append(f"{'FAIL' if any(c.failing for c in test.changes) else 'note'} {test.nodeid}")
        for change in test.changes:
            lines += [f"    {change.aspect:<16}A: {change.a}", f"    {'':<16}B: {change.b}"]
    return "\n".join(lines).rstrip() + "\n"


def render_html(comparison: Comparison) -> str:
    """The comparison as a standalone HTML page (no external resources)."""
    e = html.escape
    head = "".join(f"<tr{' class=diff' if a != b else ''}><th>{e(label)}</th><td>{e(a)}</td><td>{e(b)}</td></tr>"
                   for label, a, b in comparison.header)
    rows = []
    for test in comparison.changed:
        failing = any(c.failing for c in test.changes)
        rows.append(f"<tr class={'fail' if failing else 'note'}><th colspan=3>{e(test.nodeid)}</th></tr>")
        rows += [f"<tr><td>{e(c.aspect)}</td><td>{e(c.a)}</td><td>{e(c.b)}</td></tr>" for c in test.changes]
    changes = (f"<table><tr><th>aspect</th><th>A</th><th>B</th></tr>{''.join(rows)}</table>" if rows else "")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=utf-8><title>netfault compare</title><style>"
            "body{font-family:sans-serif}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top;white-space:pre-wrap}"
            ".diff,.fail th{background:#fdd}.note th{background:#ffd}</style></head><body>"
            f"<h1>netfault compare</h1><p>A: {e(str(comparison.a.path))}<br>B: {e(str(comparison.b.path))}</p>"
            f"<table><tr><th></th><th>A</th><th>B</th></tr>{head}</table>"
            f"<p>{e(_summary(comparison))}</p>{changes}</body></html>\n")


def _timeline(bundle: Bundle) -> list[dict[str, Any]]:
    path = bundle.path / TIMELINE
    if not path.is_file():
        raise ResultsError(f"{path}: missing, though {bundle.path.name}/outcome.json exists; the bundle is "
                           f"damaged (copied in part?): run the test again")
    try:
        events = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc}); the file is damaged") from None
    try:
        jsonschema.validate(events, TIMELINE_SCHEMA)
    except jsonschema.ValidationError as exc:
        raise ResultsError(f"{path}: does not match the {TIMELINE_SCHEMA['title']} schema at {exc.json_path}: "
                           f"{exc.message}") from None
    return events


def _key(calls: list[dict[str, Any]]) -> KeySyscall | None:
    chosen = key_syscall(Event(**e) for e in calls)
    if chosen is None:
        return None
    data = chosen.data
    label = " ".join(part for part in (chosen.host, data["op"], data["errname"]) if part)
    return KeySyscall(label, data["t1"] - data["t0"], data["errname"])


def _repeats(bundle: Bundle, timeline: list[dict[str, Any]]) -> dict[str, tuple[float, ...]]:
    by_host: dict[str, list[Packet]] = {}
    for e in timeline:
        if e["source"] == "packet":
            try:
                packet = Packet(**{**e["data"], "sack": tuple(map(tuple, e["data"].get("sack", ())))})
            except TypeError as exc:
                raise ResultsError(f"{bundle.path / TIMELINE}: a packet event at t={e['t']} is not a packet "
                                   f"({exc}); the file is damaged or from another version") from None
            by_host.setdefault(e["host"], []).append(packet)
    repeats = {}
    for host, packets in sorted(by_host.items()):
        segments = [s for flow in tcp_flows(packets) for s in flow.segments]
        for kind in REPEATS:
            times = sorted(s.t for s in segments if s.kind == kind)
            if times:
                repeats[f"{host} {kind}"] = tuple(times)
    return repeats


def _states(timeline: list[dict[str, Any]]) -> dict[str, tuple[str, ...]]:
    """Per host, the states its sockets were sampled in, but for those seen in one sample only: a state held
    for less than a sampling interval is caught or missed by chance, so it is within tolerance."""
    sockets: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for e in timeline:
        if e["source"] == "state" and e["data"].get("state"):
            sockets.setdefault((e["host"], e["data"].get("cookie")), []).append(e)
    states: dict[str, set[str]] = {}
    for (host, _), events in sockets.items():
        for this, after in zip(events, [*events[1:], None]):
            prev_t = this["data"].get("prev_t")
            brief = after is not None and prev_t is not None and after["t"] - this["t"] < 1.5 * (this["t"] - prev_t)
            if not brief:
                states.setdefault(host, set()).add(this["data"]["state"])
    return {host: tuple(sorted(found)) for host, found in sorted(states.items())}


def _schedule_changed(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return len(a) != len(b) or any(changed(x, y) for x, y in zip(_intervals(a), _intervals(b)))


def _intervals(times: tuple[float, ...]) -> list[float]:
    return [later - earlier for earlier, later in zip(times, times[1:])]


def _list(items: Iterable[str]) -> str:
    return ", ".join(items) or "(none)"


def _key_text(key: KeySyscall | None) -> str:
    return "(no syscall)" if key is None else f"{key.label} in {key.elapsed:.3f} s"


def _repeats_text(repeats: dict[str, tuple[float, ...]]) -> str:
    return "; ".join(f"{name} x{len(times)}" + (f" every {' '.join(f'{i:.3f}' for i in _intervals(times))} s"
                                                if len(times) > 1 else "")
                     for name, times in sorted(repeats.items())) or "(none)"


def _states_text(states: dict[str, tuple[str, ...]]) -> str:
    return "; ".join(f"{host} {' '.join(found)}" for host, found in states.items()) or "(none)"


def _summary(comparison: Comparison) -> str:
    changed_tests = comparison.changed
    failing = sum(any(c.failing for c in test.changes) for test in changed_tests)
    tolerance = f"(times within {TOLERANCE_RATIO:.0%} or {TOLERANCE_SECONDS * 1000:.0f} ms are not changes)"
    if not changed_tests:
        return f"no change in {len(comparison.tests)} tests {tolerance}"
    return f"{len(changed_tests)} of {len(comparison.tests)} tests changed, {failing} in outcome or errno {tolerance}"
