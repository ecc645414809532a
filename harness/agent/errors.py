"""Protocol errors the agent answers with (besides OSError, which it reports with its errno)."""

from __future__ import annotations


class BadRequest(Exception):
    """An unknown op, argument, handle or value; the message names the argument and the allowed values."""


class ProcessDied(Exception):
    """The worker process a request went to died before answering."""

    def __init__(self, message: str, returncode: int | None, signal: str | None) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.signal = signal
