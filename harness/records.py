"""What tests get back from agents: syscall records, send loops, finished commands."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

_FIELDS = ("op", "handle", "pid", "ret", "errno", "errname", "strerror", "t0", "t1", "t0_real", "t1_real")


def _duration(seconds: float) -> str:
    if seconds < 0.001:
        return f"{seconds * 1000:.3f} ms"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.3f} s"


@dataclass(frozen=True)
class SyscallRecord:
    """One syscall as the agent saw it: return value or errno, and both clocks right around it.

    `t0`/`t1` are CLOCK_MONOTONIC seconds (the clock of captures and faults), `t0_real`/`t1_real`
    CLOCK_REALTIME. Op-specific fields (peer, data, select, so_error, ...) are in `extra`.
    """

    op: str
    handle: str | None
    pid: int
    ret: int | None
    errno: int | None
    errname: str | None
    strerror: str | None
    t0: float
    t1: float
    t0_real: float
    t1_real: float
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> SyscallRecord:
        return cls(**{name: record[name] for name in _FIELDS},
                   extra={k: v for k, v in record.items() if k not in _FIELDS})

    @property
    def elapsed(self) -> float:
        """Seconds the call took (t1 - t0)."""
        return self.t1 - self.t0

    @property
    def ok(self) -> bool:
        """True when the call returned without an errno."""
        return self.errno is None

    @property
    def data(self) -> bytes:
        """The bytes a recv returned."""
        if "data" not in self.extra:
            raise ValueError(f"a {self.op} record carries no data")
        return base64.b64decode(self.extra["data"])

    def sub(self, name: str) -> SyscallRecord:
        """A nested record, e.g. `select` or `so_error` of a non-blocking connect."""
        nested = self.extra.get(name)
        if not isinstance(nested, dict):
            raise KeyError(f"a {self.op} record has no nested record {name!r}; it has: {', '.join(self.extra)}")
        return SyscallRecord.from_dict(nested)

    def subs(self, name: str) -> list[SyscallRecord]:
        """Nested record lists, e.g. `setup` (socket, options, bind before a listen) or `options`."""
        return [SyscallRecord.from_dict(r) for r in self.extra.get(name) or []]

    def __str__(self) -> str:
        result = f"-1 {self.errname} ({self.strerror})" if self.errno is not None else str(self.ret)
        return f"{self.op} {self.handle or '-'} -> {result} in {_duration(self.elapsed)}"


class SendLoop(list[SyscallRecord]):
    """The records of a send loop, with why it stopped ("count", "errno", "duration") and bytes accepted."""

    def __init__(self, records: list[SyscallRecord], stopped: str, total: int) -> None:
        super().__init__(records)
        self.stopped = stopped
        self.total = total

    @classmethod
    def from_dict(cls, result: dict[str, Any]) -> SendLoop:
        return cls([SyscallRecord.from_dict(r) for r in result["records"]], result["stopped"], result["total"])

    def __repr__(self) -> str:
        return f"SendLoop({len(self)} sends, stopped by {self.stopped}, {self.total} bytes)"


class CommandFailed(Exception):
    """A command run with check=True exited non-zero, by a signal, or timed out."""


@dataclass(frozen=True)
class CompletedRun:
    """A finished (or, for `wait` with a timeout, still running) command in a host."""

    cmd: list[str] | str
    returncode: int | None
    signal: str | None
    stdout: str
    stderr: str
    timed_out: bool = False

    @classmethod
    def from_dict(cls, cmd: list[str] | str, result: dict[str, Any]) -> CompletedRun:
        return cls(cmd, result["returncode"], result["signal"], result["stdout"], result["stderr"],
                   result["timed_out"])

    def check(self) -> CompletedRun:
        """Raise CommandFailed with the output unless the command exited with status 0."""
        if self.returncode != 0 or self.timed_out:
            how = ("timed out" if self.timed_out else f"was killed by {self.signal}" if self.signal
                   else f"exited with status {self.returncode}")
            raise CommandFailed(f"{self.cmd} {how}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}")
        return self
