"""Syscall records: both clocks read right around one call, its return value or its errno."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def errname(num: int) -> str:
    """The symbolic name of an errno value ("ECONNREFUSED"), or "E<num>" if the table lacks it."""
    return errno.errorcode.get(num, f"E{num}")


def clocks() -> dict[str, float]:
    """CLOCK_MONOTONIC and CLOCK_REALTIME read back to back."""
    return {"mono": time.clock_gettime(time.CLOCK_MONOTONIC), "real": time.clock_gettime(time.CLOCK_REALTIME)}


def default_ret(value: Any) -> int:
    """A syscall's return value from what Python returns: ints as they are, byte strings by length, None as 0."""
    if isinstance(value, int):
        return value
    if isinstance(value, bytes):
        return len(value)
    if value is None:
        return 0
    raise TypeError(f"no syscall return value for a {type(value).__name__}; pass ret=")


def timed(
    op: str, handle: str | None, call: Callable[[], T], ret: Callable[[T], int] = default_ret
) -> tuple[dict[str, Any], T | None]:
    """Run `call` between clock reads; return its record and its value (None if it failed with an errno).

    The monotonic reads are the innermost, so `t1 - t0` is as close to the syscall as Python allows.
    """
    t0_real = time.clock_gettime(time.CLOCK_REALTIME)
    t0 = time.clock_gettime(time.CLOCK_MONOTONIC)
    try:
        value = call()
    except OSError as exc:
        t1 = time.clock_gettime(time.CLOCK_MONOTONIC)
        t1_real = time.clock_gettime(time.CLOCK_REALTIME)
        if exc.errno is None:
            raise
        return _record(op, handle, None, exc.errno, t0, t1, t0_real, t1_real), None
    t1 = time.clock_gettime(time.CLOCK_MONOTONIC)
    t1_real = time.clock_gettime(time.CLOCK_REALTIME)
    return _record(op, handle, ret(value), None, t0, t1, t0_real, t1_real), value


def _record(
    op: str, handle: str | None, ret: int | None, err: int | None,
    t0: float, t1: float, t0_real: float, t1_real: float,
) -> dict[str, Any]:
    return {
        "op": op, "handle": handle, "pid": os.getpid(), "ret": ret,
        "errno": err, "errname": errname(err) if err is not None else None,
        "strerror": os.strerror(err) if err is not None else None,
        "t0": t0, "t1": t1, "t0_real": t0_real, "t1_real": t1_real,
    }
