"""Scenario files, format v1 (docs/scenario-files.md): hosts, a workload of programs and probes, a timeline of
faults and expectations in one YAML file, loaded into typed objects.

    scenario = load_scenario(Path("examples/s02_syn_blackhole.netfault.yaml"))

Everything is checked before anything starts: the structure against a JSON Schema, then what a schema cannot
say (a host, program or probe step that does not exist, times beyond the duration, fault parameters, which
the fault classes themselves check on placeholder hosts). All problems are reported together, each as
`file:line: field.path: message`, the line taken from the YAML nodes' marks.
"""

from __future__ import annotations

import errno
import re
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from faults import (Drop, Fault, GEModel, Kill, LinkDown, LinkFlap, Netem, Partition, Pause, PowerLoss, Reject,
                    Restart, Signal, Stop, Sysctls)
from faults.process import Signalable

from .backends.base import Host
from .errors import ConfigError
from .flows import Kind
from .records import SyscallRecord
from .topology import HostSpec

SUFFIX = ".netfault.yaml"
VERSION = 1
BACKENDS = ("docker", "netns")
TCP_STATES = ("ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSE_WAIT",
              "LAST_ACK", "LISTEN", "CLOSING")
UNUSED = "unused"  # `to: unused`, `${unused}`: an address of the test network no host answers for
# Host numbers on the test subnet, in the order hosts are declared (client .10 and server .20 as in the compose file).
FIRST_HOST_NUMBER, HOST_NUMBER_STEP = 10, 10
_PLACEHOLDER_NET = "10.213.0."
_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}")

FieldPath = tuple[str | int, ...]

# ---------------------------------------------------------------- JSON Schema of v1

_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_BOOL = {"type": "boolean"}
_TIME = {"type": "number", "minimum": 0}
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_NAME = {"type": "string", "pattern": r"^[a-z][a-z0-9_-]{0,30}$"}
_ARGV = {"type": "array", "items": _STR, "minItems": 1}
_ENV = {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}
_HOSTS = {"type": ["string", "array"], "items": _STR, "minItems": 1}
# A time bound: a number (at most that many seconds) or [at least, at most].
_BOUNDS = {"type": ["number", "array"], "minimum": 0, "items": _TIME, "minItems": 2, "maxItems": 2}
_STATES = {"type": "array", "items": {"enum": list(TCP_STATES)}}


def _obj(properties: dict[str, Any], required: tuple[str, ...] = (), nullable: bool = False) -> dict[str, Any]:
    """An object schema with exactly these properties."""
    return {"type": ["object", "null"] if nullable else "object", "properties": properties,
            "required": list(required), "additionalProperties": False}


def _map(values: dict[str, Any], **more: Any) -> dict[str, Any]:
    """A mapping of names to `values`."""
    return {"type": "object", "propertyNames": _NAME, "additionalProperties": values, **more}


@dataclass(frozen=True)
class FaultKind:
    """A `fault:` kind: the faults/ class (or factory) it makes and the JSON Schema of each parameter."""

    make: Callable[..., Fault]
    params: dict[str, dict[str, Any]]
    required: tuple[str, ...] = ("host",)


def _netem(gemodel: dict[str, float] | None = None, **params: Any) -> Netem:
    return Netem(gemodel=None if gemodel is None else GEModel(**gemodel), **params)


def _signal(program: Signalable, signal: str = "SIGKILL") -> Signal:
    return Signal(program, signal)


_FIREWALL = {"direction": _STR, "protocol": _STR, "dport": _INT, "sport": _INT, "peer": _STR, "backend": _STR}
_NETEM = {name: _NUM for name in ("delay_ms", "jitter_ms", "correlation", "loss_pct", "loss_correlation",
                                   "duplicate_pct", "corrupt_pct", "reorder_pct")}
FAULTS: dict[str, FaultKind] = {
    "drop": FaultKind(Drop, {"host": _STR, **_FIREWALL}),
    "reject": FaultKind(Reject, {"host": _STR, "reject_with": _STR, **_FIREWALL}),
    "partition": FaultKind(Partition, {"a": _HOSTS, "b": _HOSTS, "one_way": _BOOL, "on_arrival": _BOOL,
                                       "backend": _STR}, ("a", "b")),
    "power_loss": FaultKind(PowerLoss, {"host": _STR, "backend": _STR}),
    "link_down": FaultKind(LinkDown, {"host": _STR, "iface": _STR}),
    "link_flap": FaultKind(LinkFlap, {"host": _STR, "down_ms": _NUM, "up_ms": _NUM, "count": _INT, "iface": _STR},
                           ("host", "down_ms", "up_ms", "count")),
    "netem": FaultKind(_netem, {"host": _STR, "iface": _STR, "direction": _STR, **_NETEM, "distribution": _STR,
                                "gemodel": {"type": "object"}, "rate": {"type": ["integer", "string"]},
                                "limit": _INT, "seed": _INT, "fallback": {"type": ["boolean", "string"]}}),
    "signal": FaultKind(_signal, {"program": _STR, "signal": _STR}, ("program",)),
    "pause": FaultKind(Pause, {"host": _STR}),
    "kill": FaultKind(Kill, {"host": _STR}),
    "stop": FaultKind(Stop, {"host": _STR, "timeout": _NUM}),
    "restart": FaultKind(Restart, {"host": _STR, "timeout": _NUM, "graceful": _BOOL}),
    "sysctls": FaultKind(Sysctls, {"host": _STR, "values": {"type": "object"}}, ("host", "values")),
}
HOST_PARAMS = ("host", "peer", "a", "b")
_TIMING = {"at": _TIME, "for": {"type": "number", "exclusiveMinimum": 0}, "fault": {"enum": list(FAULTS)}}
_FAULT = {"type": "object", "required": ["at", "fault"], "properties": _TIMING,
          "allOf": [{"if": {"properties": {"fault": {"const": name}}, "required": ["fault"]},
                     "then": _obj({**dict.fromkeys(_TIMING, {}), **kind.params}, kind.required)}
                    for name, kind in FAULTS.items()]}

_STEP_COMMON = {"name": _NAME, "at": _TIME}
STEP_OPS: dict[str, dict[str, Any]] = {
    "connect": _obj({**_STEP_COMMON, "to": _STR, "port": _PORT, "type": {"enum": ["tcp", "udp"]},
                     "options": {"type": "object"}, "nonblocking": _BOOL, "select_timeout": _TIME}, ("to", "port")),
    "listen": _obj({**_STEP_COMMON, "port": _PORT, "backlog": _INT, "options": {"type": "object"}, "accept": _BOOL},
                   ("port",)),
    "send": _obj({**_STEP_COMMON, "size": _INT, "data": _STR, "count": {"type": ["integer", "null"]},
                  "interval": _TIME, "duration": _TIME, "flags": {"type": "array", "items": _STR},
                  "nonblocking": _BOOL}),
    "recv": _obj({**_STEP_COMMON, "size": _INT, "timeout": _TIME, "nonblocking": _BOOL}, nullable=True),
    "shutdown": _obj({**_STEP_COMMON, "how": {"enum": ["SHUT_RD", "SHUT_WR", "SHUT_RDWR"]}}, nullable=True),
    "close": _obj(_STEP_COMMON, nullable=True),
}
_STEP = {"type": "object", "minProperties": 1, "maxProperties": 1, "properties": STEP_OPS,
         "additionalProperties": False}
_FILE = {"type": ["string", "object"], "properties": {"source": _STR, "content": _STR, "mode": _INT},
         "additionalProperties": False}
_SYSCTLS = {"type": "object", "additionalProperties": {"type": ["string", "integer"]}}
_HOST = _obj({"image": _STR, "extra_packages": {"type": "array", "items": _STR, "minItems": 1}, "command": _ARGV,
              "environment": _ENV, "sysctls": _SYSCTLS, "files": {"type": "object", "additionalProperties": _FILE}},
             nullable=True)
_WORKLOAD = _obj({"host": _STR, "at": _TIME, "run": _ARGV, "env": _ENV, "cwd": _STR,
                  "probe": {"type": "array", "items": _STEP, "minItems": 1}}, ("host",))
EXPECT_FIELDS: dict[str, dict[str, Any]] = {
    "programs": {"exit_code": _INT, "signal": {"type": ["string", "null"]}, "stdout": _STR, "stderr": _STR,
                 "exits_within": _BOUNDS, "still_running_at": _TIME},
    "probes": {"errno": {"type": ["string", "null"]}, "elapsed": _BOUNDS, "ret": _INT},
    "sockets": {"host": _STR, "port": _PORT, "reached": _STATES, "not_reached": _STATES,
                "states": {"type": "array", "items": _STATES}},
    "packets": {"host": _STR, "port": _PORT, "kind": {"enum": [kind.value for kind in Kind]},
                "count": {"type": ["integer", "array"], "minimum": 0, "items": {"type": "integer", "minimum": 0},
                          "minItems": 2, "maxItems": 2}},
}
_EXPECT = _obj({"programs": _map(_obj(EXPECT_FIELDS["programs"])),
                "probes": {"type": "object", "additionalProperties": _obj(EXPECT_FIELDS["probes"])},
                "sockets": {"type": "array", "items": _obj(EXPECT_FIELDS["sockets"], ("host",))},
                "packets": {"type": "array", "items": _obj(EXPECT_FIELDS["packets"], ("host", "kind", "count"))}})
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "netfault scenario file, version 1",
    **_obj({"version": {"const": VERSION}, "name": _STR, "description": _STR, "backend": {"enum": list(BACKENDS)},
            "duration": {"type": "number", "exclusiveMinimum": 0}, "hosts": _map(_HOST, minProperties=1),
            "workload": _map(_WORKLOAD), "timeline": {"type": "array", "items": _FAULT},
            "capture": {"type": "array", "items": _obj({"host": _STR, "filter": _STR, "iface": _STR}, ("host",))},
            "sample": {"type": "array", "items": _obj({"host": _STR, "port": _PORT, "period_ms": {
                "type": "number", "exclusiveMinimum": 0}, "fields": _BOOL}, ("host",))},
            "expect": _EXPECT}, ("version", "duration", "hosts")),
}

# ---------------------------------------------------------------- typed objects


@dataclass(frozen=True)
class FileSpec:
    """A file put into a host before the workload starts: from `source` (next to the scenario file) or `content`."""

    dest: str
    source: Path | None
    content: str | None
    mode: int

    def data(self) -> bytes | Path:
        return self.source if self.source is not None else str(self.content).encode()


@dataclass(frozen=True)
class HostDecl:
    """A host: its image (None: the peer image), extra Debian packages, its own command and settings."""

    name: str
    host_number: int
    image: str | None
    extra_packages: tuple[str, ...]
    command: tuple[str, ...] | None
    environment: dict[str, str]
    sysctls: dict[str, str]
    files: tuple[FileSpec, ...]


@dataclass(frozen=True)
class ProgramDecl:
    """A workload program: `argv` launched on `host` `at` seconds after the start (`${host}` expanded)."""

    name: str
    host: str
    at: float
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str | None


@dataclass(frozen=True)
class StepDecl:
    """One socket operation of a probe (an Endpoint method), not before `at` if given."""

    name: str
    op: str
    args: dict[str, Any]
    at: float | None


@dataclass(frozen=True)
class ProbeDecl:
    """Socket operations run one after the other on `host` from `at` on, each recorded with its errno."""

    name: str
    host: str
    at: float
    steps: tuple[StepDecl, ...]


@dataclass(frozen=True)
class FaultDecl:
    """A timeline entry: a fault of `kind` applied `at` seconds after the start, healed `duration` later
    (None: at the end)."""

    kind: str
    at: float
    duration: float | None
    params: dict[str, Any]
    where: str

    def make(self, host: Callable[[str], Host], program: Callable[[str], Signalable]) -> Fault:
        """The fault, with host and program names resolved by `host` and `program`."""
        params = dict(self.params)
        for name in HOST_PARAMS:
            if isinstance(params.get(name), str):
                params[name] = host(params[name])
            elif isinstance(params.get(name), list):
                params[name] = [host(n) for n in params[name]]
        if "program" in params:
            params["program"] = program(params["program"])
        return FAULTS[self.kind].make(**params)


@dataclass(frozen=True)
class CaptureDecl:
    host: str
    filter: str
    iface: str


@dataclass(frozen=True)
class SampleDecl:
    host: str
    port: int | None
    period_ms: float
    fields: bool


@dataclass(frozen=True)
class Expectation:
    """One expected fact: `field` of `subject` (a program, a probe step "probe.step", or a host for sockets and
    packets, with `port` and packet `kind`) is `value`; `where` is its place in the file."""

    section: str
    subject: str
    field: str
    value: Any
    where: str
    port: int | None = None
    kind: str | None = None


@dataclass(frozen=True)
class Scenario:
    """A loaded, valid scenario file."""

    path: Path
    name: str
    description: str
    backend: str | None
    duration: float
    hosts: tuple[HostDecl, ...]
    programs: tuple[ProgramDecl, ...]
    probes: tuple[ProbeDecl, ...]
    timeline: tuple[FaultDecl, ...]
    captures: tuple[CaptureDecl, ...]
    samplers: tuple[SampleDecl, ...]
    expectations: tuple[Expectation, ...]

    def host(self, name: str) -> HostDecl:
        return next(host for host in self.hosts if host.name == name)

    @property
    def main_programs(self) -> tuple[str, ...]:
        """Hosts with a `command`: their command is a program named after the host."""
        return tuple(host.name for host in self.hosts if host.command is not None)


# ---------------------------------------------------------------- loading


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a scenario file, where it is."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field + ': ' if self.field else ''}{self.message}"


class ScenarioError(ConfigError):
    """A scenario file that cannot run; `problems` lists every problem found, by line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line))
        super().__init__("\n".join(map(str, self.problems)))


def field_name(path: FieldPath) -> str:
    """`timeline[2].dport`, `hosts.server.files["/etc/nginx.conf"]`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[\w-]+", str(part)):
            text += f".{part}" if text else str(part)
        else:
            text += f"[{str(part)!r}]"
    return text


class _Document:
    """A YAML document as plain data, the line of every key and item, and the problems found so far."""

    def __init__(self, path: Path, text: str) -> None:
        self.file = str(path)
        self.problems: list[Problem] = []
        self.lines: dict[FieldPath, int] = {(): 1}
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            self.data = None if node is None else self._walk(loader, node, ())
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            self.data = None
            self.problems.append(Problem(self.file, mark.line + 1 if mark else 1, "", f"not valid YAML: {exc.problem}"))
        finally:
            loader.dispose()

    def _walk(self, loader: yaml.SafeLoader, node: yaml.Node, path: FieldPath) -> Any:
        if isinstance(node, yaml.MappingNode):
            loader.flatten_mapping(node)
            data: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
                self.lines[path + (str(key),)] = key_node.start_mark.line + 1
                if not isinstance(key, (str, int, float, bool)) or key is None:
                    self.error(path + (str(key),), "a key must be a plain word")
                elif str(key) in data:
                    self.error(path + (str(key),), f"duplicate key {key!r}: the earlier one would be ignored")
                else:
                    data[str(key)] = self._walk(loader, value_node, path + (str(key),))
            return data
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                self.lines[path + (index,)] = item.start_mark.line + 1
                items.append(self._walk(loader, item, path + (index,)))
            return items
        return loader.construct_object(node)

    def line(self, path: FieldPath) -> int:
        """The line of `path`, or of its nearest parent that has one."""
        while path not in self.lines:
            path = path[:-1]
        return self.lines[path]

    def error(self, path: FieldPath, message: str) -> None:
        self.problems.append(Problem(self.file, self.line(path), field_name(path), message))

    def where(self, path: FieldPath) -> str:
        return f"{self.file}:{self.line(path)}: {field_name(path)}"


def _schema_message(error: jsonschema.ValidationError) -> str:
    if error.validator == "type":
        expected = error.validator_value if isinstance(error.validator_value, str) else " or ".join(
            error.validator_value)
        return f"expected {expected}, got {type(error.instance).__name__} {error.instance!r}"
    if error.validator == "enum" and error.path and error.path[-1] == "fault":
        return f"unknown fault {error.instance!r} (kinds: {', '.join(FAULTS)})"
    if error.validator == "enum":
        return f"{error.instance!r} is not one of: {', '.join(map(str, error.validator_value))}"
    if error.validator == "minimum" and error.validator_value == 0:
        return f"must not be negative (seconds, counts), got {error.instance!r}"
    return error.message


def _schema_problems(doc: _Document) -> set[FieldPath]:
    """Record every schema violation; returns the paths that have one (their content is not trusted further)."""
    bad: set[FieldPath] = set()
    for error in jsonschema.Draft202012Validator(SCHEMA).iter_errors(doc.data):
        path = tuple(error.absolute_path)
        bad.add(path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = sorted(error.schema.get("properties", {}))
            for name in sorted(set(error.instance) - set(known)):
                doc.error(path + (name,), f"unknown field {name!r}" + (f" (known: {', '.join(known)})" if known
                                                                       else ""))
                bad.add(path + (name,))
        elif error.validator == "required":
            doc.error(path + (error.message.split("'")[1],), "missing (this field is required)")
        else:
            doc.error(path, _schema_message(error))
    return bad


def load_scenario(path: Path) -> Scenario:
    """Read and check the scenario file at `path`; ScenarioError lists every problem with file, line and field."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError([Problem(str(path), 1, "", f"cannot read the file: {exc.strerror}")]) from None
    doc = _Document(path, text)
    if doc.problems:
        raise ScenarioError(doc.problems)
    data = doc.data
    if not isinstance(data, dict):
        raise ScenarioError([Problem(doc.file, 1, "", "expected a mapping starting with `version: 1`")])
    if "version" not in data:
        raise ScenarioError([Problem(doc.file, 1, "version", f"missing: add `version: {VERSION}` (the format of "
                                                             f"this file) at the top")])
    if data["version"] != VERSION:
        doc.error(("version",), f"unsupported version {data['version']!r}: this netfault reads version {VERSION}")
        raise ScenarioError(doc.problems)
    scenario = _Checker(doc, _schema_problems(doc)).scenario()
    if doc.problems:
        raise ScenarioError(doc.problems)
    assert scenario is not None
    return scenario


def expand(text: str, addrs: Mapping[str, str]) -> str:
    """`text` with each `${host}` replaced by that host's address (`$${` is a literal `${`)."""
    return _REF.sub(lambda m: "${" if m.group(1) is None else addrs[m.group(1)], text)


def _bounds(value: float | list[float]) -> tuple[float, float]:
    return (0.0, float(value)) if isinstance(value, (int, float)) else (float(value[0]), float(value[1]))


class _Placeholder:
    """A program for checking `signal` faults before anything runs."""

    def __init__(self, name: str) -> None:
        self.name = name

    def signal(self, sig: str) -> SyscallRecord:
        raise RuntimeError("a placeholder is never signalled")


class _Checker:
    """The semantic checks of a document whose schema problems are known, and its typed objects."""

    def __init__(self, doc: _Document, bad: set[FieldPath]) -> None:
        self.doc = doc
        self.bad = bad
        self.data: dict[str, Any] = doc.data

    def clean(self, path: FieldPath) -> bool:
        """Whether nothing at or below `path` broke the schema."""
        return not any(bad[:len(path)] == path for bad in self.bad)

    def items(self, section: str) -> Iterator[tuple[FieldPath, Any]]:
        """The clean entries of a top-level mapping or list, with their paths."""
        value = self.data.get(section)
        entries = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, entry in entries:
            if self.clean((section, key)):
                yield (section, key), entry

    def scenario(self) -> Scenario | None:
        error = self.doc.error
        duration = self.data.get("duration") if self.clean(("duration",)) else None
        self.hosts = [name for name in self.data.get("hosts") or {} if isinstance(name, str)]
        hosts = [self.host(path, spec or {}, FIRST_HOST_NUMBER + i * HOST_NUMBER_STEP)
                 for i, (path, spec) in enumerate(self.items("hosts"))]
        backend = self.data.get("backend")
        for host in hosts:
            if backend == "netns" and (host.image or host.extra_packages or host.command):
                error(("hosts", host.name), "image, extra_packages and command need the docker backend: the "
                                            "netns backend runs this machine's own programs (drop them, or use "
                                            "backend: docker)")
        main = {host.name for host in hosts if host.command is not None}
        programs, probes = [], []
        workload = _mapping(self.data.get("workload"))
        for name, spec in workload.items():
            if isinstance(spec, dict) and isinstance(spec.get("host"), str):
                self.ref(("workload", name, "host"), spec["host"])
        self.unchecked = {name for name in workload if not self.clean(("workload", name))}
        for path, spec in self.items("workload"):
            if path[1] in main:
                error(path, f"the name {path[1]!r} is taken by the command of host {path[1]!r}: choose another")
            if ("run" in spec) == ("probe" in spec):
                error(path, "give `run` (a program's argv) or `probe` (socket operations), one of them")
            elif "run" in spec:
                programs.append(self.program(path, spec))
            else:
                probes.append(self.probe(path, spec))
        self.check_times(duration, [(p, e.get("at", 0)) for p, e in self.items("workload")])
        names = {p.name: p.at for p in programs} | dict.fromkeys(main, 0.0)
        entries = self.data.get("timeline")
        for index, spec in enumerate(entries if isinstance(entries, list) else []):
            for name in HOST_PARAMS:
                value = spec.get(name) if isinstance(spec, dict) else None
                for i, host in enumerate(value if isinstance(value, list) else [value]):
                    if isinstance(host, str):
                        self.ref(("timeline", index, name) + ((i,) if isinstance(value, list) else ()), host)
        timeline = [self.fault(path, spec, names) for path, spec in self.items("timeline")]
        self.check_times(duration, [(p, e["at"] + e.get("for", 0)) for p, e in self.items("timeline")])
        captures = [CaptureDecl(self.ref(p + ("host",), e["host"]), self.refs_in(p + ("filter",), e.get("filter", "")),
                                e.get("iface", "eth0")) for p, e in self.items("capture")]
        samplers = [SampleDecl(self.ref(p + ("host",), e["host"]), e.get("port"), float(e.get("period_ms", 10)),
                               e.get("fields", False)) for p, e in self.items("sample")]
        expectations = self.expectations(names, probes, captures, samplers, duration)
        if self.doc.problems or duration is None:
            return None
        return Scenario(Path(self.doc.file), self.data.get("name") or Path(self.doc.file).name.removesuffix(SUFFIX),
                        self.data.get("description", ""), backend, float(duration), tuple(hosts), tuple(programs),
                        tuple(probes), tuple(timeline), tuple(captures), tuple(samplers), tuple(expectations))

    def ref(self, path: FieldPath, name: str, unused: bool = False) -> str:
        """`name` if it is a host of the file (or `unused` where allowed), else a problem."""
        if name not in self.hosts and not (unused and name == UNUSED):
            known = ", ".join(self.hosts + ([UNUSED] if unused else []))
            self.doc.error(path, f"unknown host {name!r} (hosts: {known})")
        return name

    def refs_in(self, path: FieldPath, text: str) -> str:
        """`text`, after checking that each `${host}` in it names a host (or `unused`)."""
        for match in _REF.finditer(text):
            if match.group(1) is not None and match.group(1) not in self.hosts + [UNUSED]:
                self.doc.error(path, f"unknown host {match.group(1)!r} in ${{{match.group(1)}}} (hosts: "
                                     f"{', '.join(self.hosts + [UNUSED])}; write $${{ for a literal ${{)")
        return text

    def check_times(self, duration: float | None, ends: list[tuple[FieldPath, float]]) -> None:
        for path, end in ends:
            if duration is not None and end > duration:
                self.doc.error(path, f"ends at {end:g} s, after the scenario's duration ({duration:g} s)")

    def host(self, path: FieldPath, spec: dict[str, Any], number: int) -> HostDecl:
        name = str(path[1])
        if spec.get("image") and spec.get("extra_packages"):
            self.doc.error(path, "give `image` or `extra_packages` (the peer image with more Debian packages), "
                                 "not both")
        try:
            if spec.get("sysctls"):
                Sysctls(_placeholder_host(name, number), spec["sysctls"])
        except ValueError as exc:
            self.doc.error(path + ("sysctls",), str(exc))
        files = []
        for dest, source in (spec.get("files") or {}).items():
            where = path + ("files", dest)
            entry = {"source": source} if isinstance(source, str) else source
            if ("source" in entry) == ("content" in entry):
                self.doc.error(where, "give a `source` file (relative to the scenario file) or inline `content`")
                continue
            local = None if "source" not in entry else Path(self.doc.file).parent / entry["source"]
            if local is not None and not local.is_file():
                self.doc.error(where, f"no such file {local} (sources are relative to the scenario file)")
            files.append(FileSpec(dest, local, entry.get("content"), entry.get("mode", 0o644)))
        return HostDecl(name, number, spec.get("image"), tuple(spec.get("extra_packages", ())),
                        None if "command" not in spec else tuple(spec["command"]),
                        {k: str(v) for k, v in (spec.get("environment") or {}).items()},
                        {k: str(v) for k, v in (spec.get("sysctls") or {}).items()}, tuple(files))

    def program(self, path: FieldPath, spec: dict[str, Any]) -> ProgramDecl:
        argv = tuple(self.refs_in(path + ("run", i), arg) for i, arg in enumerate(spec["run"]))
        env = {k: self.refs_in(path + ("env", k), str(v)) for k, v in (spec.get("env") or {}).items()}
        return ProgramDecl(str(path[1]), spec["host"], float(spec.get("at", 0)), argv, env, spec.get("cwd"))

    def probe(self, path: FieldPath, spec: dict[str, Any]) -> ProbeDecl:
        at = float(spec.get("at", 0))
        steps = []
        for index, step in enumerate(spec["probe"]):
            (op, args), = step.items()
            args = dict(args or {})
            where = path + ("probe", index, op)
            name, step_at = args.pop("name", op), args.pop("at", None)
            if index == 0 and op not in ("connect", "listen"):
                self.doc.error(where, "a probe starts with connect or listen (its socket)")
            if name in [s.name for s in steps]:
                self.doc.error(where, f"a second step named {name!r}: give it `name:` to tell them apart")
            if step_at is not None and step_at < at:
                self.doc.error(where + ("at",), f"at {step_at:g} s is before the probe starts ({at:g} s)")
            if op == "connect":
                self.ref(where + ("to",), args["to"], unused=True)
            steps.append(StepDecl(name, op, args, step_at))
        return ProbeDecl(str(path[1]), spec["host"], at, tuple(steps))

    def fault(self, path: FieldPath, spec: dict[str, Any], programs: dict[str, float]) -> FaultDecl:
        params = {k: v for k, v in spec.items() if k not in ("at", "for", "fault")}
        program = params.get("program")
        if program in self.unchecked:
            pass  # its workload entry has problems of its own
        elif program is not None and program not in programs:
            self.doc.error(path + ("program",), f"unknown program {program!r} (programs: "
                                                f"{', '.join(programs) or 'none'})")
        elif program is not None and programs[program] > spec["at"]:
            self.doc.error(path + ("at",), f"the fault comes at {spec['at']:g} s, before program {program!r} starts "
                                           f"({programs[program]:g} s)")
        decl = FaultDecl(spec["fault"], float(spec["at"]), spec.get("for"), params, self.doc.where(path))
        numbers = {name: FIRST_HOST_NUMBER + i * HOST_NUMBER_STEP for i, name in enumerate(self.hosts)}
        try:
            decl.make(lambda name: _placeholder_host(name, numbers.get(name, 2)), _Placeholder)
        except (ValueError, TypeError) as exc:
            named = next((p for p in params if str(exc).startswith(p)), None)
            self.doc.error(path + ((named,) if named else ()), f"{spec['fault']}: {exc}")
        return decl

    def expectations(self, programs: dict[str, float], probes: list[ProbeDecl], captures: list[CaptureDecl],
                     samplers: list[SampleDecl], duration: float | None) -> list[Expectation]:
        expect = _mapping(self.data.get("expect"))
        steps = [f"{probe.name}.{step.name}" for probe in probes for step in probe.steps]
        found = []
        for section, known in (("programs", list(programs)), ("probes", steps)):
            for subject, fields in _mapping(expect.get(section)).items():
                path = ("expect", section, subject)
                if subject.split(".")[0] in self.unchecked:
                    continue  # its workload entry has problems of its own
                if subject not in known:
                    what = section[:-1] if section == "programs" else "probe step"
                    self.doc.error(path, f"unknown {what} {subject!r} ({section}: {', '.join(known) or 'none'})")
                elif self.clean(path):
                    found += [self.expectation(path + (name,), section, subject, name, value, duration)
                              for name, value in fields.items()]
        for section in ("sockets", "packets"):
            for index, entry in enumerate(expect.get(section) if isinstance(expect.get(section), list) else []):
                path = ("expect", section, index)
                if not self.clean(path):
                    continue
                host, port = self.ref(path + ("host",), entry["host"]), entry.get("port")
                if section == "sockets" and not any(s.host == host and s.port in (None, port) for s in samplers):
                    self.doc.error(path, f"no sampler on {host}{'' if port is None else f' port {port}'}: add one "
                                         f"under `sample:`")
                if section == "packets" and not any(c.host == host for c in captures):
                    self.doc.error(path, f"no capture on {host}: add one under `capture:`")
                found += [self.expectation(path + (name,), section, host, name, value, duration, port,
                                           entry.get("kind")) for name, value in entry.items()
                          if name not in ("host", "port", "kind")]
        return found

    def expectation(self, path: FieldPath, section: str, subject: str, name: str, value: Any,
                    duration: float | None, port: int | None = None, kind: str | None = None) -> Expectation:
        if name in ("stdout", "stderr"):
            try:
                re.compile(value)
            except re.error as exc:
                self.doc.error(path, f"not a regular expression: {exc}")
        elif name == "errno" and value is not None and value not in errno.errorcode.values():
            self.doc.error(path, f"unknown errno name {value!r} (e.g. ETIMEDOUT, ECONNREFUSED; null: success)")
        elif name == "signal" and value is not None and value not in signal.Signals.__members__:
            self.doc.error(path, f"unknown signal name {value!r} (e.g. SIGKILL; null: not killed by a signal)")
        elif name in ("exits_within", "elapsed", "count") and isinstance(value, list) and value[0] > value[1]:
            self.doc.error(path, f"[{value[0]}, {value[1]}]: the lower bound is above the upper one")
        elif name == "still_running_at" and duration is not None and value > duration:
            self.doc.error(path, f"{value:g} s is after the scenario's duration ({duration:g} s)")
        if name in ("exits_within", "elapsed"):
            value = _bounds(value)
        elif name == "count":
            value = (value, value) if isinstance(value, int) else tuple(value)
        return Expectation(section, subject, name, value, self.doc.where(path), port, kind)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _placeholder_host(name: str, number: int) -> Host:
    """A host with a name and an address but nothing behind them: fault constructors check parameters on it."""
    spec = HostSpec(name, number, (), ())
    return Host(spec, f"{_PLACEHOLDER_NET}{number}", None, None)  # type: ignore[arg-type]
