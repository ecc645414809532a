"""Socket-state samplers: a thread per sampler dumps sock_diag at a fixed rate and records what changed.

A socket is known by its 4-tuple and the kernel's socket cookie: one socket keeps its cookie for its whole
life (through accept, close, and into TIME_WAIT, which inherits it), while its inode is 0 until accept() and
again once closed, so the inode cannot tell sockets apart; a reused 4-tuple is a new cookie. Each sample
records, per socket, its appearance ("new"), each change of state ("state"), optionally each change of the
queues or of tcp_info's retransmits, probes, backoff, rto_us or unacked ("fields"), and its disappearance
("gone", state "GONE"); only the sockets that changed are decoded in full. Every entry carries the dump's
times: `t` (CLOCK_MONOTONIC before the dump), `t_end` (after it), `t_real` (CLOCK_REALTIME before it) and
`prev_t`, the previous sample's `t`: the change happened after `prev_t` and before `t_end` (`prev_t` is null
in the first sample: the socket was there when sampling began).
"""

from __future__ import annotations

import itertools
import math
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from .errors import BadRequest
from .records import clocks, errname
from .sockdiag import Dumper, Message, Query

MIN_PERIOD_MS = 1.0
KEY = ("proto", "family", "src", "sport", "dst", "dport", "cookie")


class FixedRate:
    """Ticks at `start + k * period`, computed from k and never accumulated, so the schedule does not drift.

    `advance(now)` moves to the first tick after `now`: ticks that passed while the previous sample ran (or
    while the thread waited for a CPU) are skipped and counted in `missed`.
    """

    def __init__(self, start: float, period: float) -> None:
        self.start = start
        self.period = period
        self.tick = 0
        self.missed = 0

    @property
    def due(self) -> float:
        return self.start + self.tick * self.period

    def advance(self, now: float) -> float:
        following = max(self.tick + 1, math.floor((now - self.start) / self.period) + 1)
        self.missed += following - self.tick - 1
        self.tick = following
        return self.due


class Sampler:
    """Calls `dump` (sockdiag.Dumper's) every `period` seconds in a thread of its own."""

    def __init__(self, dump: Callable[[], list[Message]], period: float, fields: bool,
                 handles: Callable[[], Mapping[int, str]]) -> None:
        self._dump = dump
        self._fields = fields
        self._handles = handles
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._last: dict[bytes, tuple[str, bytes | None, dict[str, Any]]] = {}
        self._prev_t: float | None = None
        self._first_t: float | None = None
        self._intervals: list[float] = []
        self._late: list[float] = []
        self._dumps: list[float] = []
        self.schedule = FixedRate(time.clock_gettime(time.CLOCK_MONOTONIC), period)
        self.entries: list[dict[str, Any]] = []
        self.samples = 0
        self.cpu_s = 0.0
        self.error: dict[str, Any] | None = None

    def start(self) -> dict[str, Any]:
        """Take the first sample here (its failure raises), then sample on in the thread."""
        self._sample()
        self._first_t = self._prev_t
        self._thread.start()
        return {"t": self._first_t, "sockets": len(self._last)}

    def stop(self) -> dict[str, Any]:
        """Stop the thread (or collect it, if a failed dump ended it), take a last sample so that the history
        reaches the moment of the stop, and return the history and figures."""
        self._stop.set()
        self._thread.join()
        if self.error is None:
            try:
                self._sample(scheduled=False)
            except Exception as exc:
                self.error = _error(exc)
        return {"period_ms": self._period * 1000, "fields": self._fields, "samples": self.samples,
                "missed": self.schedule.missed, "t_first": self._first_t, "t_last": self._prev_t,
                "interval_ms": _stats(self._intervals), "late_ms": _stats(self._late),
                "dump_ms": _stats(self._dumps), "cpu_s": self.cpu_s, "error": self.error, "entries": self.entries}

    def _run(self) -> None:
        # CLOCK_THREAD_CPUTIME_ID is exact; getrusage's user/system split of a thread is sampled at timer ticks
        # and useless for a thread that runs a fraction of a millisecond at a time.
        cpu = time.thread_time()
        try:
            while True:
                now = time.clock_gettime(time.CLOCK_MONOTONIC)
                if self._stop.wait(max(0.0, self.schedule.advance(now) - now)):
                    return
                self._sample()
        except Exception as exc:
            self.error = _error(exc)
        finally:
            self.cpu_s = time.thread_time() - cpu

    def _sample(self, scheduled: bool = True) -> None:
        start = clocks()
        sockets = self._dump()
        t_end = time.clock_gettime(time.CLOCK_MONOTONIC)
        t = start["mono"]
        self._observe({"t": t, "t_end": t_end, "t_real": start["real"], "prev_t": self._prev_t}, sockets)
        if scheduled:
            self._late.append(t - self.schedule.due)
        self._dumps.append(t_end - t)
        if self._prev_t is not None:
            self._intervals.append(t - self._prev_t)
        self._prev_t = t
        self.samples += 1

    def _observe(self, times: dict[str, Any], sockets: list[Message]) -> None:
        """Record what changed since the previous sample, per socket; decode only those sockets."""
        current: dict[bytes, tuple[str, bytes | None, dict[str, Any]]] = {}
        handles = None
        for sock in sockets:
            view = sock.view() if self._fields else None
            last = self._last.get(sock.key)
            if last is not None and last[0] == sock.state and last[1] == view:
                current[sock.key] = last
                continue
            entry = sock.entry()
            handles = self._handles() if handles is None else handles
            handle = handles.get(entry["inode"]) if entry["inode"] else None
            change = "new" if last is None else "state" if last[0] != sock.state else "fields"
            self.entries.append({**times, "change": change, **entry, "handle": handle})
            current[sock.key] = (sock.state, view, entry)
        for key, (_, _, entry) in self._last.items():
            if key not in current:
                gone = {name: None for name in entry} | {name: entry[name] for name in KEY}
                self.entries.append({**times, "change": "gone", **gone, "state": "GONE", "handle": None})
        self._last = current


def _stats(values: list[float]) -> dict[str, float] | None:
    """min, p50, p90, p99, max and mean of `values` (seconds), in milliseconds; None without values."""
    if not values:
        return None
    ordered = sorted(values)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"min": ordered[0] * 1000, "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
            "max": ordered[-1] * 1000, "mean": sum(ordered) / len(ordered) * 1000}


def _error(exc: Exception) -> dict[str, Any]:
    """The protocol's error object for what ended a sampler (see server.error_of)."""
    if isinstance(exc, OSError):
        return {"type": "OSError", "message": str(exc), "errno": exc.errno,
                "errname": errname(exc.errno) if exc.errno is not None else None}
    text = traceback.format_exc()
    print(text, file=sys.stderr)
    return {"type": "Internal", "message": f"{type(exc).__name__}: {exc}", "traceback": text}


class Samplers:
    """Running samplers by id ("m1"); `handles` names this process's sockets by inode."""

    def __init__(self, handles: Callable[[], Mapping[int, str]]) -> None:
        self._handles = handles
        self._lock = threading.Lock()
        self._running: dict[str, tuple[Sampler, Dumper]] = {}
        self._numbers = itertools.count(1)

    def start(self, proto: str = "tcp", port: int | None = None, sport: int | None = None,
              dport: int | None = None, states: list[str] | None = None, period_ms: float = 10.0,
              fields: bool = False) -> dict[str, Any]:
        """Start sampling the sockets a `sockets` snapshot with these filters returns; answers after the
        first sample."""
        query = Query(proto, port, sport, dport, None if states is None else tuple(states))
        if not math.isfinite(period_ms) or period_ms < MIN_PERIOD_MS:
            raise BadRequest(f"argument 'period_ms' must be at least {MIN_PERIOD_MS:g} (ms), not {period_ms!r}")
        dumper = Dumper()
        sampler = Sampler(lambda: dumper.dump(query), period_ms / 1000, fields, self._handles)
        try:
            first = sampler.start()
        except BaseException:
            dumper.close()
            raise
        with self._lock:
            sampler_id = f"m{next(self._numbers)}"
            self._running[sampler_id] = (sampler, dumper)
        return {"id": sampler_id, **first}

    def stop(self, id: str) -> dict[str, Any]:
        with self._lock:
            running = self._running.pop(id, None)
            known = ", ".join(self._running) or "none"
        if running is None:
            raise BadRequest(f"unknown sampler {id!r} (argument 'id'); running: {known}")
        return {"id": id, **_stop(*running)}

    def stop_all(self) -> list[str]:
        with self._lock:
            running, self._running = self._running, {}
        for sampler in running.values():
            _stop(*sampler)
        return sorted(running)


def _stop(sampler: Sampler, dumper: Dumper) -> dict[str, Any]:
    try:
        return sampler.stop()
    finally:
        dumper.close()
