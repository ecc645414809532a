"""The geometry of a test's timeline picture: one lane per host, time left to right, marks for its events.

A lane holds, top to bottom: packets (ticks; retransmissions taller and red), syscalls (a dot at the return,
a bar while it blocked, its errno written under it), programs (a bar from launch to exit, the exit status at its
end), socket-state changes (squares with the new state).
Fault windows (apply .. heal, or the end) shade the lane of the host they act on, every lane for "*".
The template (templates/report.html.j2) turns these shapes into SVG elements.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from .report_data import BundleReport
from .timeline import Event

Scale = Callable[[float], float]
LEFT = 90
PLOT = 1000
RIGHT = 80
TOP = 10
LANE = 84
AXIS = 30
_STEPS = (1, 2, 5)


@dataclass(frozen=True)
class Shape:
    """An SVG element: kind "rect" (x, y, w, h), "line" (x, y to x2, y2), "circle" or "text" (at x, y), its CSS
    class and a tooltip."""

    kind: str
    cls: str
    x: float
    y: float
    w: float = 0.0
    h: float = 0.0
    x2: float = 0.0
    y2: float = 0.0
    text: str = ""
    title: str = ""


@dataclass
class Picture:
    """Everything one test's SVG draws."""

    width: int
    height: int
    lanes: list[Shape] = field(default_factory=list)
    faults: list[Shape] = field(default_factory=list)
    axis: list[Shape] = field(default_factory=list)
    marks: list[Shape] = field(default_factory=list)


def tick_step(span: float, ticks: int = 10) -> float:
    """A round step (1, 2 or 5 times a power of ten) giving at most about `ticks` axis ticks over `span`."""
    raw = max(span, 1e-6) / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(s * power for s in (*_STEPS, 10) if s * power >= raw)


def seconds_label(value: float, step: float) -> str:
    """An axis label in the unit that suits the step: s, ms or µs."""
    scale, unit = next((s, u) for s, u in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")) if step >= s or u == "µs")
    return f"{round(value / scale, 6):+g} {unit}"


def picture(report: BundleReport) -> Picture | None:
    """The timeline picture of a test, None when its timeline has no events."""
    events = report.timeline.events
    if not events:
        return None
    hosts = sorted({e.host for e in events} - {"*"})
    origin = report.timeline.t0
    start, end = min(origin, events[0].t), events[-1].t
    scale = PLOT / max(end - start, 1e-6)

    def x(t: float) -> float:
        return round(LEFT + (t - start) * scale, 2)

    lane_y = {host: TOP + i * LANE for i, host in enumerate(hosts)}
    pic = Picture(LEFT + PLOT + RIGHT, TOP + len(hosts) * LANE + AXIS)
    for host, y in lane_y.items():
        pic.lanes.append(Shape("rect", "lane", LEFT, y, PLOT, LANE - 4, title=host))
        pic.lanes.append(Shape("text", "lane-name", 6, y + LANE / 2, text=host))
    pic.faults = _fault_windows(events, lane_y, x, end)
    pic.axis = _axis(origin, start, end, x, TOP + len(hosts) * LANE)
    for i, e in enumerate(events):
        if e.host in lane_y:
            label = f"{e.t - origin:+.6f} s  {e.host}  {e.source}  {e.text}"
            pic.marks += _marks(e, i in report.retransmitted, x, lane_y[e.host], label)
    return pic


def _fault_windows(events: list[Event], lane_y: dict[str, float], x: Scale, end: float) -> list[Shape]:
    """A shaded rectangle per fault and lane it acts on, from its apply to its heal (or the end)."""
    windows = {}
    for e in events:
        if e.source == "fault" and e.data.get("applied_at") is not None:
            windows[(e.data["describe"], e.data["applied_at"], e.host)] = e.data.get("healed_at")
    shapes = []
    for (describe, applied, host), healed in windows.items():
        right = x(end if healed is None else healed)
        for lane, y in lane_y.items():
            if host in (lane, "*") or host not in lane_y:
                shapes.append(Shape("rect", "fault", x(applied), y, max(right - x(applied), 1), LANE - 4,
                                    title=describe + ("" if healed is not None else " (not healed)")))
    return shapes


def _axis(origin: float, start: float, end: float, x: Scale, y: float) -> list[Shape]:
    """Tick marks and labels in seconds relative to `origin` (the first fault's apply, else the first event)."""
    step = tick_step(end - start)
    first = math.ceil((start - origin) / step)
    last = math.floor((end - origin) / step)
    shapes = [Shape("line", "axis", LEFT, y, x2=LEFT + PLOT, y2=y)]
    for n in range(first, last + 1):
        at = x(origin + n * step)
        shapes.append(Shape("line", "axis", at, y, x2=at, y2=y + 5))
        shapes.append(Shape("text", "axis-label", at, y + 18, text=seconds_label(n * step, step)))
    return shapes


def _marks(e: Event, retransmission: bool, x: Scale, y: float, title: str) -> list[Shape]:
    """The shapes of one event in its host's lane (y: the lane's top)."""
    at = x(e.t)
    if e.source == "packet":
        if retransmission:
            return [Shape("line", "packet retransmission", at, y + 3, x2=at, y2=y + 29, title=title)]
        return [Shape("line", "packet", at, y + 8, x2=at, y2=y + 24, title=title)]
    if e.source == "syscall":
        errname = e.data.get("errname")
        cls = "syscall error" if errname else "syscall"
        if e.t != e.data.get("t1"):
            return [Shape("rect", "syscall-blocked", at, y + 36, max(x(e.data["t1"]) - at, 1), 6, title=title)]
        shapes = [Shape("circle", cls, at, y + 39, title=title)]
        if errname:
            shapes.append(Shape("text", "errname", at, y + 54, text=errname, title=title))
        return shapes
    if e.source == "program" and e.data.get("event") == "exit" and e.data.get("t0") is not None:
        start = x(e.data["t0"])
        status = e.data["signal"] or f"exit {e.data['returncode']}"
        return [Shape("rect", "program", start, y + 47, max(at - start, 1), 4, title=title),
                Shape("text", "program-label", at + 3, y + 52, text=f"{e.data['program']}: {status}", title=title)]
    if e.source == "state":
        change = e.data.get("change")
        shapes = [Shape("rect", "state", at - 3, y + 60, 6, 6, title=title)]
        if change in ("new", "state", "gone"):
            text = "gone" if change == "gone" else str(e.data.get("state", ""))
            shapes.append(Shape("text", "state-label", at + 5, y + 72, text=text, title=title))
        return shapes
    return []
