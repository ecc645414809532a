"""Helpers for the agent's unit tests (loopback only)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

LOOPBACK = "127.0.0.1"
T = TypeVar("T")


def free_port() -> int:
    """A loopback TCP port nothing listens on (the kernel's pick, released at once)."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], T], timeout: float = 5.0, what: str = "condition") -> T:
    """Poll `condition` every 20 ms until it is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout} s (last value: {value!r})")
        time.sleep(0.02)


def unshare_argv(*prefix: str) -> list[str]:
    """`unshare --net` (plus `prefix`), or skip when this machine does not allow new namespaces."""
    probe = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create namespaces here (unshare --net --mount: {probe.stderr.strip()})")
    return ["unshare", "--net", "--mount", *prefix]
