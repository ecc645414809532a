"""What one test produced, gathered as it happens: syscall records per host, faults, captures, socket histories,
programs' launches and exits.

The pytest plugin opens a collection around each test (`collecting()`); the places that produce evidence add
to the open one (an Endpoint's syscall results, a Fault's apply, a capture's end, a sampler's stop, a program's
launch or end, with its output). Outside a collection nothing is kept. The timeline (harness.timeline) is
built from it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .records import SyscallRecord

if TYPE_CHECKING:
    from .programs import ProgramResult
    from .wire import Wire


@dataclass
class Evidence:
    """One test's evidence, in the order it arrived."""

    records: list[tuple[str, SyscallRecord]] = field(default_factory=list)
    faults: list[Any] = field(default_factory=list)
    wires: list[Wire] = field(default_factory=list)
    histories: list[tuple[str, Any]] = field(default_factory=list)
    programs: list[tuple[str, float, str, dict[str, Any]]] = field(default_factory=list)
    outputs: list[ProgramResult] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_records(self, host: str, records: list[SyscallRecord]) -> None:
        with self.lock:
            self.records += [(host, record) for record in records]

    def add_fault(self, fault: Any) -> None:
        with self.lock:
            if not any(known is fault for known in self.faults):
                self.faults.append(fault)

    def add_wire(self, wire: Wire) -> None:
        with self.lock:
            self.wires.append(wire)

    def add_history(self, host: str, history: Any) -> None:
        with self.lock:
            self.histories.append((host, history))

    def add_program(self, host: str, t: float, text: str, data: dict[str, Any]) -> None:
        with self.lock:
            self.programs.append((host, t, text, data))

    def add_output(self, result: ProgramResult) -> None:
        with self.lock:
            self.outputs.append(result)


_current: Evidence | None = None


def current() -> Evidence | None:
    """The collection open now (None outside a test)."""
    return _current


@contextmanager
def collecting() -> Iterator[Evidence]:
    """Collect evidence for the duration of the block (one test)."""
    global _current
    previous, _current = _current, Evidence()
    try:
        yield _current
    finally:
        _current = previous


def note_records(host: str, result: Any) -> None:
    """Keep the syscall records in an agent's result (a record, a send loop, a list of records)."""
    if _current is None:
        return
    if isinstance(result, SyscallRecord):
        _current.add_records(host, [result])
    elif isinstance(result, list) and result and all(isinstance(item, SyscallRecord) for item in result):
        _current.add_records(host, list(result))


def note_fault(fault: Any) -> None:
    """Keep a fault (its record has its apply and heal times) once it is applied."""
    if _current is not None:
        _current.add_fault(fault)


def note_wire(wire: Wire) -> None:
    """Keep a finished capture."""
    if _current is not None:
        _current.add_wire(wire)


def note_history(host: str, history: Any) -> None:
    """Keep a socket-state history from a sampler."""
    if _current is not None:
        _current.add_history(host, history)


def note_program(host: str, t: float | None, text: str, data: dict[str, Any]) -> None:
    """Keep a program's launch, signal or exit (harness.programs) at `t` (CLOCK_MONOTONIC; None: unknown, dropped)."""
    if _current is not None and t is not None:
        _current.add_program(host, t, text, data)


def note_output(result: ProgramResult) -> None:
    """Keep an ended program's result: its exit status and the output it wrote (the bundle's program files)."""
    if _current is not None:
        _current.add_output(result)
