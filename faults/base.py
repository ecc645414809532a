"""The fault protocol: apply, heal (idempotent, always run), describe; a context manager; a record of times."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, Self

from harness import evidence


class Fault(ABC):
    """A change to the test bed and its undo.

    `apply` returns once the fault is in force; `heal` undoes exactly what `apply` did, may be called any
    number of times (also before `apply`, and after a failed `apply`), and never touches what the fault did
    not create. `applied_at` / `healed_at` are CLOCK_MONOTONIC seconds, the clock of the agent's records.
    """

    applied_at: float | None = None
    healed_at: float | None = None

    @abstractmethod
    def _apply(self) -> None:
        """Put the fault in force."""

    @abstractmethod
    def _heal(self) -> None:
        """Undo what `_apply` did; must tolerate a partial or missing apply."""

    @abstractmethod
    def describe(self) -> str:
        """One line: what the fault does, where, and with which parameters."""

    def apply(self) -> Self:
        evidence.note_fault(self)
        try:
            self._apply()
        except BaseException:
            self.heal()
            raise
        self.applied_at = time.monotonic()
        return self

    def heal(self) -> None:
        self._heal()
        if self.applied_at is not None and self.healed_at is None:
            self.healed_at = time.monotonic()

    def record(self) -> dict[str, Any]:
        """What happened, for the timeline and the results."""
        return {"fault": type(self).__name__, "describe": self.describe(),
                "applied_at": self.applied_at, "healed_at": self.healed_at}

    def __enter__(self) -> Self:
        return self.apply()

    def __exit__(self, *exc: object) -> None:
        self.heal()


def run_all(steps: Iterable[Callable[[], object]], error: type[Exception], what: str) -> None:
    """Run every step even when some fail (a heal must undo all it can); then raise the one error as is, or
    several as one `error` saying that `what` failed, with each message."""
    errors = []
    for step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - every step runs first, then all errors are raised
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise error(f"{what} failed {len(errors)} times:\n" + "\n".join(str(exc) for exc in errors)) from errors[0]
