"""Child processes by name (spawned commands and workers): spawn, signal, wait; and run-to-completion."""

from __future__ import annotations

import base64
import os
import select
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


def _times(prefix: str, at: dict[str, float] | None) -> dict[str, float | None]:
    return {prefix: at and at["mono"], f"{prefix}_real": at and at["real"]}


class Child:
    """A named child process; signals go through a pidfd, so a reaped pid is never signalled by mistake.

    `started` and `ended` are both clocks right before the start and when the process ended (seen by a thread
    polling a pidfd, so the time is right even when nobody waits for it then).
    """

    kind = "command"

    def __init__(self, name: str, popen: subprocess.Popen[bytes],
                 stdout: IO[bytes] | None = None, stderr: IO[bytes] | None = None,
                 started: dict[str, float] | None = None) -> None:
        self.name = name
        self.popen = popen
        self.pidfd = os.pidfd_open(popen.pid)
        self._stdout = stdout
        self._stderr = stderr
        self._files_lock = threading.Lock()
        self.started = started
        self.ended: dict[str, float] | None = None
        self._watcher = threading.Thread(target=self._watch, args=(os.dup(self.pidfd),), name=f"exit-{name}",
                                         daemon=True)
        self._watcher.start()

    def _watch(self, pidfd: int) -> None:
        try:
            select.select([pidfd], [], [])
            self.ended = clocks()
        finally:
            os.close(pidfd)

    def times(self) -> dict[str, float | None]:
        """t0/t1 (CLOCK_MONOTONIC) and t0_real/t1_real around the process's life; t1 None while it runs."""
        if self.popen.returncode is not None:
            self._watcher.join(1.0)
        return {**_times("t0", self.started), **_times("t1", self.ended)}

    def signal(self, sig: signal.Signals) -> dict[str, Any]:
        record, _ = timed("pidfd_send_signal", None, lambda: signal.pidfd_send_signal(self.pidfd, sig))
        record.update(target=self.name, target_pid=self.popen.pid, signal=sig.name)
        return record

    def output(self, tail: int | None = None) -> dict[str, Any]:
        """What a spawned command wrote so far (workers write their stderr into the agent's log): as text, or
        with `tail` the last `tail` bytes of each as base64 with the sizes written in all (`stdout_size`...)."""
        result: dict[str, Any] = {}
        with self._files_lock:
            for key, file in (("stdout", self._stdout), ("stderr", self._stderr)):
                size = 0 if file is None or file.closed else os.fstat(file.fileno()).st_size
                data = b""
                if size:
                    file.seek(0 if tail is None else max(0, size - tail))
                    data = file.read()
                if tail is None:
                    result[key] = _text(data)
                else:
                    result[key] = base64.b64encode(data).decode()
                    result[f"{key}_size"] = size
        return result

    def stop(self) -> None:
        """End the process (SIGKILL) and reap it."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()

    def close(self) -> None:
        """Release the pidfd and output files (idempotent: a reset and a wait may both get here)."""
        with self._files_lock:
            if self.pidfd < 0:
                return
            os.close(self.pidfd)
            self.pidfd = -1
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

    def spawn(self, cmd: list[str], name: str, env: dict[str, str] | None = None,
              cwd: str | None = None) -> dict[str, Any]:
        """Start `cmd` with stdin from /dev/null and stdout/stderr captured to files; `env` is added to the
        agent's environment, `cwd` is the directory it starts in."""
        self.reserve(name)
        stdout, stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        started = clocks()
        try:
            popen = subprocess.Popen(_argv(cmd), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                     env=None if env is None else {**os.environ, **env}, cwd=cwd)
        except OSError:
            stdout.close()
            stderr.close()
            raise
        self.add(Child(name, popen, stdout, stderr, started))
        return {"name": name, "pid": popen.pid, **_times("t0", started)}

    def signal(self, name: str, signal: str = "SIGKILL") -> dict[str, Any]:
        return self.get(name).signal(parse_signal(signal))

    def output(self, name: str, tail: int | None = None) -> dict[str, Any]:
        """A child's output so far (see `Child.output`) and whether it still runs; it is not forgotten."""
        child = self.get(name)
        returncode = child.popen.poll()
        return {"name": name, "running": returncode is None, **exit_status(returncode), **child.times(),
                **child.output(tail)}

    def wait(self, name: str, timeout: float | None = None, tail: int | None = None) -> dict[str, Any]:
        """Wait for the child to exit; then it is forgotten. On timeout it keeps running (`timed_out`).
        With `tail`, the output is the last `tail` bytes of each stream, as base64 (see `Child.output`)."""
        child = self.get(name)
        try:
            child.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return {"name": name, **exit_status(None), "timed_out": True, **child.times(), **child.output(tail)}
        with self._lock:
            self._children.pop(name, None)
        result = {"name": name, **exit_status(child.popen.returncode), "timed_out": False, **child.times(),
                  **child.output(tail)}
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


_pidfd_send_signal = signal.pidfd_send_signal  # `signal` is also an argument name below


def _environ(pid: str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            return file.read()
    except OSError:
        return None


def signal_marked(marker: str, signal: str = "SIGKILL") -> dict[str, Any]:
    """Signal the process started with `marker` ("NAME=value") in its environment whose parent lacks it: a
    program another party started in this PID namespace (`docker exec`), which this agent cannot name by pid.

    `records`: one pidfd_send_signal record per process signalled (none when no process has the marker);
    `unreadable`: pids whose environment this agent may not read (another user's, without CAP_SYS_PTRACE).
    """
    sig = parse_signal(signal)
    wanted = b"\0" + marker.encode() + b"\0"
    environs: dict[str, bytes | None] = {pid: _environ(pid) for pid in os.listdir("/proc") if pid.isdigit()}

    def marked(pid: str) -> bool:
        return wanted in b"\0" + (environs.get(pid) or b"")

    def parent(pid: str) -> str | None:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
                return file.read().rsplit(")", 1)[1].split()[1]
        except OSError:
            return None  # gone meanwhile
    # All targets first: a signalled parent that exits at once would make its marked children look like tops.
    targets = [pid for pid in environs if marked(pid) and (ppid := parent(pid)) is not None and not marked(ppid)]
    records = []
    for pid in targets:
        try:
            pidfd = os.pidfd_open(int(pid))
        except OSError:
            continue
        try:
            record, _ = timed("pidfd_send_signal", None, lambda: _pidfd_send_signal(pidfd, sig))
            records.append({**record, "target_pid": int(pid), "signal": sig.name})
        finally:
            os.close(pidfd)
    return {"records": records, "unreadable": sorted(int(pid) for pid, env in environs.items() if env is None)}
