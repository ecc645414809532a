"""netem on a host's interface: delay, jitter, loss, duplication, corruption, reordering, rate limit.

Applied in the host's own namespace by its agent (pyroute2), in a qdisc the fault owns: egress as the
interface's root qdisc, ingress as the root of an ifb device the interface's ingress is redirected to. Heal
deletes only that. A kernel without sch_netem (or ifb, for ingress) makes `apply` raise NetemUnavailable
with the exact reason, which the pytest plugin reports as a skip: never a silent no-op, never a fake. Where
the test allows it (`fallback=True`), the documented fallback (faults/netem_fallback.py) runs instead, labelled
as such in `describe()` and `record()`.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import pytest

from harness.agent.netem import GEModel, NetemParamError, NetemParams, parse_rate
from harness.backends.base import Host
from harness.errors import MissingCapability

from .base import Fault
from .link import check_iface
from .netem_fallback import NetemFallback, label, unsupported

DIRECTIONS = ("egress", "ingress")
_REASONS = {
    "sch_netem": "kernel lacks sch_netem: modprobe sch_netem or run it under the kernel matrix",
    "ifb": "kernel lacks ifb (needed for ingress netem): modprobe ifb or run it under the kernel matrix",
    "ingress_redirect": "kernel lacks ingress redirection (sch_ingress, cls_u32, act_mirred; needed for ingress "
                        "netem): modprobe them or run it under the kernel matrix",
}
_NEEDS = {"egress": ("sch_netem",), "ingress": ("sch_netem", "ifb", "ingress_redirect")}
_features: weakref.WeakKeyDictionary[Host, dict[str, str | None]] = weakref.WeakKeyDictionary()
_features_lock = threading.Lock()


class NetemUnavailable(MissingCapability):
    """The host's kernel cannot run a netem fault; `reason` says what is missing and what to do."""


def tc_features(host: Host) -> dict[str, str | None]:
    """The host kernel's tc features ({"sch_netem": None or the kernel's error, ...}), probed once per host."""
    with _features_lock:
        if host not in _features:
            _features[host] = host.tc_features()
        return _features[host]


def _missing_feature(host: Host, direction: str) -> str | None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    features = tc_features(host)
    return next((name for name in _NEEDS[direction] if features[name] is not None), None)


def netem_missing(host: Host, direction: str = "egress") -> str | None:
    """Why a netem fault in `direction` cannot run on `host` (the reason NetemUnavailable carries), or None."""
    feature = _missing_feature(host, direction)
    return None if feature is None else _REASONS[feature]


def require_netem(host: Host, direction: str = "egress") -> None:
    """Skip the calling test with the exact reason if `host` cannot run netem in `direction`."""
    reason = netem_missing(host, direction)
    if reason is not None:
        pytest.skip(reason)


class Netem(Fault):
    """A netem qdisc on `iface` of `host`, in `direction` ("egress", or "ingress" through an ifb).

    Parameters in tc's units (milliseconds, percent; `rate` in bit/s or like "1mbit"; `limit` in packets):
    `Netem(server, delay_ms=100, jitter_ms=10, correlation=25, loss_pct=1)`. They are checked when the
    fault is made; `seed` needs Linux >= 6.3 (older kernels ignore it).

    `fallback`: False (netem or a skip), True (netem, or where the kernel lacks it the fallback of
    docs/netem-fallback.md: loss by nft numgen, delay/jitter/reorder/duplicate by an NFQUEUE delay line), or
    "always" (the fallback even where netem exists: to measure it). Parameters the fallback cannot do make
    "always" fail here, and True skip (NetemUnavailable naming them) where netem is missing.
    `mechanism` says what is in force: "netem", "nft-numgen", "nfqueue-delayline" or both joined by "+".
    """

    def __init__(self, host: Host, iface: str = "eth0", *, direction: str = "egress", delay_ms: float = 0,
                 jitter_ms: float = 0, distribution: str | None = None, correlation: float = 0, loss_pct: float = 0,
                 loss_correlation: float = 0, gemodel: GEModel | None = None, duplicate_pct: float = 0,
                 corrupt_pct: float = 0, reorder_pct: float = 0, rate: int | str | None = None, limit: int = 1000,
                 seed: int | None = None, fallback: bool | str = False) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        if gemodel is not None and not isinstance(gemodel, GEModel):
            raise ValueError(f"gemodel must be a GEModel(p, r, loss_bad, loss_good), got {gemodel!r}")
        self.host = host
        self.iface = check_iface(iface)
        self.direction = direction
        self.params = NetemParams(
            delay_ms=delay_ms, jitter_ms=jitter_ms, distribution=distribution, correlation=correlation,
            loss_pct=loss_pct, loss_correlation=loss_correlation, gemodel=gemodel, duplicate_pct=duplicate_pct,
            corrupt_pct=corrupt_pct, reorder_pct=reorder_pct,
            rate_bit=None if rate is None else parse_rate(rate), limit=limit, seed=seed)
        if not (isinstance(fallback, bool) or fallback == "always"):
            raise ValueError(f"fallback must be False, True or 'always', got {fallback!r}")
        self.fallback = fallback
        self.fallback_cannot = unsupported(self.params) if fallback else []
        if fallback == "always" and self.fallback_cannot:
            raise NetemParamError(f"fallback='always': the netem fallback cannot do "
                                  f"{', '.join(self.fallback_cannot)} (see docs/netem-fallback.md)")
        self.added: dict[str, Any] | None = None
        self.substitute: NetemFallback | None = None
        self.mechanism: str | None = None

    def prepare(self) -> None:
        """Probe the host's kernel (once per host) before a schedule starts its clock."""
        if self.fallback != "always":
            _missing_feature(self.host, self.direction)

    def _apply(self) -> None:
        feature = None if self.fallback == "always" else _missing_feature(self.host, self.direction)
        if feature is None and self.fallback != "always":
            self.mechanism = "netem"
            self.added = self.host.netem_add(self.iface, self.params.to_dict(), self.direction)
            return
        if feature is not None and not self.fallback:
            raise NetemUnavailable(feature, _REASONS[feature])
        if feature is not None and self.fallback_cannot:
            raise NetemUnavailable(feature, f"{_REASONS[feature]}; its fallback (allowed here) cannot do "
                                            f"{', '.join(self.fallback_cannot)}")
        self.substitute = NetemFallback(self.host, self.iface, self.direction, self.params)
        self.mechanism = self.substitute.mechanism
        self.substitute.apply()

    def _heal(self) -> None:
        if self.added is not None:
            self.host.netem_del(self.iface, self.added["handle"], self.added["ifb"], self.added.get("txqlen"))
            self.added = None
        if self.substitute is not None:
            self.substitute.heal()

    def describe(self) -> str:
        if self.mechanism == "netem" or not self.fallback:
            how = ""
        elif self.mechanism is None and self.fallback is True:
            how = " (netem, or where the kernel lacks it the fallback)"
        else:
            how = f" ({label(self.params)})"
        return f"netem on {self.iface} of {self.host.name} ({self.direction}): {self.params.describe()}{how}"

    def record(self) -> dict[str, Any]:
        fallback = None if self.substitute is None else self.substitute.record()
        return {**super().record(), "mechanism": self.mechanism, "fallback": fallback}
