"""Socket operations by handle, each answered with the record of the syscall it made."""

from __future__ import annotations

import base64
import ipaddress
import os
import select
import socket
import time
from typing import Any

from .errors import BadRequest
from .handles import AcceptLoop, HandleTable, address
from .options import TIMEVAL_SIZE, check_options, get_option, set_option, set_options, timeval
from .records import timed

TYPES = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}
SHUTDOWN = {"SHUT_RD": socket.SHUT_RD, "SHUT_WR": socket.SHUT_WR, "SHUT_RDWR": socket.SHUT_RDWR}
MSG_FLAGS = {name: getattr(socket, name) for name in
             ("MSG_NOSIGNAL", "MSG_DONTWAIT", "MSG_PEEK", "MSG_WAITALL", "MSG_MORE", "MSG_OOB", "MSG_TRUNC")}
PATTERN = bytes(range(256))


def _ipv4(addr: str) -> str:
    """Only IPv4 literals: a name would be resolved inside the timed call."""
    try:
        ipaddress.IPv4Address(addr)
    except ValueError:
        raise BadRequest(f"argument 'addr' must be an IPv4 address like 10.0.0.2, not {addr!r}") from None
    return addr


def _one_of(value: str, allowed: dict[str, int], arg: str) -> int:
    if value not in allowed:
        raise BadRequest(f"argument {arg!r} must be one of {', '.join(allowed)}, not {value!r}")
    return allowed[value]


def _flags(names: list[str]) -> int:
    bits = 0
    for name in names:
        bits |= _one_of(name, MSG_FLAGS, "flags")
    return bits


def _payload(size: int | None, data: str | None) -> bytes:
    if (size is None) == (data is None):
        raise BadRequest("give exactly one of 'size' (bytes of a 0..255 pattern) and 'data' (base64)")
    if data is not None:
        return base64.b64decode(data, validate=True)
    if size < 0:
        raise BadRequest(f"argument 'size' must be >= 0, not {size}")
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


def _with_rcvtimeo(sock: socket.socket, timeout: float, call: Any) -> Any:
    """Run `call` with SO_RCVTIMEO set to `timeout` (the kernel bounds the blocking call), then restore it."""
    previous = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, TIMEVAL_SIZE)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(timeout))
    try:
        return call()
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, previous)


class SocketOps:
    """The socket ops of the protocol over one process's handle table."""

    def __init__(self, table: HandleTable) -> None:
        self.table = table

    def _new(self, type: str, options: dict[str, Any] | None) -> tuple[str | None, list[dict[str, Any]]]:
        """socket() then options; returns the handle (None if a step failed) and the records of the steps."""
        kind = _one_of(type, TYPES, "type")
        check_options(options or {})
        record, sock = timed("socket", None, lambda: socket.socket(socket.AF_INET, kind),
                             ret=lambda s: s.fileno())
        if sock is None:
            return None, [record]
        handle = self.table.add(sock)
        record["handle"] = handle
        steps = [record, *set_options(sock, handle, options or {})]
        if steps[-1]["errno"] is not None:
            self.table.pop(handle).sock.close()
            return None, steps
        return handle, steps

    def socket(self, type: str = "tcp", options: dict[str, Any] | None = None) -> dict[str, Any]:
        """socket() then the options; if a step fails, its record is the answer and the socket is closed."""
        handle, steps = self._new(type, options)
        if handle is None:
            return {**steps[-1], "handle": None, "setup": steps[:-1]}
        return {**steps[0], "options": steps[1:]}

    def setsockopt(self, handle: str, options: dict[str, Any]) -> dict[str, Any]:
        sock = self.table.get(handle)
        check_options(options)
        return {"records": [set_option(sock, handle, name, value) for name, value in options.items()]}

    def getsockopt(self, handle: str, name: str) -> dict[str, Any]:
        return get_option(self.table.get(handle), handle, name)

    def bind(self, handle: str, addr: str = "0.0.0.0", port: int = 0) -> dict[str, Any]:
        sock = self.table.get(handle)
        target = (_ipv4(addr), port)
        record, _ = timed("bind", handle, lambda: sock.bind(target))
        return {**record, "local": address(sock.getsockname())}

    def listen(
        self, port: int | None = None, addr: str = "0.0.0.0", backlog: int = 5,
        options: dict[str, Any] | None = None, accept: bool = False, handle: str | None = None,
    ) -> dict[str, Any]:
        """socket + options + bind + listen (or listen on an existing bound `handle`)."""
        if (handle is None) == (port is None):
            raise BadRequest("give exactly one of 'port' (a new listener) and 'handle' (an existing socket)")
        steps: list[dict[str, Any]] = []
        if handle is None:
            target = (_ipv4(addr), port)
            handle, steps = self._new("tcp", options)
            if handle is None:
                return {**steps[-1], "handle": None, "setup": steps[:-1]}
            sock = self.table.get(handle)
            record, _ = timed("bind", handle, lambda: sock.bind(target))
            steps.append(record)
            if record["errno"] is not None:
                self.table.pop(handle).sock.close()
                return {**record, "handle": None, "setup": steps[:-1]}
        sock = self.table.get(handle)
        record, _ = timed("listen", handle, lambda: sock.listen(backlog))
        result = {**record, "handle": handle, "backlog": backlog, "local": address(sock.getsockname()),
                  "setup": steps, "accept": "background" if accept and record["errno"] is None else None}
        if accept and record["errno"] is None:
            self.table.entry(handle).accept_loop = AcceptLoop(sock, handle, self.table)
        return result

    def accept(self, handle: str, timeout: float | None = None) -> dict[str, Any]:
        """accept() in this request; `timeout` is applied as SO_RCVTIMEO (EAGAIN when it expires)."""
        entry = self.table.entry(handle)
        if entry.accept_loop is not None:
            raise BadRequest(f"listener {handle!r} accepts in the background: use op 'accepted'")

        def call() -> tuple[socket.socket, Any]:
            if timeout is None:
                return entry.sock.accept()
            return _with_rcvtimeo(entry.sock, timeout, entry.sock.accept)

        record, accepted = timed("accept", None, call, ret=lambda v: v[0].fileno())
        record.update(listener=handle, timeout=timeout, timeout_via="SO_RCVTIMEO" if timeout is not None else None)
        if accepted is not None:
            conn, peer = accepted
            record.update(handle=self.table.add(conn), peer=address(peer))
        return record

    def accepted(self, handle: str) -> dict[str, Any]:
        loop = self.table.entry(handle).accept_loop
        if loop is None:
            raise BadRequest(f"handle {handle!r} is not a listener with accept=true (argument 'handle')")
        records = loop.records()
        return {"records": records, "handles": [r["handle"] for r in records if r["errno"] is None]}

    def connect(
        self, addr: str, port: int, handle: str | None = None, type: str = "tcp",
        options: dict[str, Any] | None = None, nonblocking: bool = False, select_timeout: float | None = None,
    ) -> dict[str, Any]:
        """connect(); non-blocking with `select_timeout`: then select() for writability and read SO_ERROR.

        A socket made non-blocking here stays non-blocking, as in the seed's client.
        """
        _ipv4(addr)
        if select_timeout is not None and not nonblocking:
            raise BadRequest("argument 'select_timeout' needs nonblocking=true")
        steps: list[dict[str, Any]] = []
        if handle is None:
            handle, steps = self._new(type, options)
            if handle is None:
                return {**steps[-1], "handle": None, "setup": steps[:-1]}
        elif options:
            raise BadRequest("argument 'options' only applies to a new socket; use setsockopt on an existing one")
        sock = self.table.get(handle)
        if nonblocking:
            steps.append(set_option(sock, handle, "nonblocking", True))
        record, _ = timed("connect", handle, lambda: sock.connect((addr, port)))
        result = {**record, "peer": [addr, port], "local": address(sock.getsockname()), "setup": steps}
        if select_timeout is not None and record["errname"] == "EINPROGRESS":
            selected, ready = timed("select", handle, lambda: select.select([], [sock], [], select_timeout),
                                    ret=lambda v: len(v[1]))
            selected.update(timeout=select_timeout, ready=bool(ready and ready[1]))
            result.update(select=selected, so_error=get_option(sock, handle, "so_error"))
        return result

    def select(self, handle: str, read: bool = False, write: bool = False,
               timeout: float | None = None) -> dict[str, Any]:
        """select() on one socket for readability and/or writability, for up to `timeout` seconds (None: no
        limit); `readable` and `writable` say which it became (both false when the timeout expired)."""
        if not (read or write):
            raise BadRequest("select needs read=true, write=true or both")
        if timeout is not None and timeout < 0:
            raise BadRequest(f"argument 'timeout' must be >= 0 or null (no limit), not {timeout}")
        sock = self.table.get(handle)
        record, ready = timed("select", handle, lambda: select.select([sock] if read else [], [sock] if write else [],
                                                                      [], timeout),
                              ret=lambda v: len(v[0]) + len(v[1]))
        return {**record, "timeout": timeout, "readable": bool(ready and ready[0]),
                "writable": bool(ready and ready[1])}

    def send(
        self, handle: str, size: int | None = None, data: str | None = None, count: int | None = 1,
        interval: float = 0.0, duration: float | None = None, flags: list[str] | None = None,
        nonblocking: bool = False, addr: str | None = None, port: int | None = None,
    ) -> dict[str, Any]:
        """send() (or sendto() with addr/port) `count` times (None: until `duration` or an errno).

        `flags` defaults to ["MSG_NOSIGNAL"] (EPIPE instead of SIGPIPE); pass [] to get the signal.
        `nonblocking` adds MSG_DONTWAIT. A loop stops at the first errno; loops answer with all records.
        """
        sock = self.table.get(handle)
        payload = _payload(size, data)
        names = ["MSG_NOSIGNAL"] if flags is None else list(flags)
        if nonblocking and "MSG_DONTWAIT" not in names:
            names.append("MSG_DONTWAIT")
        bits = _flags(names)
        if count is not None and count < 1:
            raise BadRequest(f"argument 'count' must be >= 1 or null (no limit), not {count}")
        if (addr is None) != (port is None):
            raise BadRequest("give both 'addr' and 'port' (sendto) or neither (send)")
        if addr is None:
            op, call = "send", lambda: sock.send(payload, bits)
        else:
            target = (_ipv4(addr), port)
            op, call = "sendto", lambda: sock.sendto(payload, bits, target)
        if count == 1 and duration is None:
            record, _ = timed(op, handle, call)
            return {**record, "size": len(payload), "flags": names}
        records: list[dict[str, Any]] = []
        start = time.monotonic()
        stopped = "count"
        while count is None or len(records) < count:
            if records and interval:
                time.sleep(interval)
            if duration is not None and time.monotonic() - start >= duration:
                stopped = "duration"
                break
            record, _ = timed(op, handle, call)
            records.append({**record, "size": len(payload), "flags": names})
            if record["errno"] is not None:
                stopped = "errno"
                break
        return {"records": records, "stopped": stopped, "total": sum(r["ret"] or 0 for r in records)}

    def recv(
        self, handle: str, size: int = 65536, timeout: float | None = None, nonblocking: bool = False,
        flags: list[str] | None = None,
    ) -> dict[str, Any]:
        """recv() (recvfrom() on UDP); ret 0 is EOF. `timeout` is applied as SO_RCVTIMEO: EAGAIN on expiry."""
        sock = self.table.get(handle)
        names = list(flags or [])
        if nonblocking and "MSG_DONTWAIT" not in names:
            names.append("MSG_DONTWAIT")
        bits = _flags(names)
        if timeout is not None and (nonblocking or not sock.getblocking()):
            raise BadRequest("argument 'timeout' bounds a blocking recv; this recv is non-blocking")
        datagram = sock.type == socket.SOCK_DGRAM

        def receive() -> tuple[bytes, Any]:
            return sock.recvfrom(size, bits) if datagram else (sock.recv(size, bits), None)

        def call() -> tuple[bytes, Any]:
            return receive() if timeout is None else _with_rcvtimeo(sock, timeout, receive)

        record, value = timed("recvfrom" if datagram else "recv", handle, call, ret=lambda v: len(v[0]))
        data, peer = value if value is not None else (b"", None)
        return {**record, "size": size, "flags": names, "data": base64.b64encode(data).decode(),
                "peer": address(peer), "timeout": timeout,
                "timeout_via": "SO_RCVTIMEO" if timeout is not None else None}

    def shutdown(self, handle: str, how: str = "SHUT_WR") -> dict[str, Any]:
        sock = self.table.get(handle)
        bits = _one_of(how, SHUTDOWN, "how")
        record, _ = timed("shutdown", handle, lambda: sock.shutdown(bits))
        return {**record, "how": how}

    def close(self, handle: str) -> dict[str, Any]:
        """close() of the descriptor (after stopping a background accept loop); the handle is gone after."""
        entry = self.table.pop(handle)
        if entry.accept_loop is not None:
            entry.accept_loop.stop()
        fd = entry.sock.detach()
        record, _ = timed("close", handle, lambda: os.close(fd))
        return record

    def reset(self) -> dict[str, Any]:
        return self.table.close_all()
