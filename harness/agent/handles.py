"""Sockets held by handle ("s3"), and listeners that accept in the background."""

from __future__ import annotations

import errno
import itertools
import os
import select
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from .errors import BadRequest
from .records import timed


def address(addr: Any) -> list[Any] | None:
    """A socket address as JSON: [host, port], or None when there is none."""
    return [addr[0], addr[1]] if isinstance(addr, tuple) else None


@dataclass
class Entry:
    sock: socket.socket
    accept_loop: AcceptLoop | None = None
    inode: int = field(init=False)

    def __post_init__(self) -> None:
        self.inode = os.fstat(self.sock.fileno()).st_ino


class HandleTable:
    """The open sockets of this process by handle; thread-safe.

    Handles are "s1", "s2"... in the main agent and "<worker>:s1"... in a worker, so a handle sent to the
    wrong process is an unknown handle rather than somebody else's socket.
    """

    def __init__(self, prefix: str = "") -> None:
        self._prefix = prefix
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._numbers = itertools.count(1)

    def add(self, sock: socket.socket) -> str:
        entry = Entry(sock)
        with self._lock:
            handle = f"{self._prefix}s{next(self._numbers)}"
            self._entries[handle] = entry
        return handle

    def entry(self, handle: str) -> Entry:
        with self._lock:
            found = self._entries.get(handle)
            known = ", ".join(self._entries) or "none"
        if found is None:
            raise BadRequest(f"unknown handle {handle!r} (argument 'handle'); open handles: {known}")
        return found

    def get(self, handle: str) -> socket.socket:
        return self.entry(handle).sock

    def pop(self, handle: str) -> Entry:
        entry = self.entry(handle)
        with self._lock:
            del self._entries[handle]
        return entry

    def inodes(self) -> dict[int, str]:
        """Socket inode -> handle, to name this process's sockets in sock_diag snapshots."""
        with self._lock:
            return {entry.inode: handle for handle, entry in self._entries.items()}

    def close_all(self) -> dict[str, Any]:
        """Stop accept loops, then shut down and close every socket (waking threads blocked on them)."""
        with self._lock:
            entries, self._entries = self._entries, {}
        errors = {}
        for handle, entry in entries.items():
            if entry.accept_loop is not None:
                entry.accept_loop.stop()
            try:
                _shutdown_and_close(entry.sock)
            except OSError as exc:
                print(f"reset: closing {handle}: {exc}", file=sys.stderr)
                errors[handle] = str(exc)
        return {"closed": sorted(entries), "errors": errors}


def _shutdown_and_close(sock: socket.socket) -> None:
    # close() alone does not wake a thread blocked in recv() or accept() on the same socket: shutdown() does.
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise
    sock.close()


class AcceptLoop:
    """Accepts on a listener in a thread until stopped; accepted sockets become handles.

    The listener is made non-blocking and waited on with poll() beside a stop pipe, so stopping needs no
    shutdown() of the listener: closing it afterwards behaves as a program's close() would.
    """

    def __init__(self, listener: socket.socket, handle: str, table: HandleTable) -> None:
        self._listener = listener
        self._handle = handle
        self._table = table
        self._records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop_r, self._stop_w = os.pipe()
        listener.setblocking(False)
        self._thread = threading.Thread(target=self._run, name=f"accept-{handle}", daemon=True)
        self._thread.start()

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._records)

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join()
        os.close(self._stop_r)
        os.close(self._stop_w)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._listener.fileno(), select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._stop_r in ready:
                return
            record, accepted = timed("accept", None, self._listener.accept, ret=lambda v: v[0].fileno())
            if record["errno"] == errno.EAGAIN:
                continue  # the connection went away between poll() and accept(): nothing the workload saw
            record["listener"] = self._handle
            if accepted is not None:
                conn, peer = accepted
                record.update(handle=self._table.add(conn), peer=address(peer))
            with self._lock:
                self._records.append(record)
            if record["errno"] not in (None, errno.ECONNABORTED):
                return
