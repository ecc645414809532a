"""Worker processes: child agents (this package with --worker) that hold their own sockets.

Requests addressed to a worker (`"proc": name`) are written to its stdin as they came; its answers are
passed back unchanged. When it dies, every request still pending there fails with ProcessDied.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from .errors import ProcessDied
from .procs import Child, exit_status

Reply = Callable[[bytes], None]
SIGPIPE_MODES = ("ignore", "default")
START_TIMEOUT = 30.0
# How long a worker gets to reset itself (and end its own children) on stdin EOF before SIGKILL.
EXIT_TIMEOUT = 5.0


class Worker(Child):
    kind = "worker"

    def __init__(self, name: str, sigpipe: str) -> None:
        argv = [sys.executable, "-m", __package__, "--worker", "--name", name, "--sigpipe", sigpipe]
        # stderr is inherited: the worker logs into the agent's own log.
        super().__init__(name, subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        self.sigpipe = sigpipe
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending: dict[Any, tuple[str, Reply]] = {}
        self._death: dict[str, Any] | None = None
        self._reader = threading.Thread(target=self._read, name=f"worker-{name}", daemon=True)
        self._reader.start()

    def ready(self) -> dict[str, Any]:
        """Wait for the worker's answer to `info` (it started and imported fine); ProcessDied if it died."""
        answered = threading.Event()
        answer: list[bytes] = []

        def reply(line: bytes) -> None:
            answer.append(line)
            answered.set()

        self.forward({"id": f"start:{self.name}", "op": "info", "args": {}}, reply)
        if not answered.wait(START_TIMEOUT):
            self.stop()
            raise ProcessDied(f"worker {self.name!r} did not answer within {START_TIMEOUT:.0f} s; killed it",
                              **exit_status(self.popen.returncode))
        response = json.loads(answer[0])
        if not response["ok"]:
            error = response["error"]
            raise ProcessDied(error["message"], error.get("returncode"), error.get("signal"))
        return response["result"]

    def forward(self, request: dict[str, Any], reply: Reply) -> None:
        """Send `request` to the worker; `reply` gets its answer line, or a ProcessDied answer."""
        with self._lock:
            dead = self._death is not None
            if not dead:
                self._pending[request["id"]] = (request["op"], reply)
        if dead:
            reply(self._died_line(request["id"], request["op"]))
            return
        line = json.dumps(request).encode() + b"\n"
        with self._write_lock:
            if self.popen.stdin.closed:
                return  # being stopped: the reader answers every pending request at EOF, this one too
            try:
                self.popen.stdin.write(line)
                self.popen.stdin.flush()
            except BrokenPipeError:
                return  # it died: same as above

    def stop(self) -> None:
        """EOF on its stdin (and SIGCONT, should it be stopped): it resets and exits; SIGKILL if it does not."""
        if self.popen.poll() is None:
            with self._write_lock:
                try:
                    self.popen.stdin.close()
                except BrokenPipeError:
                    pass  # it died meanwhile; the wait below reaps it
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGCONT)
            except ProcessLookupError:
                pass  # it exited and the reader thread reaped it: nothing to continue
            try:
                self.popen.wait(EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"worker {self.name!r} did not exit within {EXIT_TIMEOUT} s of EOF: SIGKILL", file=sys.stderr)
        super().stop()
        self._reader.join()

    def close(self) -> None:
        self._reader.join()
        super().close()
        self.popen.stdin.close()
        self.popen.stdout.close()

    def _read(self) -> None:
        for line in self.popen.stdout:
            try:
                request_id = json.loads(line)["id"]
                with self._lock:
                    _, reply = self._pending.pop(request_id)
            except (ValueError, KeyError, TypeError) as exc:
                print(f"worker {self.name!r} wrote a line that answers no request ({exc!r}): {line!r}",
                      file=sys.stderr)
                continue
            reply(line.rstrip(b"\n"))
        self.popen.wait()
        with self._lock:
            self._death = exit_status(self.popen.returncode)
            pending, self._pending = self._pending, {}
        for request_id, (op, reply) in pending.items():
            reply(self._died_line(request_id, op))

    def _died_line(self, request_id: Any, op: str) -> bytes:
        death = self._death or {}
        how = f"by {death['signal']}" if death.get("signal") else f"with exit status {death.get('returncode')}"
        error = {"type": "ProcessDied", "proc": self.name, "pid": self.popen.pid, **death,
                 "message": f"worker {self.name!r} (pid {self.popen.pid}) died {how} while {op!r} was pending"}
        return json.dumps({"id": request_id, "ok": False, "error": error}).encode()
