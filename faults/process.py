"""Process faults: signals to a workload process in a host."""

from __future__ import annotations

import signal as _signal
from typing import Protocol

from .base import Fault

_UNDO = {"SIGSTOP": "SIGCONT", "SIGTSTP": "SIGCONT"}


class Signalable(Protocol):
    """A process that can be signalled: a worker endpoint of a host."""

    name: str

    def signal(self, sig: str) -> object: ...


class Signal(Fault):
    """Send `sig` to a process (a host's worker). SIGSTOP is healed by SIGCONT; a kill cannot be undone.

    `Signal(server_proc, "SIGKILL")`: the server process dies; the kernel closes its sockets as a crash would
    (FIN, or RST when unread data remains).
    """

    def __init__(self, process: Signalable, sig: str = "SIGKILL") -> None:
        if sig not in _signal.Signals.__members__:
            raise ValueError(f"signal {sig!r} is not a signal name (e.g. SIGKILL, SIGTERM, SIGSTOP)")
        self.process = process
        self.sig = sig
        self._sent = False

    def _apply(self) -> None:
        self.process.signal(self.sig)
        self._sent = True

    def _heal(self) -> None:
        undo = _UNDO.get(self.sig)
        if undo and self._sent:
            self.process.signal(undo)
            self._sent = False

    def describe(self) -> str:
        undo = _UNDO.get(self.sig)
        return f"{self.sig} to process {self.process.name}" + (f" (healed by {undo})" if undo else " (not undoable)")
