"""Child processes by name (spawned commands and workers): spawn, signal, wait; and run-to-completion."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
from typing import IO, Any

from .errors import BadRequest
from .records import clocks, timed


def parse_signal(name: str) -> signal.Signals:
    """"SIGKILL" or "KILL" -> signal.SIGKILL; anything else is a BadRequest."""
    full = name if name.startswith("SIG") else f"SIG{name}"
    if full not in signal.Signals.__members__:
        raise BadRequest(f"argument 'signal' must be a signal name like SIGKILL, SIGTERM, SIGSTOP, not {name!r}")
    return signal.Signals[full]


def exit_status(returncode: int | None) -> dict[str, Any]:
    """Popen's returncode as the protocol reports it: negative means killed by that signal."""
    if returncode is not None and returncode < 0:
        return {"returncode": returncode, "signal": signal.Signals(-returncode).name}
    return {"returncode": returncode, "signal": None}


def _text(raw: bytes) -> str:
    return raw.decode(errors="replace")


def _argv(cmd: list[str]) -> list[str]:
    if not cmd:
        raise BadRequest("argument 'cmd' must be a non-empty argv list, e.g. [\"sleep\", \"60\"]")
    return cmd


class Child:
    """A named child process; signals go through a pidfd, so a reaped pid is never signalled by mistake."""

    kind = "command"

    def __init__(self, name: str, popen: subprocess.Popen[bytes],
                 stdout: IO[bytes] | None = None, stderr: IO[bytes] | None = None) -> None:
        self.name = name
        self.popen = popen
        self.pidfd = os.pidfd_open(popen.pid)
        self._stdout = stdout
        self._stderr = stderr

    def signal(self, sig: signal.Signals) -> dict[str, Any]:
        record, _ = timed("pidfd_send_signal", None, lambda: signal.pidfd_send_signal(self.pidfd, sig))
        record.update(target=self.name, target_pid=self.popen.pid, signal=sig.name)
        return record

    def output(self) -> dict[str, str]:
        """What a spawned command wrote so far (workers write their stderr into the agent's log)."""
        def read(file: IO[bytes] | None) -> str:
            if file is None:
                return ""
            file.seek(0)
            return _text(file.read())
        return {"stdout": read(self._stdout), "stderr": read(self._stderr)}

    def stop(self) -> None:
        """End the process (SIGKILL) and reap it."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()

    def close(self) -> None:
        os.close(self.pidfd)
        for file in (self._stdout, self._stderr):
            if file is not None:
                file.close()


class Children:
    """The named children of this agent process; names are unique while the child is known."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._children: dict[str, Child] = {}

    def reserve(self, name: str) -> None:
        """Fail early if `name` is taken (before starting a process for it)."""
        with self._lock:
            if name in self._children:
                raise BadRequest(f"a process named {name!r} exists already (argument 'name'); wait for it first")

    def add(self, child: Child) -> None:
        with self._lock:
            if child.name in self._children:
                child.stop()
                child.close()
                raise BadRequest(f"a process named {child.name!r} exists already (argument 'name')")
            self._children[child.name] = child

    def get(self, name: str) -> Child:
        with self._lock:
            child = self._children.get(name)
            known = ", ".join(self._children) or "none"
        if child is None:
            raise BadRequest(f"unknown process {name!r} (argument 'name'); known: {known}")
        return child

    def spawn(self, cmd: list[str], name: str) -> dict[str, Any]:
        """Start `cmd` with stdin from /dev/null and stdout/stderr captured to files."""
        self.reserve(name)
        stdout, stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        try:
            popen = subprocess.Popen(_argv(cmd), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
        except OSError:
            stdout.close()
            stderr.close()
            raise
        self.add(Child(name, popen, stdout, stderr))
        return {"name": name, "pid": popen.pid}

    def signal(self, name: str, signal: str = "SIGKILL") -> dict[str, Any]:
        return self.get(name).signal(parse_signal(signal))

    def wait(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the child to exit; then it is forgotten. On timeout it keeps running (`timed_out`)."""
        child = self.get(name)
        try:
            child.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return {"name": name, **exit_status(None), "timed_out": True, **child.output()}
        with self._lock:
            self._children.pop(name, None)
        result = {"name": name, **exit_status(child.popen.returncode), "timed_out": False, **child.output()}
        child.close()
        return result

    def discard(self, name: str) -> None:
        """Kill (if needed) and forget one child, unless a reset did already."""
        with self._lock:
            child = self._children.pop(name, None)
        if child is None:
            return
        child.stop()
        child.close()

    def stop_all(self) -> list[str]:
        """End and reap every child (commands by SIGKILL, workers after their own reset)."""
        with self._lock:
            children, self._children = self._children, {}
        for child in children.values():
            child.stop()
            child.close()
        return sorted(children)


def run(cmd: list[str], timeout: float | None = None, input: str | None = None) -> dict[str, Any]:
    """Run `cmd` to completion (killed with SIGKILL after `timeout`); output as text."""
    start = clocks()
    popen = subprocess.Popen(_argv(cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    data = None if input is None else input.encode()
    try:
        out, err = popen.communicate(data, timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        popen.kill()
        out, err = popen.communicate()
        timed_out = True
    end = clocks()
    return {**exit_status(popen.returncode), "timed_out": timed_out, "stdout": _text(out), "stderr": _text(err),
            "t0": start["mono"], "t1": end["mono"], "t0_real": start["real"], "t1_real": end["real"]}
