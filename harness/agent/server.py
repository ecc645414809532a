"""The JSON-lines loop: a thread per request, whole answer lines under a lock, forwarding to workers."""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from typing import Any, BinaryIO

from .errors import BadRequest, ProcessDied
from .ops import Agent
from .records import errname
from .validate import call_op

# On EOF, requests still running in the main agent get this long to answer before it resets and exits.
# A worker resets at once: EOF there means the main agent is stopping it.
EOF_GRACE = 2.0


def error_of(exc: Exception) -> dict[str, Any]:
    """The protocol's error object for an exception raised while serving a request."""
    if isinstance(exc, BadRequest):
        return {"type": "BadRequest", "message": str(exc)}
    if isinstance(exc, ProcessDied):
        return {"type": "ProcessDied", "message": str(exc), "returncode": exc.returncode, "signal": exc.signal}
    if isinstance(exc, OSError):
        return {"type": "OSError", "message": str(exc), "errno": exc.errno,
                "errname": errname(exc.errno) if exc.errno is not None else None,
                "strerror": exc.strerror, "filename": exc.filename}
    text = traceback.format_exc()
    print(text, file=sys.stderr)
    return {"type": "Internal", "message": f"{type(exc).__name__}: {exc}", "traceback": text}


class Server:
    """Reads requests, serves each in its own thread, writes answers in completion order."""

    def __init__(self, agent: Agent, out: BinaryIO, eof_grace: float = EOF_GRACE) -> None:
        self.agent = agent
        self.eof_grace = eof_grace
        self._ops = agent.ops()
        self._out = out
        self._write_lock = threading.Lock()

    def serve(self, lines: Iterable[bytes]) -> None:
        """Until EOF on `lines`; then give running requests `eof_grace` seconds to answer."""
        threads = []
        for line in lines:
            if line.strip():
                threads = [t for t in threads if t.is_alive()]
                thread = threading.Thread(target=self._handle, args=(line,), name="request", daemon=True)
                thread.start()
                threads.append(thread)
        deadline = time.monotonic() + self.eof_grace
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _handle(self, line: bytes) -> None:
        request_id = None
        try:
            request = _decode(line)
            request_id = request.get("id")
            _check(request)
            op, args, proc = request["op"], request.get("args", {}), request.get("proc")
            if proc is not None:
                self.agent.worker_named(proc).forward({"id": request_id, "op": op, "args": args}, self._write)
                return
            if op not in self._ops:
                raise BadRequest(f"unknown op {op!r} (argument 'op'); ops: {', '.join(sorted(self._ops))}")
            answer = json.dumps({"id": request_id, "ok": True, "result": call_op(op, self._ops[op], args)},
                                allow_nan=False)
        except Exception as exc:
            answer = json.dumps({"id": request_id, "ok": False, "error": error_of(exc)})
        self._write(answer.encode())

    def _write(self, line: bytes) -> None:
        with self._write_lock:
            try:
                self._out.write(line + b"\n")
                self._out.flush()
            except BrokenPipeError:
                print(f"answer not delivered, nobody reads stdout any more: {line[:200]!r}", file=sys.stderr)


def _decode(line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except ValueError as exc:
        raise BadRequest(f"a request must be one JSON object per line: {exc}") from None
    if not isinstance(request, dict):
        raise BadRequest(f"a request must be a JSON object, not {type(request).__name__}")
    return request


def _check(request: dict[str, Any]) -> None:
    if not isinstance(request.get("op"), str):
        raise BadRequest("argument 'op' is missing or not a string")
    if not isinstance(request.get("args", {}), dict):
        raise BadRequest("argument 'args' must be an object")
    if not isinstance(request.get("proc"), (str, type(None))):
        raise BadRequest("argument 'proc' must be a worker name or absent")
