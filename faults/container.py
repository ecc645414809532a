"""Container faults: a whole host paused, killed, stopped or rebooted (through its backend's driver).

Heal always leaves a running host, so later tests get a working one. A host that was killed, stopped or
restarted comes back with the same address in a new network namespace: no old sockets, the topology's
sysctls (docker-compose.yml) but none of those set at run time, a new agent (the harness reconnects;
workers and handles of before are gone) and a new sysctl sidecar if it had one.

Processes that die while the host's network is up have their sockets closed by the kernel: peers get a
FIN (an RST where unread data remained). Only `Restart(host)` (hard, the default) cuts the network first,
so peers hear nothing until their next segment is answered with RST.
"""

from __future__ import annotations

import json
import time
from abc import abstractmethod
from typing import Any

from harness.backends.base import Host

from .base import Fault
from .link import LinkDown


def _timeout(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 300:
        raise ValueError(f"timeout must be seconds in [0, 300], got {value!r}")
    return float(value)


class _HostFault(Fault):
    """A fault on the whole host; `took` is how long the engine needed to put it in force."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.took: float | None = None
        self._pending_heal = False

    def _apply(self) -> None:
        start = time.monotonic()
        self._pending_heal = True
        self._act()
        self.took = time.monotonic() - start

    @abstractmethod
    def _act(self) -> None:
        """The engine operation that puts the fault in force."""

    def _heal(self) -> None:
        if self._pending_heal:
            state = self.host.state()
            if state == "paused":
                self.host.unpause()
            elif state != "running":
                self.host.start()
            self._pending_heal = False

    def record(self) -> dict[str, Any]:
        return {**super().record(), "took": self.took}


class Pause(_HostFault):
    """Freeze every process of `host` (docker pause, the cgroup freezer); heal: unpause.

    The host's kernel is not paused: it still completes handshakes, ACKs and buffers data up to the receive
    window (then advertises a zero window), so peers see no error, only silence from the application.
    """

    def _act(self) -> None:
        self.host.pause()

    def describe(self) -> str:
        return f"host {self.host.name} paused (processes frozen, kernel still ACKs and buffers; heal: unpause)"


class Kill(_HostFault):
    """SIGKILL every process of `host` at once and tear its namespace down; heal: boot it.

    The processes die with the network up: their sockets are closed (FIN, or RST with unread data) just
    before the namespace goes.
    """

    def _act(self) -> None:
        self.host.kill()

    def describe(self) -> str:
        return f"host {self.host.name} killed (every process SIGKILL, namespace gone; heal: boot, same address)"


class Stop(_HostFault):
    """Shut `host` down (SIGTERM, SIGKILL after `timeout` seconds); heal: boot it."""

    def __init__(self, host: Host, timeout: float = 10.0) -> None:
        super().__init__(host)
        self.timeout = _timeout(timeout)

    def _act(self) -> None:
        self.host.stop(self.timeout)

    def describe(self) -> str:
        return f"host {self.host.name} stopped (SIGTERM, SIGKILL after {self.timeout:g} s; heal: boot, same address)"


class Restart(_HostFault):
    """Reboot `host` with the same address; `apply` returns once the new agent answers.

    Hard (default), a power cycle: the host's links go down first, so nothing it says reaches anyone, then
    every process is killed and the host boots. Its peers' connections stay ESTABLISHED until their next
    segment is answered with RST: ECONNRESET. `graceful=True` is `docker restart`: SIGTERM (SIGKILL after
    `timeout` s) with the network up, so the peers get a FIN first (CLOSE_WAIT) and their next write is
    answered with RST: EPIPE. Run-time sysctls are lost either way; heal only makes sure the host runs.
    """

    def __init__(self, host: Host, timeout: float = 10.0, graceful: bool = False) -> None:
        super().__init__(host)
        self.timeout = _timeout(timeout)
        self.graceful = graceful
        self._cut: list[LinkDown] = []

    def _act(self) -> None:
        if self.graceful:
            self.host.restart(self.timeout)
            return
        links = json.loads(self.host.run(["ip", "-j", "link", "show"], check=True).stdout)
        for link in links:
            if "LOOPBACK" not in link["flags"] and "UP" in link["flags"]:
                self._cut.append(LinkDown(self.host, link["ifname"]).apply())
        self.host.kill()
        self._cut = []  # their namespace is gone: the host boots with its links up
        self.host.start()

    def _heal(self) -> None:
        for cut in reversed(self._cut):  # the kill failed: the old namespace is still there
            cut.heal()
        self._cut = []
        super()._heal()

    def describe(self) -> str:
        how = (f"graceful: SIGTERM, SIGKILL after {self.timeout:g} s, network up" if self.graceful
               else "hard: links down, every process SIGKILL")
        return f"host {self.host.name} rebooted ({how}; boots with the same address)"
