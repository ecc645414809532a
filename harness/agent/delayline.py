"""A userspace delay line on an NFQUEUE queue: netem's delay, jitter, reorder and duplicate without sch_netem.

The netem fallback (faults/netem_fallback.py) sends one interface's IPv4 packets to a queue with an xtables
NFQUEUE rule; this program, inside the host, holds each packet until its release time and then gives the
kernel its verdict (NF_ACCEPT). Duplicates are copies sent through a raw socket whose packets carry
`mark_for(queue)`, which the rule lets past. Run as `python3 -m netfault_agent.delayline '<json params>'`:
it writes "ready <queue>" to --ready-fd once the queue is bound; on SIGTERM it releases every held packet and
prints its counters as one JSON line on stdout.

nfnetlink_queue is spoken here directly (stdlib only: Debian bookworm has no Python binding of
libnetfilter_queue). Layouts: include/uapi/linux/netfilter/nfnetlink_queue.h (messages, attributes, structs),
include/uapi/linux/netfilter/nfnetlink.h (struct nfgenmsg), include/uapi/linux/netlink.h (framing).
"""

from __future__ import annotations

import argparse
import errno
import heapq
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import BadRequest, ProcessDied
from .netem import NetemParamError, NetemParams, distribution_table
from .procs import Child, Children, exit_status
from .records import clocks, errname

# include/uapi/linux/netlink.h and nfnetlink.h
NETLINK_NETFILTER = 12
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 0x2
NLA_TYPE_MASK = 0x3FFF
NFNETLINK_V0 = 0
NFNL_SUBSYS_QUEUE = 3
# include/uapi/linux/netfilter/nfnetlink_queue.h
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR, NFQA_PAYLOAD = 1, 2, 10
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_PACKET = 2
# include/uapi/linux/netfilter.h
NF_DROP, NF_ACCEPT = 0, 1

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid: host byte order
NLATTR = struct.Struct("=HH")  # len, type
NFGENMSG = struct.Struct("!BBH")  # family, version, res_id (the queue number, big endian)
PACKET_HDR = struct.Struct("!IHB")  # nfqnl_msg_packet_hdr (packed): packet_id, hw_protocol, hook
VERDICT_HDR = struct.Struct("!II")  # nfqnl_msg_verdict_hdr: verdict, id
CONFIG_CMD = struct.Struct("!BBH")  # nfqnl_msg_config_cmd: command, _pad, pf
CONFIG_PARAMS = struct.Struct("!IB")  # nfqnl_msg_config_params (packed): copy_range, copy_mode
ETH_P_IP = 0x0800
COPY_RANGE = 0xFFFF
RECV_SIZE = COPY_RANGE + 4096
RCVBUF = 8 << 20
SO_RCVBUFFORCE = 33  # asm-generic/socket.h (the socket module lacks it)
NETEM_DIST_SCALE = 8192  # sch_netem.c: the distribution tables' unit
# Fields of NetemParams the delay line implements (loss is nft's, see faults/netem_fallback.py).
FIELDS = ("delay_ms", "jitter_ms", "distribution", "reorder_pct", "duplicate_pct", "limit")
MARK_BASE = 0x4E460000  # "NF" in the high half; the queue number in the low half
QUEUES = range(0x100, 0x10000)
BIND_ATTEMPTS = 16
PROC_QUEUES = "/proc/net/netfilter/nfnetlink_queue"


def mark_for(queue: int) -> int:
    """The fwmark the delay line of `queue` puts on its copies (its queue rule lets them past)."""
    return MARK_BASE | queue


def line_params(values: dict[str, Any]) -> NetemParams:
    """The delay line's parameters (FIELDS of NetemParams), checked as netem checks them."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise NetemParamError(f"the delay line cannot do {', '.join(unknown)}; it does {', '.join(FIELDS)}")
    return NetemParams(**values)


# Messages


def _attr(kind: int, payload: bytes) -> bytes:
    return NLATTR.pack(NLATTR.size + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def _message(msg_type: int, queue: int, attrs: bytes, flags: int, seq: int) -> bytes:
    body = NFGENMSG.pack(socket.AF_UNSPEC, NFNETLINK_V0, queue) + attrs
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), NFNL_SUBSYS_QUEUE << 8 | msg_type, flags, seq, 0) + body


def config_message(queue: int, maxlen: int, seq: int) -> bytes:
    """NFQNL_MSG_CONFIG: bind `queue`, copy whole packets, hold at most `maxlen`; asks for an ACK."""
    attrs = (_attr(NFQA_CFG_CMD, CONFIG_CMD.pack(NFQNL_CFG_CMD_BIND, 0, 0))
             + _attr(NFQA_CFG_PARAMS, CONFIG_PARAMS.pack(COPY_RANGE, NFQNL_COPY_PACKET))
             + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen)))
    return _message(NFQNL_MSG_CONFIG, queue, attrs, NLM_F_REQUEST | NLM_F_ACK, seq)


def verdict_message(queue: int, packet_id: int, verdict: int = NF_ACCEPT) -> bytes:
    """NFQNL_MSG_VERDICT for one packet (no ACK: the kernel answers only if it fails)."""
    return _message(NFQNL_MSG_VERDICT, queue, _attr(NFQA_VERDICT_HDR, VERDICT_HDR.pack(verdict, packet_id)),
                    NLM_F_REQUEST, 0)


def messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, seq, payload after the nlmsghdr) of each netlink message in `data`."""
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, msg_type, _, seq, _ = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            raise ValueError(f"malformed netlink message at byte {offset}: length {length} of {len(data)}")
        yield msg_type, seq, data[offset + NLMSGHDR.size:offset + length]
        offset += (length + 3) & ~3


def attributes(data: bytes) -> dict[int, bytes]:
    """Netlink attributes by type (flag bits cleared)."""
    found, offset = {}, 0
    while offset + NLATTR.size <= len(data):
        length, kind = NLATTR.unpack_from(data, offset)
        if length < NLATTR.size:
            raise ValueError(f"malformed netlink attribute at byte {offset}: length {length}")
        found[kind & NLA_TYPE_MASK] = data[offset + NLATTR.size:offset + length]
        offset += (length + 3) & ~3
    return found


@dataclass(frozen=True)
class Packet:
    """One NFQNL_MSG_PACKET: the queue, the kernel's packet id, hw protocol, hook and the packet bytes."""

    queue: int
    packet_id: int
    hw_protocol: int
    hook: int
    payload: bytes


def parse_packet(body: bytes) -> Packet:
    """An NFQNL_MSG_PACKET's payload (nfgenmsg, then attributes)."""
    _, _, queue = NFGENMSG.unpack_from(body)
    attrs = attributes(body[NFGENMSG.size:])
    packet_id, hw_protocol, hook = PACKET_HDR.unpack(attrs[NFQA_PACKET_HDR][:PACKET_HDR.size])
    return Packet(queue, packet_id, hw_protocol, hook, attrs.get(NFQA_PAYLOAD, b""))


def parse_error(body: bytes) -> int:
    """The errno of an NLMSG_ERROR (struct nlmsgerr: -errno, then the request's header); 0 is an ACK."""
    return -struct.unpack_from("=i", body)[0]


# When packets go out


class Schedule:
    """Release times by sch_netem's rules (netem_enqueue, tabledist), drawn from `rng`.

    A packet is reordered (sent at once) with reorder_pct, else delayed by delay_ms +- jitter_ms: uniform, or
    by iproute2's `table` of the distribution (delay + jitter * entry / 8192); never below zero. With
    duplicate_pct it gets a copy that is scheduled the same way, independently (netem re-enqueues it).
    """

    def __init__(self, params: NetemParams, rng: random.Random, table: Sequence[int] | None = None) -> None:
        if (table is None) != (params.distribution is None):
            raise ValueError("pass the distribution table exactly when params.distribution is set")
        self.params = params
        self.rng = rng
        self.table = table
        self.reordered = 0

    def delay(self) -> float:
        """One delay in seconds."""
        mu, sigma = self.params.delay_ms / 1000, self.params.jitter_ms / 1000
        if not sigma:
            return mu
        if self.table is None:
            return max(0.0, mu - sigma + 2 * sigma * self.rng.random())
        return max(0.0, mu + sigma * self.table[self.rng.randrange(len(self.table))] / NETEM_DIST_SCALE)

    def _chance(self, percent: float) -> bool:
        return percent > 0 and self.rng.random() * 100 < percent

    def _release(self, now: float) -> float:
        if self._chance(self.params.reorder_pct):
            self.reordered += 1
            return now
        return now + self.delay()

    def releases(self, now: float) -> tuple[float, float | None]:
        """Release times of a packet that arrived at `now`, and of its copy (None: not duplicated)."""
        copy = self._release(now) if self._chance(self.params.duplicate_pct) else None
        return self._release(now), copy


# The queue


def bound_queues(text: str) -> set[int]:
    """Queue numbers bound in this namespace, from /proc/net/netfilter/nfnetlink_queue's text."""
    return {int(line.split()[0]) for line in text.splitlines() if line.strip()}


class Queue:
    """A netlink socket bound to a free NFQUEUE queue of this network namespace."""

    def __init__(self, maxlen: int, rng: random.Random) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        self.sock.bind((0, 0))
        self.seq = 0
        self.number = self._bind(maxlen, rng)

    def _bind(self, maxlen: int, rng: random.Random) -> int:
        """Bind a queue no other socket has; several tries, since another delay line may race for one."""
        try:
            with open(PROC_QUEUES) as file:
                taken = bound_queues(file.read())
        except FileNotFoundError:
            taken = set()
        refused: dict[int, int] = {}
        for queue in rng.sample([q for q in QUEUES if q not in taken], BIND_ATTEMPTS):
            self.seq += 1
            self.sock.send(config_message(queue, maxlen, self.seq))
            code = self._ack(self.seq)
            if code == 0:
                return queue
            if code not in (errno.EPERM, errno.EBUSY):
                raise OSError(code, f"binding NFQUEUE queue {queue}: {os.strerror(code)}")
            refused[queue] = code
        codes = ", ".join(sorted({errname(code) for code in refused.values()}))
        raise OSError(errno.EBUSY, f"could not bind any of NFQUEUE queues {sorted(refused)} ({codes}): other "
                                   "sockets hold them, or this process lacks CAP_NET_ADMIN")

    def _ack(self, seq: int) -> int:
        while True:
            for msg_type, msg_seq, body in messages(self.sock.recv(RECV_SIZE)):
                if msg_type == NLMSG_ERROR and msg_seq == seq:
                    return parse_error(body)

    def fileno(self) -> int:
        return self.sock.fileno()


@dataclass
class Counters:
    """What the delay line did; printed as JSON when it stops."""

    queue: int
    packets: int = 0
    released: int = 0
    reordered: int = 0
    duplicated: int = 0
    copies_sent: int = 0
    copies_unsent: int = 0
    released_early: int = 0
    held_max: int = 0
    late_max_ms: float = 0.0
    late_sum_ms: float = 0.0
    verdict_errors: dict[str, int] = field(default_factory=dict)
    copy_errors: dict[str, int] = field(default_factory=dict)
    overruns: int = 0

    def count(self, table: dict[str, int], code: int) -> None:
        table[errname(code)] = table.get(errname(code), 0) + 1


class DelayLine:
    """Packets of `queue` held in a heap by release time, given NF_ACCEPT at that time; copies via `raw`."""

    def __init__(self, queue: Queue, schedule: Schedule, raw: socket.socket) -> None:
        self.queue = queue
        self.schedule = schedule
        self.raw = raw
        self.held: list[tuple[float, int, int | None, bytes | None]] = []  # release, order, id, copy bytes
        self.order = 0
        self.counters = Counters(queue.number)

    def _hold(self, release: float, packet_id: int | None, copy: bytes | None) -> None:
        self.order += 1
        heapq.heappush(self.held, (release, self.order, packet_id, copy))

    def receive(self) -> None:
        """Schedule every packet waiting on the socket."""
        c = self.counters
        while True:
            try:
                data = self.queue.sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                c.overruns += 1  # the kernel dropped messages the socket had no room for
                continue
            now = time.monotonic()
            for msg_type, _, body in messages(data):
                if msg_type == NLMSG_ERROR:
                    c.count(c.verdict_errors, parse_error(body))
                    continue
                if msg_type != NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET:
                    continue
                packet = parse_packet(body)
                c.packets += 1
                release, copy = self.schedule.releases(now)
                self._hold(release, packet.packet_id, None)
                if copy is not None:
                    c.duplicated += 1
                    self._hold(copy, None, packet.payload if packet.hw_protocol == ETH_P_IP else None)
            c.held_max = max(c.held_max, len(self.held))

    def release_due(self, now: float) -> None:
        """Accept the packets (send the copies) whose time has come."""
        verdicts = []
        while self.held and self.held[0][0] <= now:
            release, _, packet_id, copy = heapq.heappop(self.held)
            late_ms = (now - release) * 1000
            self.counters.late_max_ms = max(self.counters.late_max_ms, late_ms)
            self.counters.late_sum_ms += late_ms
            if packet_id is not None:
                verdicts.append(verdict_message(self.queue.number, packet_id))
            else:
                self._send_copy(copy)
        if verdicts:
            self.queue.sock.send(b"".join(verdicts))
            self.counters.released += len(verdicts)

    def _send_copy(self, copy: bytes | None) -> None:
        if copy is None or len(copy) < 20 or copy[0] >> 4 != 4:
            self.counters.copies_unsent += 1
            return
        try:
            self.raw.sendto(copy, (socket.inet_ntoa(copy[16:20]), 0))
            self.counters.copies_sent += 1
        except OSError as exc:
            self.counters.count(self.counters.copy_errors, exc.errno or 0)

    def timeout(self) -> float | None:
        return None if not self.held else max(0.0, self.held[0][0] - time.monotonic())

    def flush(self) -> None:
        """Accept every held packet now, before its time (on stop); the copies not sent yet are dropped."""
        ids = [packet_id for _, _, packet_id, _ in self.held if packet_id is not None]
        self.counters.copies_unsent += len(self.held) - len(ids)
        self.held = []
        if ids:
            self.queue.sock.send(b"".join(verdict_message(self.queue.number, i) for i in ids))
        self.counters.released += len(ids)
        self.counters.released_early += len(ids)


def serve(line: DelayLine, wake: int) -> None:
    """Until a byte arrives on `wake` (the signal wakeup pipe)."""
    while True:
        ready, _, _ = select.select([line.queue, wake], [], [], line.timeout())
        if wake in ready:
            return
        if ready:
            line.receive()
        line.release_due(time.monotonic())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python3 -m {__name__}", description=__doc__.splitlines()[0])
    parser.add_argument("params", help=f"JSON object of netem parameters among {', '.join(FIELDS)}")
    parser.add_argument("--ready-fd", type=int, default=1, help="where to write 'ready <queue>' (default stdout)")
    args = parser.parse_args(argv)
    params = line_params(json.loads(args.params))
    rng = random.Random()
    read_end, wake = os.pipe()
    os.set_blocking(wake, False)
    signal.set_wakeup_fd(wake)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    table = distribution_table(params.distribution) if params.distribution else None
    queue = Queue(params.limit, rng)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark_for(queue.number))
    line = DelayLine(queue, Schedule(params, rng, table), raw)
    os.write(args.ready_fd, f"ready {queue.number}\n".encode())
    if args.ready_fd != 1:
        os.close(args.ready_fd)
    serve(line, read_end)
    line.flush()
    line.counters.reordered = line.schedule.reordered
    print(json.dumps(vars(line.counters)), flush=True)
    return 0


# The agent op


def _first_line(fd: int, timeout: float) -> str:
    """The first line written to pipe `fd` within `timeout` ("" at EOF or timeout); closes `fd`."""
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while b"\n" not in data:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 256) if ready else b""
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data.decode(errors="replace").split("\n")[0]


def start(children: Children, name: str, params: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Run the delay line as child process `name`; answer once its queue is bound (`queue`, `mark`, `pid`).

    If it exits or stays silent for `timeout` seconds first, it is killed and the error carries its stderr.
    """
    try:
        line_params(params)
    except (NetemParamError, TypeError) as exc:
        raise BadRequest(f"argument 'params': {exc}") from None
    children.reserve(name)
    read_end, write_end = os.pipe()
    stdout, stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    t0 = clocks()
    try:
        popen = subprocess.Popen([sys.executable, "-m", __name__, json.dumps(params), "--ready-fd", str(write_end)],
                                 stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, pass_fds=(write_end,))
    except OSError:
        for file in (stdout, stderr):
            file.close()
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    child = Child(name, popen, stdout, stderr)
    children.add(child)
    first = _first_line(read_end, timeout)
    if not first.startswith("ready "):
        why = f"stayed silent for {timeout:g} s" if popen.poll() is None else "exited"
        child.stop()
        stderr_text = child.output()["stderr"].strip()
        children.discard(name)
        status = exit_status(popen.returncode)
        raise ProcessDied(f"the delay line {why} before binding its queue; its stderr:\n{stderr_text}",
                          status["returncode"], status["signal"])
    t1 = clocks()
    queue = int(first.split()[1])
    return {"name": name, "pid": popen.pid, "queue": queue, "mark": mark_for(queue),
            "t0": t0["mono"], "t1": t1["mono"], "t0_real": t0["real"], "t1_real": t1["real"]}


if __name__ == "__main__":
    sys.exit(main())
