"""The harness side of the agent protocol over any byte stream: request ids, futures, one reader thread.

A transport carries bytes (a local pipe here, a Docker exec stream in harness.backends.docker_exec); the
channel turns them into calls. Errors the agent answers with become exceptions that say which host, which
op, what happened, and end with the tail of the agent's stderr.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

REPO_ROOT = Path(__file__).resolve().parent.parent
STDERR_TAIL_LINES = 60
STDERR_SETTLE = 1.0


class Transport(Protocol):
    """A byte stream to one agent."""

    def write(self, data: bytes) -> None:
        """Send bytes to the agent's stdin (whole lines; callers serialize writes)."""

    def chunks(self) -> Iterator[bytes]:
        """The agent's stdout, chunk by chunk, until EOF."""

    def stderr_tail(self) -> str:
        """The last lines the agent wrote to stderr."""

    def close(self) -> None:
        """Close stdin (the agent then exits) and release the stream."""


class PipeTransport:
    """The agent as a local child process (`python -m harness.agent`, or `argv`) talking over pipes."""

    def __init__(self, argv: Sequence[str] | None = None, *, env: dict[str, str] | None = None,
                 exit_timeout: float = 10.0) -> None:
        self.argv = list(argv) if argv is not None else [sys.executable, "-m", "harness.agent"]
        environ = dict(os.environ if env is None else env)
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), environ.get("PYTHONPATH")]))
        self._exit_timeout = exit_timeout
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.popen = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=environ)
        self._stderr_reader = threading.Thread(target=self._read_stderr, name="agent-stderr", daemon=True)
        self._stderr_reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read_stderr(self) -> None:
        for line in self.popen.stderr:
            self._stderr.append(line.decode(errors="replace").rstrip("\n"))

    def write(self, data: bytes) -> None:
        if self.popen.stdin.closed:
            raise BrokenPipeError("the agent's stdin is closed already")
        self.popen.stdin.write(data)
        self.popen.stdin.flush()

    def chunks(self) -> Iterator[bytes]:
        fd = self.popen.stdout.fileno()
        while chunk := os.read(fd, 65536):
            yield chunk
        # Let the last words on stderr arrive before errors quote them (a worker may hold stderr open).
        self._stderr_reader.join(STDERR_SETTLE)

    def stderr_tail(self) -> str:
        return "\n".join(self._stderr)

    def close(self) -> None:
        """Close stdin and wait for the agent to clean up and exit (SIGKILL after `exit_timeout`)."""
        if not self.popen.stdin.closed:
            try:
                self.popen.stdin.close()
            except BrokenPipeError:
                pass  # the agent is gone already; waiting below reaps it
        try:
            self.popen.wait(self._exit_timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self._stderr_reader.join()
        self.popen.stdout.close()
        self.popen.stderr.close()


class AgentError(Exception):
    """An error answer from an agent (or the loss of the agent)."""

    def __init__(self, host: str, op: str, message: str, stderr_tail: str = "",
                 error: dict[str, Any] | None = None) -> None:
        self.host, self.op, self.error = host, op, error or {}
        self.stderr_tail = stderr_tail
        text = f"{host}: {op}: {message}"
        if stderr_tail:
            text += "\n--- agent stderr (last lines) ---\n" + stderr_tail
        super().__init__(text)


class BadRequest(AgentError):
    """The agent did not understand the request: unknown op, argument, handle or value."""


class ProcessDied(AgentError):
    """The worker the request went to died; `signal` names the signal that killed it, if any."""

    @property
    def signal(self) -> str | None:
        return self.error.get("signal")

    @property
    def returncode(self) -> int | None:
        return self.error.get("returncode")


class AgentOSError(AgentError):
    """A non-socket operation failed in the agent (sysctl write, spawn, capture...)."""

    @property
    def errno(self) -> int | None:
        return self.error.get("errno")

    @property
    def errname(self) -> str | None:
        return self.error.get("errname")


class AgentInternalError(AgentError):
    """A bug in the agent; `traceback` is the agent's."""

    @property
    def traceback(self) -> str:
        return str(self.error.get("traceback", ""))


class ChannelClosed(AgentError):
    """The agent's stream ended (the agent exited or was killed) before the answer came."""


ERROR_TYPES: dict[str, type[AgentError]] = {
    "BadRequest": BadRequest, "ProcessDied": ProcessDied, "OSError": AgentOSError, "Internal": AgentInternalError,
}


class AgentChannel:
    """Calls into one agent; thread-safe. Answers are matched to requests by id in a reader thread."""

    def __init__(self, transport: Transport, name: str) -> None:
        self.transport = transport
        self.name = name
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending: dict[int, tuple[str, str | None, Future[dict[str, Any]]]] = {}
        self._closed_reason: str | None = None
        self._reader = threading.Thread(target=self._read, name=f"agent-{name}", daemon=True)
        self._reader.start()

    def submit(self, op: str, *, proc: str | None = None, **args: Any) -> Future[dict[str, Any]]:
        """Send a request now; the future holds the result dict or raises an AgentError."""
        future: Future[dict[str, Any]] = Future()
        request: dict[str, Any] = {"op": op, "args": args}
        if proc is not None:
            request["proc"] = proc
        with self._lock:
            if self._closed_reason is not None:
                future.set_exception(self._closed(op, proc, self._closed_reason))
                return future
            request["id"] = request_id = next(self._ids)
            self._pending[request_id] = (op, proc, future)
        try:
            with self._write_lock:
                self.transport.write(json.dumps(request).encode() + b"\n")
        except OSError as exc:
            with self._lock:
                unanswered = self._pending.pop(request_id, None)
            if unanswered is not None:
                future.set_exception(self._closed(op, proc, f"writing the request failed: {exc!r}"))
        return future

    def call(self, op: str, *, proc: str | None = None, timeout: float | None = None, **args: Any) -> dict[str, Any]:
        """Send a request and wait for its result (TimeoutError after `timeout` seconds)."""
        future = self.submit(op, proc=proc, **args)
        try:
            return future.result(timeout)
        except TimeoutError:
            raise TimeoutError(f"{self._where(proc)}: no answer to {op!r} within {timeout} s") from None

    def close(self) -> None:
        """Close the transport (the agent exits); pending calls fail with ChannelClosed."""
        self.transport.close()
        self._reader.join()

    def _where(self, proc: str | None) -> str:
        return self.name if proc is None else f"{self.name}/{proc}"

    def _closed(self, op: str, proc: str | None, reason: str) -> ChannelClosed:
        return ChannelClosed(self._where(proc), op, f"channel closed: {reason}", self.transport.stderr_tail())

    def _read(self) -> None:
        reason = "the agent's output ended (it exited or was killed)"
        try:
            reason = self._read_answers() or reason
        except Exception as exc:  # noqa: BLE001 - the stream broke: every pending and later call learns why
            reason = f"reading the agent's output failed: {exc!r}"
        with self._lock:
            self._closed_reason = reason
            pending, self._pending = self._pending, {}
        for op, proc, future in pending.values():
            future.set_exception(self._closed(op, proc, reason))

    def _read_answers(self) -> str | None:
        """Deliver answers until EOF (None) or a line that is not an answer (the reason to give up)."""
        # A long answer (a pcap) comes in many chunks: keep them in a list until its newline arrives, so that
        # assembling it costs its length once, not once per chunk.
        partial: list[bytes] = []
        for chunk in self.transport.chunks():
            if b"\n" not in chunk:
                partial.append(chunk)
                continue
            first, *lines, rest = chunk.split(b"\n")
            for line in (b"".join(partial) + first, *lines):
                if line.strip() and not self._deliver(line):
                    return f"the agent wrote a line that is not an answer: {line[:300]!r}"
            partial = [rest]
        return None

    def _deliver(self, line: bytes) -> bool:
        try:
            answer = json.loads(line)
            request_id = answer["id"]
        except (ValueError, KeyError, TypeError):
            return False
        with self._lock:
            entry = self._pending.pop(request_id, None)
        if entry is None:
            if request_id is None and answer.get("ok") is False:
                print(f"agent {self.name}: error answer to no request: {answer.get('error')}", file=sys.stderr)
                return True
            return False
        op, proc, future = entry
        if answer.get("ok"):
            future.set_result(answer["result"])
        else:
            error = answer.get("error") or {}
            kind = ERROR_TYPES.get(error.get("type"), AgentInternalError)
            future.set_exception(kind(self._where(proc), op, f"{error.get('type')}: {error.get('message')}",
                                      self.transport.stderr_tail(), error))
        return True
