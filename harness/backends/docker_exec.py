"""The agent's byte stream through the Docker API: an exec with stdin attached, off the test network.

It goes through the engine's API socket (unix, tcp+tls or ssh), never over the container network that faults
break, so it works unchanged against a remote DOCKER_HOST.
"""

from __future__ import annotations

import collections
import errno
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import docker

STDOUT, STDERR = 1, 2
_STDERR_TAIL_LINES = 200


def _writable(sock: Any) -> Any:
    """The object with sendall/shutdown under what docker-py returns for a hijacked stream."""
    return getattr(sock, "_sock", sock)


def _read_exactly(sock: Any, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = docker.utils.socket.read(sock, n - len(buf))
        if not chunk:
            return bytes(buf)
        buf += chunk
    return bytes(buf)


def frames(sock: Any) -> Iterator[tuple[int, bytes]]:
    """(stream, data) frames of a multiplexed exec stream (STDOUT, STDERR) until it ends; closes `sock`."""
    try:
        while True:
            header = _read_exactly(sock, 8)
            if len(header) < 8:
                return
            stream, size = struct.unpack(">BxxxL", header)
            data = _read_exactly(sock, size)
            yield stream, data
            if len(data) < size:
                return
    finally:
        sock.close()


class DockerExecTransport:
    """Runs `cmd` in a container with `docker exec -i` semantics and exposes its stdin/stdout."""

    def __init__(self, api: docker.APIClient, container_id: str, cmd: list[str], env: dict[str, str] | None = None):
        exec_id = api.exec_create(container_id, cmd, stdin=True, stdout=True, stderr=True, tty=False,
                                  environment=env)["Id"]
        self._api = api
        self._exec_id = exec_id
        self._sock = api.exec_start(exec_id, socket=True)
        self._out = _writable(self._sock)
        self._write_lock = threading.Lock()
        self._stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self._partial_err = b""
        self._closed = False

    def write(self, data: bytes) -> None:
        with self._write_lock:
            self._out.sendall(data)

    def chunks(self) -> Iterator[bytes]:
        """Stdout bytes until the exec ends; stderr frames go to the tail kept for error messages."""
        for stream, data in frames(self._sock):
            if stream == STDOUT:
                yield data
            elif stream == STDERR:
                self._keep_stderr(data)

    def _keep_stderr(self, data: bytes) -> None:
        lines = (self._partial_err + data).split(b"\n")
        self._partial_err = lines.pop()
        self._stderr.extend(line.decode(errors="replace") for line in lines)

    def stderr_tail(self) -> str:
        tail = list(self._stderr)
        if self._partial_err:
            tail.append(self._partial_err.decode(errors="replace"))
        return "\n".join(tail)

    def exit_code(self) -> int | None:
        """The exec's exit code once it ended (None while it runs)."""
        return self._api.exec_inspect(self._exec_id).get("ExitCode")

    def close(self) -> None:
        """End the stream both ways: the agent sees EOF on stdin and exits, the reader sees EOF and stops."""
        if self._closed:
            return
        self._closed = True
        try:
            self._out.shutdown(socket.SHUT_RDWR)
        except OSError as exc:
            if exc.errno not in (errno.ENOTCONN, errno.EBADF):
                raise
