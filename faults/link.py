"""Link faults: a host's interface set down and back up, once or flapping (pyroute2, in the host's agent).

While eth0 is down the host has no route to the test network: its connect() fails at once with ENETUNREACH,
its established connections keep retransmitting into nothing, and packets to it are dropped. Heal sets the
link up and re-adds the addresses and routes it had (the kernel re-creates only those it derives from
addresses, not the default route).
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

from harness.backends.base import Host

from .base import Fault

IFNAMSIZ = 16


def check_iface(iface: object) -> str:
    """An interface name as the kernel accepts it (1-15 characters, no slash, colon or whitespace)."""
    if not isinstance(iface, str) or not re.fullmatch(r"[^/:\s]{1,%d}" % (IFNAMSIZ - 1), iface):
        raise ValueError(f"iface must be an interface name of 1 to {IFNAMSIZ - 1} characters without '/', ':' "
                         f"or whitespace, got {iface!r}")
    return iface


class LinkDown(Fault):
    """`iface` of `host` down until heal; heal sets it up and restores its missing addresses and routes.

    Refuses a link that is down already (someone else's state): it would not know what to restore.
    """

    def __init__(self, host: Host, iface: str = "eth0") -> None:
        self.host = host
        self.iface = check_iface(iface)
        self.before: dict[str, Any] | None = None
        self.transitions: list[dict[str, Any]] = []
        self._owned = False

    def prepare(self) -> dict[str, Any]:
        """Read the link's state now (fails for an unknown interface); warms the agent's netlink code."""
        return self.host.link_show(self.iface)

    def _set(self, state: str) -> dict[str, Any]:
        result = self.host.link_set(self.iface, state, restore=self.before if state == "up" else None)
        self.transitions.append({"state": state, "t0": result["t0"], "t1": result["t1"],
                                 "restored": result["restored"]})
        return result

    def _apply(self) -> None:
        result = self.host.link_set(self.iface, "down")
        if not result["before"]["up"]:
            raise RuntimeError(f"{self.iface} of {self.host.name} was down already: it is not this fault's to "
                               f"bring up (another fault?)")
        self.before, self._owned = result["before"], True
        self.transitions.append({"state": "down", "t0": result["t0"], "t1": result["t1"], "restored": None})

    def _heal(self) -> None:
        if self._owned:
            self._set("up")
            self._owned = False

    def describe(self) -> str:
        return f"link {self.iface} of {self.host.name} down (heal: up, addresses and routes restored)"

    def record(self) -> dict[str, Any]:
        return {**super().record(), "transitions": self.transitions}


class LinkFlap(LinkDown):
    """`iface` of `host` down for `down_ms`, up for `up_ms`, `count` times, then up.

    `apply` returns once the link is down the first time; the rest runs in a thread on a fixed schedule
    from that moment (transition i at i * (down_ms + up_ms), so delays do not add up). `wait` blocks
    until the last up; heal stops the flapping and leaves the link up with its addresses and routes.
    """

    def __init__(self, host: Host, down_ms: float, up_ms: float, count: int, iface: str = "eth0") -> None:
        super().__init__(host, iface)
        for name, value in (("down_ms", down_ms), ("up_ms", up_ms)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 600_000:
                raise ValueError(f"{name} must be a number of milliseconds in (0, 600000], got {value!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be an int >= 1, got {count!r}")
        self.down_ms, self.up_ms, self.count = down_ms, up_ms, count
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _apply(self) -> None:
        super()._apply()
        start = self.transitions[0]["t1"]
        self._thread = threading.Thread(target=self._flap, args=(start,), name=f"flap-{self.host.name}", daemon=True)
        self._thread.start()

    def _flap(self, start: float) -> None:
        period = (self.down_ms + self.up_ms) / 1000
        try:
            for i in range(self.count):
                if self._stop.wait(max(0.0, start + i * period + self.down_ms / 1000 - time.monotonic())):
                    return
                self._set("up")
                if i == self.count - 1 or self._stop.wait(max(0.0, start + (i + 1) * period - time.monotonic())):
                    return
                self._set("down")
        except BaseException as exc:  # noqa: BLE001 - re-raised by heal, after the link is restored
            self._error = exc

    def wait(self, timeout: float | None = None) -> None:
        """Block until the flapping ended (the link is up again for good)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _heal(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._owned:
            if self.transitions[-1]["state"] == "down":
                self._set("up")
            self._owned = False
        error, self._error = self._error, None
        if error is not None:
            raise error

    def describe(self) -> str:
        return (f"link {self.iface} of {self.host.name} flapping: down {self.down_ms:g} ms, up {self.up_ms:g} ms, "
                f"{self.count} times (heal: up, addresses and routes restored)")
