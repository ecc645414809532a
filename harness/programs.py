"""Programs in hosts: started in the background (`Host.launch`) or a container's own command
(`Host.main_program`); waited for, killed by signal, their exit status, output and times.

Three kinds, one interface (`Program`):
- `AgentProgram`: a child of the host's agent (`spawn`; the netns backend). The agent keeps its output and
  times its start and end on the host's CLOCK_MONOTONIC.
- `ExecProgram`: a `docker exec` in the host's container (the Docker backend; the only way besides its own
  command to start something in a FROM-scratch image). Its output comes over the exec stream; it carries
  `NETFAULT_LAUNCH=<token>` in its environment, by which the host's agent (in the container, or in the sidecar
  that shares its PID namespace) finds and signals it. Times are this machine's CLOCK_MONOTONIC: the
  engine's containers share its kernel (as the timeline assumes).
- `ContainerProgram`: the container's own command (its PID 1, or docker-init's child with `init`).

Docker reports a death by signal N as exit status 128+N; such statuses are reported as that signal, like the
agent's (`returncode` -N, `signal` its name). Launches, exits and kills are noted in the test's evidence.
"""

from __future__ import annotations

import base64
import datetime
import secrets
import shlex
import signal as signals
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import docker
import docker.errors

from . import evidence
from .backends.docker_exec import STDOUT, frames
from .channel import AgentError, BadRequest, ChannelClosed
from .errors import NetfaultError
from .records import SyscallRecord

if TYPE_CHECKING:
    from .endpoint import Endpoint

OUTPUT_LIMIT = 1 << 20  # bytes of each stream a result keeps (the last ones)
LAUNCH_MARKER = "NETFAULT_LAUNCH"
_START_TIMEOUT = 10.0  # seconds for an exec to be running
_KILL_RETRY = 1.0  # seconds to find a just-started exec by its marker
_POLL = 0.02


class ProgramError(NetfaultError):
    """A program could not be started, signalled, or its end is unknown (its host went away first)."""


@dataclass(frozen=True)
class ProgramResult:
    """A program's state: ended (`returncode` set) or still running (`returncode` None, `t1` None).

    `returncode` is the exit status, or minus the signal's number when a signal ended it (`signal` is then its
    name). `stdout`/`stderr` are the last OUTPUT_LIMIT bytes; `*_size` count all it wrote. `t0`/`t1`: the
    host's CLOCK_MONOTONIC at start and end (`t0` None for a container's command started before the host was
    made, when unknown).
    """

    host: str
    name: str
    argv: tuple[str, ...]
    returncode: int | None
    signal: str | None
    stdout: bytes
    stderr: bytes
    stdout_size: int
    stderr_size: int
    t0: float | None
    t1: float | None

    @property
    def running(self) -> bool:
        return self.returncode is None

    @property
    def truncated(self) -> list[str]:
        """The streams of which only the last OUTPUT_LIMIT bytes are kept."""
        return [name for name, data, size in (("stdout", self.stdout, self.stdout_size),
                                              ("stderr", self.stderr, self.stderr_size)) if size > len(data)]

    def status(self) -> str:
        """"running", "exited with status N" or "killed by SIGNAME"."""
        if self.returncode is None:
            return "running"
        return f"killed by {self.signal}" if self.signal else f"exited with status {self.returncode}"

    def __str__(self) -> str:
        cut = "".join(f"; {name}: last {OUTPUT_LIMIT} of {getattr(self, name + '_size')} bytes"
                      for name in self.truncated)
        return f"program {self.name} on {self.host} ({shlex.join(self.argv)}): {self.status()}{cut}"


def _from_status(code: int | None) -> tuple[int | None, str | None]:
    """(returncode, signal) of a Docker exit status (128+N: signal N)."""
    if code is not None and 128 < code < 128 + signals.NSIG:
        try:
            return -(code - 128), signals.Signals(code - 128).name
        except ValueError:
            pass
    return code, None


class Program(ABC):
    """A program in a host. `wait`, `kill`, `running`, `output_so_far`; its launch and end go to the evidence."""

    def __init__(self, host: str, name: str, argv: Sequence[str]) -> None:
        self.host = host
        self.name = name
        self.argv = tuple(argv)
        self._final: ProgramResult | None = None
        self._final_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} on {self.host}: {shlex.join(self.argv)}>"

    @abstractmethod
    def wait(self, timeout: float | None = None) -> ProgramResult:
        """Its result once it ended; after `timeout` seconds its state so far (`returncode` None)."""

    @abstractmethod
    def kill(self, signal: str = "SIGKILL") -> None:
        """Send it `signal` (a no-op once it ended)."""

    @abstractmethod
    def running(self) -> bool:
        """Whether it has not ended yet."""

    @abstractmethod
    def output_so_far(self) -> ProgramResult:
        """Its state and output now, without waiting."""

    def _noted_start(self, t0: float | None, pid: int | None) -> None:
        detail = f" (pid {pid})" if pid else ""
        evidence.note_program(self.host, t0, f"launch {self.name}: {shlex.join(self.argv)}{detail}",
                              {"program": self.name, "argv": list(self.argv), "pid": pid, "event": "launch"})

    def _ended(self, result: ProgramResult) -> ProgramResult:
        """Keep the final result (the first one) and note the exit in the evidence once."""
        with self._final_lock:
            if self._final is not None:
                return self._final
            self._final = result
        self._note_exit(result)
        return result

    def _note_exit(self, result: ProgramResult) -> None:
        evidence.note_output(result)
        evidence.note_program(self.host, result.t1, f"exit   {self.name}: {result.status()}",
                              {"program": self.name, "event": "exit", "returncode": result.returncode,
                               "signal": result.signal, "t0": result.t0, "t1": result.t1})

    def _result(self, returncode: int | None, signal: str | None, out: tuple[bytes, int], err: tuple[bytes, int],
                t0: float | None, t1: float | None) -> ProgramResult:
        return ProgramResult(self.host, self.name, self.argv, returncode, signal, out[0][-OUTPUT_LIMIT:],
                             err[0][-OUTPUT_LIMIT:], out[1], err[1], t0, t1)


# ---------------------------------------------------------------- the agent's children (netns backend)

class AgentProgram(Program):
    """A child of the host's agent, started with `spawn`; a background `wait` collects its end."""

    def __init__(self, endpoint: Endpoint, name: str, argv: Sequence[str], env: Mapping[str, str] | None,
                 cwd: str | None) -> None:
        super().__init__(endpoint.host, name, argv)
        self._channel = endpoint.channel  # the agent that owns the child; a new one after a boot does not know it
        started = self._channel.call("spawn", cmd=list(argv), name=name, env=None if env is None else dict(env),
                                     cwd=cwd)
        self.t0: float = started["t0"]
        self._noted_start(self.t0, started["pid"])
        self._done: Future[dict[str, Any]] = self._channel.submit("wait", name=name, tail=OUTPUT_LIMIT)
        self._done.add_done_callback(self._on_done)

    def _on_done(self, _: Future[dict[str, Any]]) -> None:
        """Note the end in the evidence as soon as the agent reports it (a lost agent is said by `wait`)."""
        try:
            self._collect()
        except ProgramError:
            pass

    def _convert(self, answer: dict[str, Any]) -> ProgramResult:
        def stream(key: str) -> tuple[bytes, int]:
            return base64.b64decode(answer[key]), int(answer[f"{key}_size"])
        return self._result(answer["returncode"], answer["signal"], stream("stdout"), stream("stderr"), answer["t0"],
                            answer["t1"] if answer["returncode"] is not None else None)

    def _collect(self) -> ProgramResult:
        try:
            answer = self._done.result()
        except ChannelClosed as exc:
            raise ProgramError(f"{self}: its host's agent went away before the program's end was known (a kill, "
                               f"stop or restart of the host ends its programs): {exc}") from exc
        return self._ended(self._convert(answer))

    def wait(self, timeout: float | None = None) -> ProgramResult:
        try:
            self._done.result(timeout)
        except FutureTimeout:
            return self.output_so_far()
        except AgentError:
            pass  # raised with context by _collect
        return self._collect()

    def running(self) -> bool:
        return not self._done.done()

    def output_so_far(self) -> ProgramResult:
        if self._done.done():
            return self._collect()
        try:
            return self._convert(self._channel.call("output", name=self.name, tail=OUTPUT_LIMIT))
        except BadRequest:  # collected meanwhile
            return self.wait()

    def kill(self, signal: str = "SIGKILL") -> None:
        if self._done.done():
            return
        try:
            answer = self._channel.call("signal", name=self.name, signal=signal)
        except BadRequest as exc:
            if self._done.done() or "unknown process" in str(exc):
                return
            raise
        evidence.note_records(self.host, SyscallRecord.from_dict(answer))


# ---------------------------------------------------------------- docker exec (Docker backend)

class _Tail:
    """The last OUTPUT_LIMIT bytes of a stream and how many it had."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.size = 0
        self.lock = threading.Lock()

    def add(self, chunk: bytes) -> None:
        with self.lock:
            self.size += len(chunk)
            self.data += chunk
            if len(self.data) > 2 * OUTPUT_LIMIT:
                del self.data[:-OUTPUT_LIMIT]

    def get(self) -> tuple[bytes, int]:
        with self.lock:
            return bytes(self.data[-OUTPUT_LIMIT:]), self.size


class ExecProgram(Program):
    """`argv` as a `docker exec` in a container; signalled through the host's `agent` (its channel at the time:
    the agent in the container, or in the sidecar sharing its PID namespace)."""

    def __init__(self, api: docker.APIClient, container_id: str, agent: Endpoint, name: str, argv: Sequence[str],
                 env: Mapping[str, str] | None, cwd: str | None) -> None:
        super().__init__(agent.host, name, argv)
        host = agent.host
        self._api = api
        self._agent = agent
        self.marker = f"{LAUNCH_MARKER}={name}-{secrets.token_hex(6)}"
        environment = {**(env or {}), LAUNCH_MARKER: self.marker.split("=", 1)[1]}
        try:
            self._exec_id = api.exec_create(container_id, list(argv), stdout=True, stderr=True, stdin=False,
                                            tty=False, environment=environment, workdir=cwd)["Id"]
            self.t0 = time.monotonic()
            sock = api.exec_start(self._exec_id, socket=True)
        except docker.errors.APIError as exc:
            raise ProgramError(f"host {host}: cannot start {shlex.join(argv)} with docker exec: {exc}") from exc
        self._out, self._err = _Tail(), _Tail()
        self._exit_code: int | None = None
        self.t1: float | None = None
        self._reader = threading.Thread(target=self._read, args=(sock,), name=f"exec-{name}", daemon=True)
        self._reader.start()
        self._started()
        self._noted_start(self.t0, None)

    def _started(self) -> None:
        """Wait until the process exists (the engine gave its pid) or ended; one the runtime could not start is a
        ProgramError."""
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            state = self._api.exec_inspect(self._exec_id)
            if state["Pid"] or state["ExitCode"] is not None:
                break
            if time.monotonic() > deadline:
                raise ProgramError(f"{self}: not running {_START_TIMEOUT:g} s after docker exec")
            time.sleep(_POLL)
        if not state["Running"]:
            self._reader.join(_START_TIMEOUT)
            out = b"".join(tail.get()[0] for tail in (self._out, self._err))
            if b"OCI runtime exec failed" in out:
                raise ProgramError(f"host {self.host}: cannot start {shlex.join(self.argv)}: "
                                   f"{out.decode(errors='replace').strip()} (is the program in the image?)")

    def _read(self, sock: Any) -> None:
        try:
            for stream, data in frames(sock):
                (self._out if stream == STDOUT else self._err).add(data)
        except OSError:
            pass  # the engine dropped the stream: the exit status below still says how it ended
        self.t1 = time.monotonic()
        deadline = self.t1 + _START_TIMEOUT
        while (state := self._api.exec_inspect(self._exec_id))["Running"] and time.monotonic() < deadline:
            time.sleep(_POLL)
        self._exit_code = state["ExitCode"]
        self._ended(self._now())

    def _now(self) -> ProgramResult:
        done = not self._reader.is_alive() or self._exit_code is not None
        returncode, signal = _from_status(self._exit_code) if done else (None, None)
        return self._result(returncode, signal, self._out.get(), self._err.get(), self.t0,
                            self.t1 if done else None)

    def wait(self, timeout: float | None = None) -> ProgramResult:
        self._reader.join(timeout)
        return self._final if self._final is not None else self._now()

    def running(self) -> bool:
        return self._final is None

    def output_so_far(self) -> ProgramResult:
        return self._final if self._final is not None else self._now()

    def kill(self, signal: str = "SIGKILL") -> None:
        deadline = time.monotonic() + _KILL_RETRY
        while self.running():
            answer = self._agent.channel.call("signal_marked", marker=self.marker, signal=signal)
            if answer["records"]:
                evidence.note_records(self.host, [SyscallRecord.from_dict(r) for r in answer["records"]])
                return
            if time.monotonic() > deadline:
                raise ProgramError(
                    f"{self}: no process with {self.marker} in its environment to send {signal} to, though docker "
                    f"says it runs; environments the agent could not read (pids {answer['unreadable']}) belong to "
                    "processes of another user: launch it as root, or end it with the host (kill, restart)")
            time.sleep(_POLL)


# ---------------------------------------------------------------- a container's own command

def _monotonic_of(stamp: str) -> float | None:
    """A Docker RFC 3339 timestamp (ns digits) on this machine's CLOCK_MONOTONIC; None for the zero time."""
    if stamp.startswith("0001-"):
        return None
    head, _, frac = stamp.rstrip("Z").partition(".")
    when = datetime.datetime.fromisoformat(head).replace(tzinfo=datetime.timezone.utc).timestamp()
    when += float(f"0.{frac or '0'}")
    return when - (time.clock_gettime(time.CLOCK_REALTIME) - time.monotonic())


class ContainerProgram(Program):
    """The container's own command: it runs while the container runs; `kill` is `docker kill --signal`."""

    def __init__(self, api: docker.APIClient, container_id: str, host: str) -> None:
        config = api.inspect_container(container_id)["Config"]
        super().__init__(host, "main", [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])])
        self._api = api
        self._id = container_id
        self._noted_end: float | None = None

    def _state(self) -> dict[str, Any]:
        return dict(self._api.inspect_container(self._id)["State"])

    def running(self) -> bool:
        return bool(self._state()["Running"])

    def output_so_far(self) -> ProgramResult:
        state = self._state()
        logs = [self._api.logs(self._id, stdout=out, stderr=not out) for out in (True, False)]
        streams = [(data[-OUTPUT_LIMIT:], len(data)) for data in logs]
        t0 = _monotonic_of(state["StartedAt"])
        if state["Running"]:
            return self._result(None, None, streams[0], streams[1], t0, None)
        returncode, signal = _from_status(state["ExitCode"])
        return self._result(returncode, signal, streams[0], streams[1], t0, _monotonic_of(state["FinishedAt"]))

    def wait(self, timeout: float | None = None) -> ProgramResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running() and (deadline is None or time.monotonic() < deadline):
            time.sleep(_POLL)
        result = self.output_so_far()
        if not result.running and result.t1 != self._noted_end:  # each run of the command ends once
            self._noted_end = result.t1
            self._note_exit(result)
        return result

    def kill(self, signal: str = "SIGKILL") -> None:
        if not self.running():
            return
        t = time.monotonic()
        self._api.kill(self._id, signal=signal)
        evidence.note_program(self.host, t, f"signal {self.name}: {signal} (docker kill)",
                              {"program": self.name, "event": "signal", "signal": signal})
