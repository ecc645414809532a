"""The named socket options of the protocol: how each is set and read, with a record per syscall."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

from .errors import BadRequest
from .records import errname, timed


@dataclass(frozen=True)
class Option:
    level: int
    name: int
    kind: str  # "flag", "int", "seconds" (struct timeval), "linger" ([onoff, seconds]), "errno"


OPTIONS: dict[str, Option] = {
    "reuseaddr": Option(socket.SOL_SOCKET, socket.SO_REUSEADDR, "flag"),
    "reuseport": Option(socket.SOL_SOCKET, socket.SO_REUSEPORT, "flag"),
    "keepalive": Option(socket.SOL_SOCKET, socket.SO_KEEPALIVE, "flag"),
    "keepidle": Option(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, "int"),
    "keepintvl": Option(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, "int"),
    "keepcnt": Option(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, "int"),
    "user_timeout": Option(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, "int"),
    "syncnt": Option(socket.IPPROTO_TCP, socket.TCP_SYNCNT, "int"),
    "sndtimeo": Option(socket.SOL_SOCKET, socket.SO_SNDTIMEO, "seconds"),
    "rcvtimeo": Option(socket.SOL_SOCKET, socket.SO_RCVTIMEO, "seconds"),
    "linger": Option(socket.SOL_SOCKET, socket.SO_LINGER, "linger"),
    "nodelay": Option(socket.IPPROTO_TCP, socket.TCP_NODELAY, "flag"),
    "sndbuf": Option(socket.SOL_SOCKET, socket.SO_SNDBUF, "int"),
    "rcvbuf": Option(socket.SOL_SOCKET, socket.SO_RCVBUF, "int"),
}
# Readable only.
READ_ONLY: dict[str, Option] = {"so_error": Option(socket.SOL_SOCKET, socket.SO_ERROR, "errno")}
# O_NONBLOCK is a file status flag (fcntl), not a socket option, but the protocol names it like one.
NONBLOCKING = "nonblocking"
SETTABLE = sorted([*OPTIONS, NONBLOCKING])
READABLE = sorted([*OPTIONS, *READ_ONLY, NONBLOCKING])

_TIMEVAL = struct.Struct("@ll")
_LINGER = struct.Struct("@ii")


def check_options(options: dict[str, Any]) -> None:
    """Reject unknown names and values of the wrong shape before any option is set."""
    for name, value in options.items():
        if name == NONBLOCKING:
            kind = "flag"
        elif name in OPTIONS:
            kind = OPTIONS[name].kind
        else:
            raise BadRequest(f"unknown socket option {name!r} (argument 'options'); known: {', '.join(SETTABLE)}")
        if not _valid(kind, value):
            raise BadRequest(f"option {name!r} takes {_SHAPES[kind]}, not {value!r}")


_SHAPES = {"flag": "true/false or 0/1", "int": "an integer", "seconds": "seconds (a number)",
           "linger": "[onoff, seconds]"}


def _valid(kind: str, value: Any) -> bool:
    if kind == "flag":
        return isinstance(value, (bool, int))
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "seconds":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    return (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value))


def set_option(sock: socket.socket, handle: str, name: str, value: Any) -> dict[str, Any]:
    """Set one checked option; the record says which syscall ran (setsockopt, or ioctl for nonblocking)."""
    if name == NONBLOCKING:
        # setblocking() (ioctl FIONBIO on Linux) keeps CPython's idea of the mode in step with O_NONBLOCK.
        record, _ = timed("ioctl", handle, lambda: sock.setblocking(not value))
    else:
        opt = OPTIONS[name]
        raw = _encode(opt.kind, value)
        record, _ = timed("setsockopt", handle, lambda: sock.setsockopt(opt.level, opt.name, raw))
    record.update(name=name, value=value)
    return record


def set_options(sock: socket.socket, handle: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Set options in order, stopping after the first that fails (its record is the last)."""
    records = []
    for name, value in options.items():
        records.append(set_option(sock, handle, name, value))
        if records[-1]["errno"] is not None:
            break
    return records


def get_option(sock: socket.socket, handle: str, name: str) -> dict[str, Any]:
    """Read one option; the record carries `value` (and `value_name` for so_error)."""
    if name == NONBLOCKING:
        record, flags = timed("fcntl", handle, lambda: fcntl.fcntl(sock.fileno(), fcntl.F_GETFL))
        record.update(name=name, value=None if flags is None else bool(flags & os.O_NONBLOCK))
        return record
    opt = OPTIONS.get(name) or READ_ONLY.get(name)
    if opt is None:
        raise BadRequest(f"unknown socket option {name!r} (argument 'name'); readable: {', '.join(READABLE)}")
    size = {"seconds": _TIMEVAL.size, "linger": _LINGER.size}.get(opt.kind, 0)
    if size:
        record, raw = timed("getsockopt", handle, lambda: sock.getsockopt(opt.level, opt.name, size), ret=lambda _: 0)
        value = None if raw is None else _decode(opt.kind, raw)
    else:
        record, value = timed("getsockopt", handle, lambda: sock.getsockopt(opt.level, opt.name), ret=lambda _: 0)
    record.update(name=name, value=value)
    if opt.kind == "errno":
        record["value_name"] = errname(value) if value else None
    return record


def timeval(seconds: float) -> bytes:
    """A struct timeval (SO_SNDTIMEO, SO_RCVTIMEO) holding `seconds`."""
    whole = int(seconds)
    return _TIMEVAL.pack(whole, round((seconds - whole) * 1_000_000))


TIMEVAL_SIZE = _TIMEVAL.size


def _encode(kind: str, value: Any) -> int | bytes:
    if kind == "seconds":
        return timeval(value)
    if kind == "linger":
        return _LINGER.pack(*value)
    return int(value)


def _decode(kind: str, raw: bytes) -> Any:
    if kind == "seconds":
        sec, usec = _TIMEVAL.unpack(raw)
        return sec + usec / 1_000_000
    return list(_LINGER.unpack(raw))
