"""sock_diag without pyroute2: the names and filters snapshots and samplers share, and a fast raw dumper.

pyroute2's generic message classes cost about 40 us of CPU per socket to decode (diag.py uses them for
`sockets`, where that does not matter); a sampler dumping every millisecond cannot afford it. `Dumper` keeps
one NETLINK_SOCK_DIAG socket open and decodes inet_diag_msg and a few tcp_info fields with `struct` (about
3 us per socket), under diag.py's names, so its entries are a subset of a `sockets` snapshot's entries
(tests/unit/test_agent_sampler.py compares the two). Importing this module does not import pyroute2.

Most of a dump's cost is the kernel's walk of the TCP hash table, whatever the number of sockets: namespaces
share the machine's table (sized at boot from the memory: 262144 buckets with 24 GB, 0.2 ms a walk) unless
net.ipv4.tcp_child_ehash_entries gave them their own. A per-family request walks it once per family, so TCP
is dumped with the older TCPDIAG_GETSOCK request, which the kernel serves for both families in one walk.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

from .errors import BadRequest

STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
          7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}
TIMERS = {0: "off", 1: "on", 2: "keepalive", 3: "timewait", 4: "persist"}
PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
FAMILIES = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}

NETLINK_SOCK_DIAG = 4
TCPDIAG_GETSOCK = 18
SOCK_DIAG_BY_FAMILY = 20
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_ALL_STATES = (1 << 12) - 1  # as ss and pyroute2 ask: every TCP state (SYN_RECV includes request sockets)
_INET_DIAG_INFO = 2
_RECV_SIZE = 1 << 17  # a dump's skbs are at most 32 KiB: a whole one always fits
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_REQUEST = struct.Struct("=BBBxI48x")  # inet_diag_req_v2: family, protocol, extensions, states; any socket id
_TCP_REQUEST = struct.Struct("=BBBB48xII")  # inet_diag_req: family, src_len, dst_len, extensions, id, states, dbs
_KIND = struct.Struct("=BBBBHH")  # inet_diag_msg: family, state, timer, retrans, then the ports (big-endian)
_TAIL = struct.Struct("=IIIIIIII")  # if, cookie (2 x u32), expires, rqueue, wqueue, uid, inode
_ADDRS = 8  # offset of src (16 bytes) then dst (16 bytes) in inet_diag_msg
_ID, _ID_SIZE = 4, 48  # the socket id in inet_diag_msg: ports, addresses, interface, cookie
_QUEUES = 56  # rqueue, wqueue
_MSG_SIZE = 72
_ATTR = struct.Struct("=HH")
# struct tcp_info: retransmits, probes, backoff (u8 at 2..4), rto (u32 at 8), unacked (24), lost (32),
# total_retrans (100). Unpacked from the attribute's own payload, so a shorter struct raises, never misreads.
_TCP_INFO = struct.Struct("=2xBBB3xI12xI4xI64xI")
TCP_INFO_SUBSET = ("retransmits", "probes", "backoff", "rto_us", "unacked", "lost", "total_retrans")


@dataclass(frozen=True)
class Query:
    """Which sockets a snapshot or a sampler keeps: `proto`, on `port` (either end), `sport`, `dport`, `states`."""

    proto: str = "tcp"
    port: int | None = None
    sport: int | None = None
    dport: int | None = None
    states: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.proto not in PROTOCOLS:
            raise BadRequest(f"argument 'proto' must be one of {', '.join(PROTOCOLS)}, not {self.proto!r}")
        unknown = sorted(set(self.states or ()) - set(STATES.values()))
        if unknown:
            raise BadRequest(f"unknown state {unknown[0]!r} (argument 'states'); known: {', '.join(STATES.values())}")

    def keeps(self, state: str, sport: int, dport: int) -> bool:
        return ((self.port is None or self.port in (sport, dport))
                and (self.sport is None or sport == self.sport) and (self.dport is None or dport == self.dport)
                and (self.states is None or state in self.states))


class Message:
    """One socket of a dump, decoded as far as a sampler needs to tell what changed: its `key` (ports,
    addresses, interface and cookie, raw) and `state` at once; `view()` and `entry()` when asked."""

    __slots__ = ("key", "state", "_proto", "_msg")

    def __init__(self, proto: str, state: str, msg: memoryview) -> None:
        self.key = bytes(msg[_ID:_ID + _ID_SIZE])
        self.state = state
        self._proto = proto
        self._msg = msg

    def view(self) -> bytes:
        """The raw queues and tcp_info's retransmits, probes, backoff, rto and unacked: what a sampler's
        `fields` option compares."""
        info = _info(self._msg)
        queues = self._msg[_QUEUES:_QUEUES + 8]
        return bytes(queues) if info is None else b"".join((queues, info[2:5], info[8:12], info[24:28]))

    def entry(self) -> dict[str, Any]:
        """The snapshot entry's fields (but uid and cong); tcp_info only TCP_INFO_SUBSET, null for LISTEN."""
        msg = self._msg
        family, _, timer, retrans, sport, dport = _KIND.unpack_from(msg)
        size = 4 if family == socket.AF_INET else 16
        _, cookie_low, cookie_high, expires, rqueue, wqueue, _, inode = _TAIL.unpack_from(msg, _ADDRS + 32)
        info = None if self.state == "LISTEN" else _info(msg)
        return {
            "proto": self._proto, "family": FAMILIES.get(family, str(family)), "state": self.state,
            "src": socket.inet_ntop(family, msg[_ADDRS:_ADDRS + size]), "sport": socket.ntohs(sport),
            "dst": socket.inet_ntop(family, msg[_ADDRS + 16:_ADDRS + 16 + size]), "dport": socket.ntohs(dport),
            "recv_q": rqueue, "send_q": wqueue, "inode": inode, "cookie": cookie_low | cookie_high << 32,
            "timer": timer, "timer_name": TIMERS.get(timer), "retrans": retrans, "expires_ms": expires,
            "tcp_info": None if info is None else dict(zip(TCP_INFO_SUBSET, _TCP_INFO.unpack(info))),
        }


def _info(msg: memoryview) -> memoryview | None:
    """The payload of the INET_DIAG_INFO attribute (struct tcp_info), if the message has one."""
    offset = _MSG_SIZE
    while offset + _ATTR.size <= len(msg):
        length, kind = _ATTR.unpack_from(msg, offset)
        if kind == _INET_DIAG_INFO:
            return msg[offset + _ATTR.size:offset + length][:_TCP_INFO.size]
        offset += (length + 3) & ~3
    return None


class Dumper:
    """One sock_diag socket, open until `close`; `dump` returns the sockets a `Query` keeps, both families."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        self._sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def dump(self, query: Query) -> list[Message]:
        messages: list[Message] = []
        if query.proto == "tcp":
            self._request(TCPDIAG_GETSOCK, _TCP_REQUEST.pack(socket.AF_INET, 0, 0, 1 << (_INET_DIAG_INFO - 1),
                                                             _ALL_STATES, 0))
            self._receive(query, messages)
            return messages
        for family in FAMILIES:
            self._request(SOCK_DIAG_BY_FAMILY, _REQUEST.pack(family, PROTOCOLS[query.proto], 0, _ALL_STATES))
            self._receive(query, messages)
        return messages

    def _request(self, kind: int, request: bytes) -> None:
        self._seq += 1
        self._sock.send(_HEADER.pack(_HEADER.size + len(request), kind, _NLM_F_REQUEST_DUMP, self._seq, 0) + request)

    def _receive(self, query: Query, messages: list[Message]) -> None:
        """Collect the answers to one dump request that `query` keeps, until NLMSG_DONE."""
        while True:
            data = memoryview(self._sock.recv(_RECV_SIZE))
            offset = 0
            while offset < len(data):
                length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
                if kind in (_NLMSG_DONE, _NLMSG_ERROR):
                    (code,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                    if code < 0:
                        raise OSError(-code, f"sock_diag dump failed: {os.strerror(-code)}")
                    return
                _, state_code, _, _, sport, dport = _KIND.unpack_from(data, offset + _HEADER.size)
                state = STATES.get(state_code, str(state_code))
                if query.keeps(state, socket.ntohs(sport), socket.ntohs(dport)):
                    messages.append(Message(query.proto, state, data[offset + _HEADER.size:offset + length]))
                offset += (length + 3) & ~3
