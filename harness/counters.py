"""The kernel's SNMP counters of a host's network namespace (/proc/net/netstat and /proc/net/snmp).

    before = tcp_ext(server)
    ...
    dropped = tcp_ext(server)["ListenOverflows"] - before["ListenOverflows"]

They are per network namespace, so a host's counters count only its own traffic; names are the kernel's
(`TcpExt: LockDroppedIcmps ...`), as `nstat` shows them without the group prefix.
"""

from __future__ import annotations

from .endpoint import Endpoint


def snmp_counters(host: Endpoint, group: str) -> dict[str, int]:
    """Counters of one group ("TcpExt", "IpExt" from /proc/net/netstat; "Tcp", "Ip", "Icmp", ... from snmp)."""
    text = host.run(["cat", "/proc/net/netstat", "/proc/net/snmp"], check=True).stdout
    lines = [line.split() for line in text.splitlines() if line.strip()]
    # Each group is two lines: "Group: name name ..." then "Group: value value ...".
    for names, values in zip(lines[0::2], lines[1::2]):
        if names[0] == f"{group}:":
            return {name: int(value) for name, value in zip(names[1:], values[1:], strict=True)}
    raise LookupError(f"no counter group {group!r} in /proc/net/netstat or /proc/net/snmp of {host.host}")


def tcp_ext(host: Endpoint) -> dict[str, int]:
    """The TcpExt counters: LockDroppedIcmps, ListenOverflows, ListenDrops, TCPKeepAlive, ..."""
    return snmp_counters(host, "TcpExt")
