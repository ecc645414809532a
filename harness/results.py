"""The results layout on disk: one directory per run, a manifest, one evidence bundle per test.

```
<results>/<run-id>/manifest.json          written last, by one process (the xdist controller, or the session)
<results>/<run-id>/tests/<bundle>/        one per test that used `pair`, written by the process that ran it
    outcome.json                          written last: a bundle without it is half-written
    timeline.json, <host>-<n>.pcap, sockets-<host>-<n>.json, agent-<host>.log,
    program-<host>-<name>-<n>.stdout/.stderr
<results>/latest -> <run-id>
```
Bundle names come from the nodeid alone, so xdist workers never write the same directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .evidence import Evidence
from .programs import ProgramResult
from .timeline import Timeline

FORMAT = 1
MANIFEST = "manifest.json"
OUTCOME = "outcome.json"
TIMELINE = "timeline.json"
TESTS = "tests"
LATEST = "latest"
PCAP_BUDGET = 20 * 2**20
NAME_MAX = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": "<", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\xa1\xb2\x3c\x4d": ">"}
_PCAP_HEADER = 24
_RECORD_HEADER = 16


def bundle_name(nodeid: str) -> str:
    """A filesystem-safe directory name for a test: file stem, test name and parameters, then a hash of the
    whole nodeid (so that names stay unique when the readable part is shortened or loses characters)."""
    path, _, rest = nodeid.partition("::")
    readable = _UNSAFE.sub("_", f"{Path(path).stem}.{rest}" if rest else Path(path).stem).strip("._-")
    digest = hashlib.sha1(nodeid.encode()).hexdigest()[:8]
    return f"{readable[:NAME_MAX]}-{digest}"


def truncate_pcap(data: bytes, limit: int) -> bytes:
    """`data` (a pcap file) cut to at most `limit` bytes at a packet boundary, so the file stays readable."""
    if len(data) <= limit:
        return data
    order = _PCAP_MAGIC.get(data[:4])
    if order is None:
        raise ValueError(f"not a pcap file (magic {data[:4].hex()}): cannot cut it at a packet boundary")
    if limit < _PCAP_HEADER:
        return b""
    end = _PCAP_HEADER
    while end + _RECORD_HEADER <= len(data):
        (incl_len,) = struct.unpack_from(order + "I", data, end + 8)
        after = end + _RECORD_HEADER + incl_len
        if after > limit:
            break
        end = after
    return data[:end]


def to_jsonable(value: Any) -> Any:
    """JSON encoder fallback for the evidence's values: dataclasses, sets, paths and bytes (as hex)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to the results as JSON")


def write_json(path: Path, value: Any) -> int:
    """Write `value` as JSON atomically (a temporary file renamed); returns the bytes written."""
    text = json.dumps(value, indent=1, sort_keys=True, default=to_jsonable) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return len(text.encode())


@dataclass
class CompletedTest:
    """What the plugin knows of one test once its teardown ran."""

    nodeid: str
    run_id: str
    worker: str
    outcome: str
    duration: float
    phases: dict[str, dict[str, Any]]
    longrepr: dict[str, str] | None
    sysctls: dict[str, dict[str, Any]]
    evidence: Evidence | None
    agent_logs: Mapping[str, str] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)


def write_bundle(run_dir: Path, result: CompletedTest, pcap_budget: int = PCAP_BUDGET) -> tuple[Path, dict[str, Any]]:
    """Write a test's bundle under run_dir/tests/ (outcome.json last); returns its directory and outcome."""
    bundle = run_dir / TESTS / bundle_name(result.nodeid)
    bundle.mkdir(parents=True, exist_ok=True)
    evidence = result.evidence or Evidence()
    write_json(bundle / TIMELINE, Timeline.of(evidence).to_json())
    pcaps, left, counts = [], pcap_budget, {}
    for wire in evidence.wires:
        counts[wire.host] = counts.get(wire.host, 0) + 1
        name = f"{wire.host}-{counts[wire.host]}.pcap"
        kept = truncate_pcap(wire.pcap, left)
        (bundle / name).write_bytes(kept)
        left -= len(kept)
        pcaps.append({"file": name, "host": wire.host, "bytes": len(wire.pcap), "bytes_written": len(kept),
                      "truncated": len(kept) < len(wire.pcap), "packets": len(wire),
                      "complete": wire.complete, "incomplete_because": wire.incomplete_because or None})
    sockets, counts = [], {}
    for host, history in evidence.histories:
        counts[host] = counts.get(host, 0) + 1
        name = f"sockets-{host}-{counts[host]}.json"
        write_json(bundle / name, {"host": host, "figures": history.figures, "entries": history.to_json()})
        sockets.append({"file": name, "host": host, "entries": len(history.entries)})
    programs = _write_outputs(bundle, evidence.outputs)
    logs = {}
    for host, tail in result.agent_logs.items():
        logs[host] = f"agent-{host}.log"
        (bundle / logs[host]).write_text(tail + "\n" if tail else "")
    outcome = {
        "format": FORMAT, "nodeid": result.nodeid, "run_id": result.run_id, "worker": result.worker,
        "outcome": result.outcome, "duration": result.duration, "phases": result.phases,
        "longrepr": result.longrepr, "sysctls": result.sysctls, "properties": result.properties,
        "faults": [fault.record() for fault in evidence.faults],
        "counts": {"syscalls": len(evidence.records), "packets": sum(len(wire) for wire in evidence.wires),
                   "state_changes": sum(len(history.entries) for _, history in evidence.histories)},
        "timeline": TIMELINE, "pcaps": pcaps, "pcap_budget": pcap_budget,
        "pcaps_truncated": sum(pcap["truncated"] for pcap in pcaps), "sockets": sockets, "agent_logs": logs,
        "programs": programs,
    }
    write_json(bundle / OUTCOME, outcome)
    return bundle, outcome


def _write_outputs(bundle: Path, outputs: list[ProgramResult]) -> list[dict[str, Any]]:
    """Each ended program's stdout and stderr (the last OUTPUT_LIMIT bytes; a stream it never wrote to has no
    file), and what outcome.json says of it."""
    entries, counts = [], {}
    for result in outputs:
        key = (result.host, result.name)
        counts[key] = counts.get(key, 0) + 1
        stem = _UNSAFE.sub("_", f"program-{result.host}-{result.name}-{counts[key]}")
        entry = {"host": result.host, "name": result.name, "argv": list(result.argv), "status": result.status(),
                 "returncode": result.returncode, "signal": result.signal, "t0": result.t0, "t1": result.t1,
                 "truncated": result.truncated}
        for stream in ("stdout", "stderr"):
            data: bytes = getattr(result, stream)
            entry[stream] = f"{stem}.{stream}" if data else None
            entry[f"{stream}_size"] = getattr(result, f"{stream}_size")
            if data:
                (bundle / entry[stream]).write_bytes(data)
        entries.append(entry)
    return entries


def totals(run_dir: Path) -> dict[str, int]:
    """What the run's bundles hold: tests, files and bytes, pcaps and their bytes, pcaps truncated, and bundles
    without outcome.json (half-written: their writer failed)."""
    figures = {"tests": 0, "files": 0, "bytes": 0, "pcap_files": 0, "pcap_bytes": 0, "pcaps_truncated": 0,
               "half_written": 0}
    tests = run_dir / TESTS
    for bundle in sorted(tests.iterdir()) if tests.is_dir() else []:
        figures["tests"] += 1
        for path in bundle.iterdir():
            size = path.stat().st_size
            figures["files"] += 1
            figures["bytes"] += size
            if path.suffix == ".pcap":
                figures["pcap_files"] += 1
                figures["pcap_bytes"] += size
        if (bundle / OUTCOME).exists():
            figures["pcaps_truncated"] += json.loads((bundle / OUTCOME).read_text())["pcaps_truncated"]
        else:
            figures["half_written"] += 1
    return figures


def point_latest(results: Path, run_id: str) -> None:
    """Make results/latest point at results/<run_id> (replacing it atomically)."""
    tmp = results / f".{LATEST}.{run_id}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_id)
    os.replace(tmp, results / LATEST)
