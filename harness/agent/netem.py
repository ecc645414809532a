"""netem parameters: validation (shared by the fault library and the agent) and the kernel's TCA_OPTIONS bytes.

pyroute2 0.7.2's netem plugin cannot express loss models, delay distributions, the PRNG seed, and it sends
`duplicate` as a raw 32-bit number instead of a probability; so the options are encoded here, exactly as
iproute2's `tc qdisc add ... netem` encodes them (tests/unit/test_netem_encoding.py compares the two), and
sent with pyroute2. Units follow tc: milliseconds, percent, bits per second, packets.
"""

from __future__ import annotations

import glob
import math
import os
import re
import struct
from dataclasses import asdict, dataclass
from typing import Any

# struct tc_netem_qopt and the TCA_NETEM_* attribute types of include/uapi/linux/pkt_sched.h.
TCA_NETEM_CORR, TCA_NETEM_DELAY_DIST, TCA_NETEM_REORDER, TCA_NETEM_CORRUPT = 1, 2, 3, 4
TCA_NETEM_LOSS, TCA_NETEM_RATE, TCA_NETEM_PRNG_SEED = 5, 6, 14
NETEM_LOSS_GE = 2
NLA_F_NESTED = 0x8000
U32_MAX = 0xFFFFFFFF
U64_MAX = 0xFFFFFFFFFFFFFFFF
# The 32-bit latency field counts psched ticks (64 ns): 274 s at most. A test needs far less; 60 s keeps the
# encoding identical to tc's (tc switches to TCA_NETEM_LATENCY64 only beyond the 32-bit field).
MAX_DELAY_MS = 60_000.0
MAX_RATE_BIT = U32_MAX * 8
DISTRIBUTIONS = ("normal", "pareto", "paretonormal", "experimental")
# Where iproute2 installs its distribution tables (TC_LIB_DIR overrides, as for tc).
TC_LIB_DIRS = ("/usr/lib/*/tc", "/usr/lib/tc", "/usr/lib64/tc", "/usr/local/lib/tc")
MAX_DIST_ENTRIES = 16 * 1024
_RATE_UNITS = {"bit": 1, "kbit": 1000, "mbit": 1000**2, "gbit": 1000**3}


class NetemParamError(ValueError):
    """A netem parameter out of range or inconsistent with another; the message names it and the range."""


def _percent(name: str, value: float) -> None:
    _number(name, value)
    if not 0 <= value <= 100:
        raise NetemParamError(f"{name} must be between 0 and 100 (percent), got {value!r}")


def _number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise NetemParamError(f"{name} must be a finite number, got {value!r}")


def parse_rate(rate: int | str) -> int:
    """A rate in bits per second from an int or a tc-style string ("100kbit", "1mbit", "1.5gbit")."""
    if isinstance(rate, str):
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit)\s*", rate.lower())
        if found is None:
            raise NetemParamError(f"rate must be bits per second (an int) or a string like '1mbit' "
                                  f"(units: {', '.join(_RATE_UNITS)}), got {rate!r}")
        bits = round(float(found.group(1)) * _RATE_UNITS[found.group(2)])
    elif isinstance(rate, int) and not isinstance(rate, bool):
        bits = rate
    else:
        raise NetemParamError(f"rate must be an int (bits per second) or a string like '1mbit', got {rate!r}")
    if not 8 <= bits <= MAX_RATE_BIT:
        raise NetemParamError(f"rate must be between 8 bit/s and {MAX_RATE_BIT} bit/s, got {rate!r}")
    return bits


@dataclass(frozen=True)
class GEModel:
    """Gilbert-Elliott loss, in tc's terms (`loss gemodel p r 1-h 1-k`), all in percent.

    `p`: good -> bad transition; `r`: bad -> good (default 100 - p); `loss_bad`: loss probability in the bad
    state (1-h, default 100); `loss_good`: loss probability in the good state (1-k, default 0).
    """

    p: float
    r: float | None = None
    loss_bad: float = 100.0
    loss_good: float = 0.0

    def __post_init__(self) -> None:
        for name in ("p", "loss_bad", "loss_good") + (("r",) if self.r is not None else ()):
            _percent(f"gemodel.{name}", getattr(self, name))

    @property
    def r_or_default(self) -> float:
        return 100.0 - self.p if self.r is None else self.r


@dataclass(frozen=True)
class NetemParams:
    """What a netem qdisc does to the packets it sees; invalid combinations raise NetemParamError."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    distribution: str | None = None
    correlation: float = 0.0
    loss_pct: float = 0.0
    loss_correlation: float = 0.0
    gemodel: GEModel | None = None
    duplicate_pct: float = 0.0
    corrupt_pct: float = 0.0
    reorder_pct: float = 0.0
    rate_bit: int | None = None
    limit: int = 1000
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("delay_ms", "jitter_ms"):
            value = getattr(self, name)
            _number(name, value)
            if not 0 <= value <= MAX_DELAY_MS:
                raise NetemParamError(f"{name} must be between 0 and {MAX_DELAY_MS:g} ms, got {value!r}")
        for name in ("correlation", "loss_pct", "loss_correlation", "duplicate_pct", "corrupt_pct", "reorder_pct"):
            _percent(name, getattr(self, name))
        if self.distribution is not None and self.distribution not in DISTRIBUTIONS:
            raise NetemParamError(f"distribution must be one of {', '.join(DISTRIBUTIONS)} or None (uniform), "
                                  f"got {self.distribution!r}")
        if (self.distribution is not None or self.correlation) and not (self.delay_ms and self.jitter_ms):
            what = "distribution" if self.distribution is not None else "correlation"
            raise NetemParamError(f"{what} shapes the jitter: it needs delay_ms > 0 and jitter_ms > 0")
        if self.loss_correlation and not self.loss_pct:
            raise NetemParamError("loss_correlation needs loss_pct > 0")
        if self.gemodel is not None and (self.loss_pct or self.loss_correlation):
            raise NetemParamError("gemodel and loss_pct/loss_correlation are two loss models: give one")
        if self.reorder_pct and not self.delay_ms:
            raise NetemParamError("reorder_pct needs delay_ms > 0: netem reorders by sending some packets "
                                  "at once while delaying the others")
        if self.rate_bit is not None and not (
                isinstance(self.rate_bit, int) and 8 <= self.rate_bit <= MAX_RATE_BIT):
            raise NetemParamError(f"rate must be between 8 bit/s and {MAX_RATE_BIT} bit/s, got {self.rate_bit!r}")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or not 1 <= self.limit <= U32_MAX:
            raise NetemParamError(f"limit must be an int between 1 and {U32_MAX} (packets), got {self.limit!r}")
        if self.seed is not None and (
                isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= U64_MAX):
            raise NetemParamError(f"seed must be an int between 0 and 2**64-1, got {self.seed!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> NetemParams:
        """From `to_dict`'s output (the agent protocol's form)."""
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            known = ", ".join(cls.__dataclass_fields__)
            raise NetemParamError(f"unknown netem parameter {unknown[0]!r}; known: {known}")
        args = dict(values)
        if isinstance(args.get("gemodel"), dict):
            unknown = sorted(set(args["gemodel"]) - set(GEModel.__dataclass_fields__))
            if unknown:
                raise NetemParamError(f"unknown gemodel parameter {unknown[0]!r}; known: p, r, loss_bad, loss_good")
            args["gemodel"] = GEModel(**args["gemodel"])
        return cls(**args)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """The parameters in tc's words, e.g. "delay 100ms 10ms 25% loss 1%"."""
        parts = []
        if self.delay_ms:
            parts.append(f"delay {self.delay_ms:g}ms" + (f" {self.jitter_ms:g}ms" if self.jitter_ms else "")
                         + (f" {self.correlation:g}%" if self.correlation else "")
                         + (f" distribution {self.distribution}" if self.distribution else ""))
        if self.loss_pct:
            parts.append(f"loss {self.loss_pct:g}%" + (f" {self.loss_correlation:g}%" if self.loss_correlation else ""))
        if self.gemodel is not None:
            ge = self.gemodel
            parts.append(f"loss gemodel {ge.p:g}% {ge.r_or_default:g}% {ge.loss_bad:g}% {ge.loss_good:g}%")
        for name, word in (("duplicate_pct", "duplicate"), ("corrupt_pct", "corrupt"), ("reorder_pct", "reorder")):
            if getattr(self, name):
                parts.append(f"{word} {getattr(self, name):g}%")
        if self.rate_bit is not None:
            parts.append(f"rate {self.rate_bit}bit")
        if self.limit != 1000:
            parts.append(f"limit {self.limit}")
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        return " ".join(parts) or "no impairment"


def probability(percent: float) -> int:
    """A percentage as the kernel's 32-bit probability, rounded as tc rounds it."""
    return min(U32_MAX, round(percent / 100 * U32_MAX))


def tick_in_usec(psched: str) -> float:
    """psched ticks per microsecond from /proc/net/psched's text, as iproute2's tc_core_init computes it."""
    t2us, us2t, clock_res = (int(word, 16) for word in psched.split()[:3])
    if clock_res == 1_000_000_000:
        t2us = us2t
    return t2us / us2t * (clock_res / 1_000_000)


def _ticks(ms: float, per_usec: float) -> int:
    return int(round(ms * 1000) * per_usec)


def _attr(kind: int, payload: bytes) -> bytes:
    header = struct.pack("<HH", 4 + len(payload), kind)
    return header + payload + b"\0" * (-len(payload) % 4)


def encode_options(params: NetemParams, per_usec: float, distribution: list[int] | None = None) -> bytes:
    """The payload of TCA_OPTIONS for `tc qdisc add ... netem <params>`: tc_netem_qopt, then attributes.

    `distribution` is the table of `params.distribution` (see `distribution_table`).
    """
    if (distribution is None) != (params.distribution is None):
        raise ValueError("pass the distribution table exactly when params.distribution is set")
    gap = 1 if params.reorder_pct else 0
    out = struct.pack("<6I", _ticks(params.delay_ms, per_usec), params.limit, probability(params.loss_pct), gap,
                      probability(params.duplicate_pct), _ticks(params.jitter_ms, per_usec))
    if params.correlation or params.loss_correlation:
        out += _attr(TCA_NETEM_CORR, struct.pack("<3I", probability(params.correlation),
                                                 probability(params.loss_correlation), 0))
    if params.reorder_pct:
        out += _attr(TCA_NETEM_REORDER, struct.pack("<2I", probability(params.reorder_pct), 0))
    if params.corrupt_pct:
        out += _attr(TCA_NETEM_CORRUPT, struct.pack("<2I", probability(params.corrupt_pct), 0))
    if params.gemodel is not None:
        ge = params.gemodel
        model = struct.pack("<4I", probability(ge.p), probability(ge.r_or_default),
                            U32_MAX - probability(ge.loss_bad), probability(ge.loss_good))
        out += _attr(TCA_NETEM_LOSS | NLA_F_NESTED, _attr(NETEM_LOSS_GE, model))
    if params.rate_bit is not None:
        out += _attr(TCA_NETEM_RATE, struct.pack("<IiIi", params.rate_bit // 8, 0, 0, 0))
    if params.seed is not None:
        out += _attr(TCA_NETEM_PRNG_SEED, struct.pack("<Q", params.seed))
    if distribution is not None:
        out += _attr(TCA_NETEM_DELAY_DIST, struct.pack(f"<{len(distribution)}h", *distribution))
    return out


def tc_lib_dir() -> str | None:
    """The directory of iproute2's distribution tables, or None if iproute2 is not installed."""
    candidates = [os.environ["TC_LIB_DIR"]] if os.environ.get("TC_LIB_DIR") else []
    for pattern in TC_LIB_DIRS:
        candidates += sorted(glob.glob(pattern))
    return next((d for d in candidates if os.path.isfile(os.path.join(d, "normal.dist"))), None)


def distribution_table(name: str) -> list[int]:
    """iproute2's table `<name>.dist` (what tc sends for `distribution <name>`)."""
    directory = tc_lib_dir()
    if directory is None:
        raise FileNotFoundError(f"no iproute2 distribution tables (normal.dist) in {', '.join(TC_LIB_DIRS)}: "
                                "install iproute2 or set TC_LIB_DIR")
    table: list[int] = []
    with open(os.path.join(directory, f"{name}.dist")) as file:
        for line in file:
            if not line.startswith("#"):
                table += [int(word) for word in line.split()]
    if not 0 < len(table) <= MAX_DIST_ENTRIES:
        raise ValueError(f"{directory}/{name}.dist has {len(table)} entries (1..{MAX_DIST_ENTRIES} expected)")
    return table
