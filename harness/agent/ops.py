"""The state of one agent process and the table of ops it serves."""

from __future__ import annotations

import os
import platform
import re
import signal
import sys
from collections.abc import Callable
from typing import Any

from . import delayline, link, sysctl, tc
from .capture import Captures
from .errors import BadRequest, ProcessDied
from .handles import HandleTable
from .procs import Children, run, signal_marked
from .records import clocks
from .sampler import Samplers
from .sockets import SocketOps
from .workers import SIGPIPE_MODES, Worker

Op = Callable[..., dict[str, Any]]


def _pyroute2_version() -> str | None:
    """From the name of its installed metadata: importing pyroute2 (or importlib.metadata) takes seconds."""
    for entry in sys.path:
        if os.path.isdir(entry):
            for name in os.listdir(entry):
                found = re.fullmatch(r"pyroute2-([^-]+?)(?:-py[\d.]+)?\.(?:dist|egg)-info", name)
                if found:
                    return found.group(1)
    return None


class Agent:
    """Sockets, children (commands and workers) and captures of this process."""

    def __init__(self, name: str, worker: bool) -> None:
        self.name = name
        self.worker = worker
        self.sockets = SocketOps(HandleTable(prefix=f"{name}:" if worker else ""))
        self.children = Children()
        self.captures = Captures()
        self.samplers = Samplers(self.sockets.table.inodes)

    def ops(self) -> dict[str, Op]:
        s, c = self.sockets, self.children
        return {
            "info": self.info, "reset": self.reset,
            "socket": s.socket, "setsockopt": s.setsockopt, "getsockopt": s.getsockopt, "bind": s.bind,
            "listen": s.listen, "accept": s.accept, "accepted": s.accepted, "connect": s.connect,
            "select": s.select, "send": s.send, "recv": s.recv, "shutdown": s.shutdown, "close": s.close,
            "sockets": self.snapshot,
            "spawn": c.spawn, "spawn_worker": self.spawn_worker, "signal": c.signal, "wait": c.wait, "run": run,
            "output": c.output, "signal_marked": signal_marked,
            "sysctl_get": sysctl.sysctl_get, "sysctl_set": sysctl.sysctl_set,
            "capture_start": self.captures.start, "capture_stop": self.captures.stop,
            "sampler_start": self.samplers.start, "sampler_stop": self.samplers.stop,
            "link_show": link.link_show, "link_set": link.link_set,
            "netem_add": tc.netem_add, "netem_del": tc.netem_del, "tc_features": tc.tc_features,
            "delayline_start": self.delayline_start,
        }

    def worker_named(self, name: str) -> Worker:
        child = self.children.get(name)
        if not isinstance(child, Worker):
            raise BadRequest(f"process {name!r} is a command, not a worker (argument 'proc')")
        return child

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name, "worker": self.worker, "pid": os.getpid(), "kernel": platform.release(),
            "python": platform.python_version(), "pyroute2": _pyroute2_version(),
            "sigpipe": "ignore" if signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN else "default",
            "clock": clocks(),
        }

    def snapshot(self, proto: str = "tcp", port: int | None = None, sport: int | None = None,
                 dport: int | None = None, states: list[str] | None = None) -> dict[str, Any]:
        """sock_diag snapshot of the namespace; entries of this process's sockets carry their handle."""
        from . import diag  # pyroute2 takes seconds to import on small machines: only snapshots pay for it

        return diag.snapshot(proto, port, sport, dport, states, self.sockets.table.inodes())

    def spawn_worker(self, name: str, sigpipe: str = "ignore") -> dict[str, Any]:
        """Start a child agent holding its own sockets; answers once it answered `info`."""
        if sigpipe not in SIGPIPE_MODES:
            raise BadRequest(f"argument 'sigpipe' must be one of {', '.join(SIGPIPE_MODES)}, not {sigpipe!r}")
        self.children.reserve(name)
        worker = Worker(name, sigpipe)
        self.children.add(worker)
        try:
            info = worker.ready()
        except ProcessDied:
            self.children.discard(name)
            raise
        return {"name": name, "pid": worker.popen.pid, "sigpipe": sigpipe, "info": info}

    def delayline_start(self, name: str, params: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Start the NFQUEUE delay line (delayline.py) as child `name`; answers once its queue is bound."""
        return delayline.start(self.children, name, params, timeout)

    def reset(self) -> dict[str, Any]:
        """Close every handle, kill workers and spawned processes, stop captures and samplers."""
        return {"captures": self.captures.stop_all(), "samplers": self.samplers.stop_all(),
                "processes": self.children.stop_all(),
                **self.sockets.reset()}
