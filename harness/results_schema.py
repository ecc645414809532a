"""JSON Schemas (draft 2020-12) of the results' files: manifest.json, outcome.json, timeline.json, sockets-*.json."""

from __future__ import annotations

from typing import Any

from .results import FORMAT

_NUMBER = {"type": "number"}
_COUNT = {"type": "integer", "minimum": 0}
_STRING = {"type": "string"}
_NULLABLE_STRING = {"type": ["string", "null"]}
_NULLABLE_NUMBER = {"type": ["number", "null"]}


def _object(properties: dict[str, Any], required: list[str] | None = None, extra: bool = False) -> dict[str, Any]:
    """An object with these properties, all required unless `required` names some; `extra` allows others."""
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required, "additionalProperties": extra}


_TIMESTAMP = _object({"utc": {"type": "string", "format": "date-time"}, "epoch": _NUMBER})
_SYSCTLS = {"type": "object", "additionalProperties": {"type": ["string", "integer", "number"]}}

MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "netfault run manifest",
    **_object({
        "format": {"const": FORMAT},
        "run_id": _STRING,
        "start": _TIMESTAMP,
        "end": _TIMESTAMP,
        "harness": _object({"version": _STRING,
                            "git_commit": {"type": "string", "pattern": "^([0-9a-f]{40}|unknown)$"}}),
        "python": _STRING,
        "pytest": _STRING,
        "command_line": _object({"argv": {"type": "array", "items": _STRING},
                                 "pytest_args": {"type": "array", "items": _STRING}, "dir": _STRING}),
        "engine": _object({"server_version": _NULLABLE_STRING, "kernel_version": _NULLABLE_STRING,
                           "operating_system": _NULLABLE_STRING, "error": _NULLABLE_STRING}),
        "hosts": {"type": "array", "items": _object({
            "worker": _STRING, "host": _STRING, "backend": {"enum": ["docker", "netns"]}, "kernel_release": _STRING,
            "sysctls": {**_SYSCTLS, "required": ["net.ipv4.tcp_syn_retries", "net.ipv4.tcp_retries2",
                                                 "net.ipv4.tcp_congestion_control"]}},
            required=["worker", "host", "kernel_release", "sysctls"])},
        "workers": {"type": "array", "items": _STRING, "minItems": 1},
        "exit_status": {"type": "integer"},
        "tests": {"type": "array", "items": _object({"nodeid": _STRING, "bundle": _STRING})},
        "totals": _object({name: _COUNT for name in ("tests", "files", "bytes", "pcap_files", "pcap_bytes",
                                                      "pcaps_truncated", "half_written")}),
    }),
}

_PHASE = _object({"outcome": {"enum": ["passed", "failed", "skipped"]}, "duration": _NUMBER})
_FAULT = _object({"fault": _STRING, "describe": _STRING, "applied_at": _NULLABLE_NUMBER,
                  "healed_at": _NULLABLE_NUMBER}, extra=True)
_PCAP = _object({"file": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]+-[0-9]+\.pcap$"}, "host": _STRING,
                 "bytes": _COUNT, "bytes_written": _COUNT, "truncated": {"type": "boolean"}, "packets": _COUNT,
                 "complete": {"type": "boolean"}, "incomplete_because": _NULLABLE_STRING})

_STREAM_FILE = {"type": ["string", "null"], "pattern": r"^program-[A-Za-z0-9_.-]+-[0-9]+\.std(out|err)$"}
_PROGRAM = _object({"host": _STRING, "name": _STRING, "argv": {"type": "array", "items": _STRING},
                    "status": _STRING, "returncode": {"type": ["integer", "null"]}, "signal": _NULLABLE_STRING,
                    "t0": _NULLABLE_NUMBER, "t1": _NULLABLE_NUMBER,
                    "truncated": {"type": "array", "items": {"enum": ["stdout", "stderr"]}},
                    "stdout": _STREAM_FILE, "stdout_size": _COUNT, "stderr": _STREAM_FILE, "stderr_size": _COUNT})
_OUTCOME_PROPERTIES: dict[str, Any] = {
    "format": {"const": FORMAT},
    "nodeid": _STRING,
    "run_id": _STRING,
    "worker": _STRING,
    "outcome": {"enum": ["passed", "failed", "skipped", "error", "xfailed", "xpassed"]},
    "duration": {"type": "number", "minimum": 0},
    "phases": _object({"setup": _PHASE, "call": _PHASE, "teardown": _PHASE}, required=["setup", "teardown"]),
    "longrepr": {"oneOf": [{"type": "null"}, _object({"phase": {"enum": ["setup", "call", "teardown"]},
                                                      "summary": _STRING})]},
    "sysctls": {"type": "object", "additionalProperties": _SYSCTLS},
    "properties": {"type": "object"},
    "faults": {"type": "array", "items": _FAULT},
    "counts": _object({"syscalls": _COUNT, "packets": _COUNT, "state_changes": _COUNT}),
    "timeline": {"const": "timeline.json"},
    "pcaps": {"type": "array", "items": _PCAP},
    "pcap_budget": _COUNT,
    "pcaps_truncated": _COUNT,
    "sockets": {"type": "array", "items": _object({
        "file": {"type": "string", "pattern": r"^sockets-[A-Za-z0-9_.-]+-[0-9]+\.json$"}, "host": _STRING,
        "entries": _COUNT})},
    "agent_logs": {"type": "object", "additionalProperties": {"type": "string", "pattern": r"^agent-.+\.log$"}},
    "programs": {"type": "array", "items": _PROGRAM},
}

OUTCOME_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "netfault test outcome (one evidence bundle)",
    # Bundles written before programs' output was kept have no "programs".
    **_object(_OUTCOME_PROPERTIES, required=[name for name in _OUTCOME_PROPERTIES if name != "programs"]),
}

TIMELINE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "netfault timeline (events in CLOCK_MONOTONIC order)",
    "type": "array",
    "items": _object({"t": _NUMBER, "host": _STRING,
                      "source": {"enum": ["fault", "syscall", "packet", "state", "program"]},
                      "text": _STRING, "data": {"type": "object"}}),
}

SOCKETS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "netfault socket-state history (one sampler)",
    **_object({"host": _STRING, "figures": {"type": "object", "required": ["samples", "missed"]},
               "entries": {"type": "array", "items": {
                   "type": "object", "required": ["t", "change", "state", "src", "sport", "dst", "dport"],
                   "properties": {"t": _NUMBER, "change": {"enum": ["new", "state", "fields", "gone"]}}}}}),
}
