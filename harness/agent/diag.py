"""Socket snapshots of the whole network namespace from sock_diag (pyroute2 0.7.2's DiagSocket).

What pyroute2 0.7.2 returns, and what this module does about it:
- `get_sock_stats()` yields `inet_diag_msg`s with the raw kernel fields; `idiag_rqueue`/`idiag_wqueue` are
  exactly what `ss` prints as Recv-Q/Send-Q (for LISTEN: accept queue length and backlog).
- INET_DIAG_INFO decodes into a dict of `tcpi_*` fields, lazily and without checking the attribute's length:
  a kernel with a shorter struct tcp_info would leave the trailing fields reading the next message's bytes.
  Fields past the attribute's real length are therefore dropped here.
- Its `tcpi_rcv_wscale`/`tcpi_snd_wscale` split of the bit field is wrong (operator precedence); unused here.
- For LISTEN sockets the kernel fills tcp_info's unacked/sacked with the queue length and backlog; such
  tcp_info is reported as null (recv_q/send_q carry those numbers).
- TIME_WAIT and SYN_RECV entries carry no INET_DIAG_INFO (tcp_info null), and inode 0; so do sockets not yet
  accepted (inode 0) even though they are ESTABLISHED.
- `cookie` (the kernel's socket cookie) names a socket for its whole life: through accept, close (inode 0
  again) and into TIME_WAIT, which inherits it.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from pyroute2.netlink.diag import DiagSocket, inet_diag_msg
from pyroute2.netlink.exceptions import NetlinkError

from .records import clocks
from .sockdiag import FAMILIES, PROTOCOLS, STATES, TIMERS, Query

_INET_DIAG_INFO = 2
_INET_DIAG_CONG = 4
_EXTENSIONS = (1 << (_INET_DIAG_INFO - 1)) | (1 << (_INET_DIAG_CONG - 1))
_NLA_HEADER = 4

# Our name -> pyroute2's field (units in the name: the kernel's).
TCP_INFO_FIELDS = {
    "ca_state": "tcpi_ca_state", "retransmits": "tcpi_retransmits", "probes": "tcpi_probes",
    "backoff": "tcpi_backoff", "rto_us": "tcpi_rto", "ato_us": "tcpi_ato", "snd_mss": "tcpi_snd_mss",
    "unacked": "tcpi_unacked", "sacked": "tcpi_sacked", "lost": "tcpi_lost", "retrans": "tcpi_retrans",
    "last_data_sent_ms": "tcpi_last_data_sent", "last_data_recv_ms": "tcpi_last_data_recv",
    "last_ack_recv_ms": "tcpi_last_ack_recv", "pmtu": "tcpi_pmtu", "rtt_us": "tcpi_rtt",
    "rttvar_us": "tcpi_rttvar", "snd_cwnd": "tcpi_snd_cwnd", "total_retrans": "tcpi_total_retrans",
    "bytes_acked": "tcpi_bytes_acked", "bytes_received": "tcpi_bytes_received", "segs_out": "tcpi_segs_out",
    "segs_in": "tcpi_segs_in", "notsent_bytes": "tcpi_notsent_bytes", "bytes_sent": "tcpi_bytes_sent",
    "bytes_retrans": "tcpi_bytes_retrans", "snd_wnd": "tcpi_snd_wnd",
}


def _field_ends() -> dict[str, int]:
    """Where each pyroute2 tcp_info field ends in the attribute payload (it unpacks them back to back)."""
    ends, offset = {}, 0
    for name, fmt in inet_diag_msg.tcp_info.fields:
        offset += struct.calcsize(fmt)
        ends[name] = offset
    return ends


_ENDS = _field_ends()


def snapshot(
    proto: str = "tcp", port: int | None = None, sport: int | None = None, dport: int | None = None,
    states: list[str] | None = None, handles: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """Sockets of the namespace (IPv4 and IPv6), filtered; `handles` names this process's own by inode."""
    query = Query(proto, port, sport, dport, None if states is None else tuple(states))
    start = clocks()
    try:
        with DiagSocket() as ds:
            ds.bind()
            messages = [msg for family in FAMILIES for msg in ds.get_sock_stats(
                family=family, protocol=PROTOCOLS[proto],
                extensions=_EXTENSIONS if proto == "tcp" else 0)]
    except NetlinkError as exc:
        raise OSError(exc.code, f"sock_diag dump failed: {exc}") from exc
    end = clocks()
    entries = [_entry(proto, msg, handles or {}) for msg in messages]
    selected = [e for e in entries if query.keeps(e["state"], e["sport"], e["dport"])]
    return {"t": start["mono"], "t_real": start["real"], "t_end": end["mono"], "sockets": selected}


def _entry(proto: str, msg: Any, handles: Mapping[int, str]) -> dict[str, Any]:
    state = STATES.get(msg["idiag_state"], str(msg["idiag_state"]))
    return {
        "proto": proto, "family": FAMILIES.get(msg["idiag_family"], str(msg["idiag_family"])), "state": state,
        "src": msg["idiag_src"], "sport": msg["idiag_sport"], "dst": msg["idiag_dst"], "dport": msg["idiag_dport"],
        "recv_q": msg["idiag_rqueue"], "send_q": msg["idiag_wqueue"], "inode": msg["idiag_inode"],
        "cookie": msg["idiag_cookie"],
        "uid": msg["idiag_uid"], "timer": msg["idiag_timer"], "timer_name": TIMERS.get(msg["idiag_timer"]),
        "retrans": msg["idiag_retrans"], "expires_ms": msg["idiag_expires"],
        "handle": handles.get(msg["idiag_inode"]) if msg["idiag_inode"] else None,
        "cong": msg.get_attr("INET_DIAG_CONG"),
        "tcp_info": None if state == "LISTEN" else _tcp_info(msg),
    }


def _tcp_info(msg: Any) -> dict[str, int] | None:
    slot = next((s for s in msg["attrs"] if s.name == "INET_DIAG_INFO"), None)
    if slot is None:
        return None
    nla = slot.nla
    available = nla.length - _NLA_HEADER
    return {ours: nla[theirs] for ours, theirs in TCP_INFO_FIELDS.items() if _ENDS[theirs] <= available}
