"""Run identity and the labels every created resource carries, so a reaper can find leftovers."""

from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import dataclass

LABEL_RUN = "netfault.run"
LABEL_PID = "netfault.pid"
LABEL_PID_START = "netfault.pid-start"
LABEL_MACHINE = "netfault.machine"
LABEL_ROLE = "netfault.role"
RUN_ID_ENV = "NETFAULT_RUN_ID"


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a random suffix."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def process_start_time(pid: int) -> str | None:
    """The start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat), or None if it is gone.

    Together with the pid it identifies a process even after the pid is reused.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@dataclass(frozen=True)
class RunInfo:
    """Who owns resources: the run id and the process that must be alive for them to be kept."""

    run_id: str
    pid: int
    pid_start: str
    machine: str

    @classmethod
    def current(cls, run_id: str | None = None) -> RunInfo:
        """This process's identity; the run id comes from the argument, $NETFAULT_RUN_ID, or is new."""
        pid = os.getpid()
        return cls(
            run_id=run_id or os.environ.get(RUN_ID_ENV) or new_run_id(),
            pid=pid,
            pid_start=process_start_time(pid) or "",
            machine=socket.gethostname(),
        )

    def labels(self, role: str) -> dict[str, str]:
        return {
            LABEL_RUN: self.run_id,
            LABEL_PID: str(self.pid),
            LABEL_PID_START: self.pid_start,
            LABEL_MACHINE: self.machine,
            LABEL_ROLE: role,
        }


def owner_alive(labels: dict[str, str], machine: str | None = None) -> bool | None:
    """Whether the process that created a labelled resource still runs.

    None when that cannot be known here (the resource was made on another machine).
    """
    if labels.get(LABEL_MACHINE) != (machine or socket.gethostname()):
        return None
    try:
        pid = int(labels.get(LABEL_PID, ""))
    except ValueError:
        return False
    start = process_start_time(pid)
    return start is not None and start == labels.get(LABEL_PID_START, start)
