"""Process faults: signals to a workload process in a host (a worker, or a command it spawned)."""

from __future__ import annotations

import errno
import signal as _signal
from typing import Any, Protocol

from harness.endpoint import Endpoint
from harness.records import SyscallRecord

from .base import Fault

_UNDO = {"SIGSTOP": "SIGCONT", "SIGTSTP": "SIGCONT"}


class Signalable(Protocol):
    """A process that can be signalled: a worker endpoint of a host, or `Spawned`."""

    name: str

    def signal(self, sig: str) -> SyscallRecord: ...


class Spawned:
    """A command a host's agent started with `host.spawn(cmd, name)`, as a target for `Signal`."""

    def __init__(self, host: Endpoint, name: str) -> None:
        self.host = host
        self.name = name

    def signal(self, sig: str) -> SyscallRecord:
        return self.host.signal(self.name, sig)


class Signal(Fault):
    """Send `sig` to a process. SIGSTOP/SIGTSTP are healed by SIGCONT; the others cannot be undone.

    `Signal(server_proc, "SIGKILL")`: the server process dies; the kernel closes its sockets as a crash would
    (FIN, or RST when unread data remains). The signal goes through a pidfd, so it is in force for the
    target once delivered: at once for SIGKILL, when the target next runs for a stop (microseconds).
    """

    def __init__(self, process: Signalable, sig: str = "SIGKILL") -> None:
        if sig not in _signal.Signals.__members__:
            raise ValueError(f"signal {sig!r} is not a signal name (e.g. SIGKILL, SIGTERM, SIGSTOP, SIGCONT)")
        self.process = process
        self.sig = sig
        self.sent: SyscallRecord | None = None
        self._to_undo = False

    def _apply(self) -> None:
        self.sent = self.process.signal(self.sig)
        if not self.sent.ok:
            raise ProcessLookupError(f"{self.sig} to process {self.process.name} failed: {self.sent}")
        self._to_undo = self.sig in _UNDO

    def _heal(self) -> None:
        if self._to_undo:
            undone = self.process.signal(_UNDO[self.sig])
            # ESRCH: the process ended while stopped (killed meanwhile): nothing is left to continue.
            if not undone.ok and undone.errno != errno.ESRCH:
                raise ProcessLookupError(f"{_UNDO[self.sig]} to process {self.process.name} failed: {undone}")
            self._to_undo = False

    def describe(self) -> str:
        undo = _UNDO.get(self.sig)
        return f"{self.sig} to process {self.process.name}" + (f" (healed by {undo})" if undo else " (not undoable)")

    def record(self) -> dict[str, Any]:
        return {**super().record(), "signal_sent_at": None if self.sent is None else self.sent.t1}
