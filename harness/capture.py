"""Packet capture inside a host: tcpdump runs in the host's own namespace, the pcap comes back over the agent."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from . import evidence
from .wire import Wire, parse_pcap

if TYPE_CHECKING:
    from .backends.base import Host


@contextmanager
def capture(host: Host, bpf: str = "", iface: str = "eth0") -> Iterator[Wire]:
    """Capture on `host` for the duration of the block; the Wire it yields is filled when the block ends.

    tcpdump is listening when the block starts (the agent waits for it), has written every packet the
    kernel passed it when the block ends and the kernel dropped none for want of buffer (`wire.complete`;
    the agent checks tcpdump's counters), and is
    stopped even if the block raises, so a failing test keeps its evidence.
    """
    wire = Wire(host.name)
    capture_id = host.capture_start(iface=iface, filter=bpf)
    try:
        yield wire
    finally:
        result = host.channel.call("capture_stop", proc=host.proc, id=capture_id)
        wire.pcap = base64.b64decode(result["pcap"])
        wire.complete = result["drained"] and result["dropped"] == 0
        if not wire.complete:
            wire.incomplete_because = (f"drained {result['drained']}, dropped by kernel {result['dropped']}; "
                                       f"tcpdump said: {result['stderr'][-300:]!r}")
        wire.packets = parse_pcap(wire.pcap, host.realtime_minus_monotonic)
        evidence.note_wire(wire)
