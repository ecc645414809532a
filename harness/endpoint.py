"""The typed API tests use on a host's agent (or on one of its workers).

Every method sends one request; with `background=True` it returns at once with a Future of the same
result (for calls that block, e.g. a recv while the test kills the peer). Keyword names are the agent's
argument names (docs/design.md). Socket syscalls that fail return a record with the errno; they do not
raise. Errors of the request itself raise harness.channel.AgentError subclasses.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from . import evidence
from .channel import AgentChannel
from .records import CompletedRun, SendLoop, SyscallRecord

T = TypeVar("T")


def _then(future: Future[dict[str, Any]], convert: Callable[[dict[str, Any]], T]) -> Future[T]:
    """A future of `convert(result)`; the agent's exception passes through unchanged."""
    converted: Future[T] = Future()

    def done(source: Future[dict[str, Any]]) -> None:
        try:
            converted.set_result(convert(source.result()))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
            converted.set_exception(exc)

    future.add_done_callback(done)
    return converted


def _record(result: dict[str, Any]) -> SyscallRecord:
    return SyscallRecord.from_dict(result)


def _records(result: dict[str, Any]) -> list[SyscallRecord]:
    return [SyscallRecord.from_dict(r) for r in result["records"]]


def _send_result(result: dict[str, Any]) -> SyscallRecord | SendLoop:
    return SendLoop.from_dict(result) if "records" in result else SyscallRecord.from_dict(result)


class Endpoint:
    """A host's agent (`proc` None) or one of its worker processes, seen through `channel`."""

    def __init__(self, channel: AgentChannel, host: str, proc: str | None = None) -> None:
        self.channel = channel
        self.host = host
        self.proc = proc

    def __repr__(self) -> str:
        return f"<Endpoint {self.host}{'/' + self.proc if self.proc else ''}>"

    def _request(self, op: str, convert: Callable[[dict[str, Any]], Any], background: bool, **args: Any) -> Any:
        future = self.channel.submit(op, proc=self.proc, **args)

        def noted(result: dict[str, Any]) -> Any:
            value = convert(result)
            evidence.note_records(self.host, value)
            return value
        return _then(future, noted) if background else noted(future.result())

    # Sockets

    def socket(self, type: str = "tcp", options: Mapping[str, Any] | None = None, *,
               background: bool = False) -> SyscallRecord:
        """socket() then setsockopt per option; `.handle` names the new socket (None if a step failed)."""
        return self._request("socket", _record, background, type=type, options=_opt(options))

    def setsockopt(self, handle: str, options: Mapping[str, Any], *,
                   background: bool = False) -> list[SyscallRecord]:
        """One record per option, e.g. {"keepalive": 1, "keepidle": 2, "linger": [1, 0]}."""
        return self._request("setsockopt", _records, background, handle=handle, options=dict(options))

    def getsockopt(self, handle: str, name: str, *, background: bool = False) -> SyscallRecord:
        """The value is in `extra["value"]`."""
        return self._request("getsockopt", _record, background, handle=handle, name=name)

    def so_error(self, handle: str, *, background: bool = False) -> SyscallRecord:
        """getsockopt(SO_ERROR) (clears it); `extra["value_name"]` is the errno name or None."""
        return self.getsockopt(handle, "so_error", background=background)

    def bind(self, handle: str, addr: str = "0.0.0.0", port: int = 0, *,
             background: bool = False) -> SyscallRecord:
        return self._request("bind", _record, background, handle=handle, addr=addr, port=port)

    def listen(self, port: int | None = None, addr: str = "0.0.0.0", backlog: int = 5,
               options: Mapping[str, Any] | None = None, accept: bool = False, handle: str | None = None, *,
               background: bool = False) -> SyscallRecord:
        """A new listener on `port` (socket, options, bind, listen), or listen() on a bound `handle`.

        If a step fails its record is returned (e.g. op "bind" with EADDRINUSE). With `accept=True` the
        agent accepts in the background; see `accepted`.
        """
        return self._request("listen", _record, background, port=port, addr=addr, backlog=backlog,
                             options=_opt(options), accept=accept, handle=handle)

    def accept(self, handle: str, timeout: float | None = None, *, background: bool = False) -> SyscallRecord:
        """accept(); `.handle` is the new socket, `extra["peer"]` its peer. `timeout` works via SO_RCVTIMEO."""
        return self._request("accept", _record, background, handle=handle, timeout=timeout)

    def accepted(self, handle: str, *, background: bool = False) -> list[SyscallRecord]:
        """The accept records of a background-accepting listener so far (`.handle` of each is the socket)."""
        return self._request("accepted", _records, background, handle=handle)

    def connect(self, addr: str, port: int, handle: str | None = None, type: str = "tcp",
                options: Mapping[str, Any] | None = None, nonblocking: bool = False,
                select_timeout: float | None = None, *, background: bool = False) -> SyscallRecord:
        """connect() on `handle` or a new socket. Non-blocking with `select_timeout`: the record is the
        connect's (EINPROGRESS); `.sub("select")` (`extra["select"]["ready"]`) and `.sub("so_error")` follow.
        """
        return self._request("connect", _record, background, addr=addr, port=port, handle=handle, type=type,
                             options=_opt(options), nonblocking=nonblocking, select_timeout=select_timeout)

    def select(self, handle: str, read: bool = False, write: bool = False, timeout: float | None = None, *,
               background: bool = False) -> SyscallRecord:
        """select() on `handle` for reading and/or writing, up to `timeout` seconds (None: no limit);
        `extra["readable"]`, `extra["writable"]` (both false: the timeout expired)."""
        return self._request("select", _record, background, handle=handle, read=read, write=write, timeout=timeout)

    def send(self, handle: str, size: int | None = None, data: bytes | None = None, count: int | None = 1,
             interval: float = 0.0, duration: float | None = None, flags: Sequence[str] | None = None,
             nonblocking: bool = False, addr: str | None = None, port: int | None = None, *,
             background: bool = False) -> SyscallRecord | SendLoop:
        """send() `size` pattern bytes or `data`; a record, or a SendLoop when count != 1 or a duration is set.

        `count=None` loops until `duration` or the first errno (e.g. EAGAIN with nonblocking=True).
        `flags` defaults to MSG_NOSIGNAL (EPIPE, no SIGPIPE); pass [] to get the signal.
        """
        encoded = None if data is None else base64.b64encode(data).decode()
        return self._request("send", _send_result, background, handle=handle, size=size, data=encoded,
                             count=count, interval=interval, duration=duration,
                             flags=None if flags is None else list(flags), nonblocking=nonblocking,
                             addr=addr, port=port)

    def recv(self, handle: str, size: int = 65536, timeout: float | None = None, nonblocking: bool = False,
             flags: Sequence[str] | None = None, *, background: bool = False) -> SyscallRecord:
        """recv(); `.ret == 0` is EOF, `.data` the bytes. `timeout` is set as SO_RCVTIMEO (EAGAIN)."""
        return self._request("recv", _record, background, handle=handle, size=size, timeout=timeout,
                             nonblocking=nonblocking, flags=None if flags is None else list(flags))

    def shutdown(self, handle: str, how: str = "SHUT_WR", *, background: bool = False) -> SyscallRecord:
        return self._request("shutdown", _record, background, handle=handle, how=how)

    def close(self, handle: str, *, background: bool = False) -> SyscallRecord:
        return self._request("close", _record, background, handle=handle)

    def sockets(self, proto: str = "tcp", port: int | None = None, sport: int | None = None,
                dport: int | None = None, states: Sequence[str] | None = None, *,
                background: bool = False) -> list[dict[str, Any]]:
        """sock_diag entries of the host's namespace, each with the snapshot's `t`, `t_end` and `t_real`.

        The kernel read each socket somewhere between `t` and `t_end` (CLOCK_MONOTONIC): a stalled dump widens
        that span, so a timer's remaining time is bounded by both.

        Entries of sockets this endpoint holds carry their `handle`.
        """
        def entries(result: dict[str, Any]) -> list[dict[str, Any]]:
            times = {name: result[name] for name in ("t", "t_end", "t_real")}
            return [{**entry, **times} for entry in result["sockets"]]
        return self._request("sockets", entries, background, proto=proto, port=port, sport=sport, dport=dport,
                             states=None if states is None else list(states))

    # Processes

    def spawn_worker(self, name: str, sigpipe: str = "ignore", *, background: bool = False) -> WorkerEndpoint:
        """A child agent holding its own sockets (the "server process" faults kill).

        sigpipe="default" restores SIG_DFL, so a write to a reset socket without MSG_NOSIGNAL kills it.
        """
        def worker(result: dict[str, Any]) -> WorkerEndpoint:
            return WorkerEndpoint(self.channel, self.host, name, result["pid"], sigpipe)
        return self._request("spawn_worker", worker, background, name=name, sigpipe=sigpipe)

    def spawn(self, cmd: Sequence[str], name: str, *, background: bool = False) -> int:
        """Start `cmd` with its output captured; returns its pid. See `wait` and `signal`."""
        return self._request("spawn", lambda r: r["pid"], background, cmd=list(cmd), name=name)

    def signal(self, name: str, signal: str = "SIGKILL", *, background: bool = False) -> SyscallRecord:
        """Signal a spawned process or worker by name (pidfd_send_signal record)."""
        return self._request("signal", _record, background, name=name, signal=signal)

    def wait(self, name: str, timeout: float | None = None, *, background: bool = False) -> CompletedRun:
        """Wait for a spawned process; if `timeout` passes first, `timed_out` is set and it keeps running."""
        return self._request("wait", lambda r: CompletedRun.from_dict(name, r), background, name=name,
                             timeout=timeout)

    def run(self, cmd: Sequence[str], timeout: float | None = None, input: str | None = None,
            check: bool = False, *, background: bool = False) -> CompletedRun:
        """Run `cmd` to completion (SIGKILL after `timeout`); check=True raises CommandFailed with output."""
        def completed(result: dict[str, Any]) -> CompletedRun:
            run = CompletedRun.from_dict(list(cmd), result)
            return run.check() if check else run
        return self._request("run", completed, background, cmd=list(cmd), timeout=timeout, input=input)

    # Host state

    def sysctl_get(self, keys: Sequence[str], *, background: bool = False) -> dict[str, str]:
        return self._request("sysctl_get", dict, background, keys=list(keys))

    def sysctl_set(self, values: Mapping[str, str | int], *, background: bool = False) -> dict[str, str]:
        """Write sysctls; returns their previous values."""
        return self._request("sysctl_set", dict, background, values=dict(values))

    def link_show(self, iface: str = "eth0", *, background: bool = False) -> dict[str, Any]:
        """`iface`'s state: `up`, `operstate`, `addrs`, and the `routes` through it the kernel does not derive."""
        return self._request("link_show", dict, background, iface=iface)

    def link_set(self, iface: str, state: str, restore: Mapping[str, Any] | None = None, *,
                 background: bool = False) -> dict[str, Any]:
        """Set `iface` "up" or "down" (`before`: its state just before; in force at `t1`). With `restore` (a
        `link_show` result), re-add its addresses and routes missing afterwards (listed in `restored`)."""
        return self._request("link_set", dict, background, iface=iface, state=state,
                             restore=None if restore is None else dict(restore))

    def netem_add(self, iface: str, params: Mapping[str, Any], direction: str = "egress", *,
                  background: bool = False) -> dict[str, Any]:
        """Add a netem qdisc of its own (egress, or ingress via an ifb); the result is what `netem_del` needs."""
        return self._request("netem_add", dict, background, iface=iface, params=dict(params), direction=direction)

    def netem_del(self, iface: str, handle: int, ifb: str | None = None, txqlen: int | None = None, *,
                  background: bool = False) -> dict[str, Any]:
        """Delete what one `netem_add` created (pass its `handle`, `ifb`, `txqlen`), if still there; `deleted`
        lists it."""
        return self._request("netem_del", dict, background, iface=iface, handle=handle, ifb=ifb, txqlen=txqlen)

    def delayline_start(self, name: str, params: Mapping[str, Any], timeout: float = 30.0, *,
                        background: bool = False) -> dict[str, Any]:
        """Start the NFQUEUE delay line (harness/agent/delayline.py) as spawned process `name`; returns once its
        queue is bound: `queue`, `mark` (of its copies), `pid`, t0/t1. Stop it with `signal` and `wait`."""
        return self._request("delayline_start", dict, background, name=name, params=dict(params), timeout=timeout)

    def tc_features(self, *, background: bool = False) -> dict[str, str | None]:
        """The kernel's tc features faults use: {"sch_netem": None or why missing, "ifb": ..., "ingress_redirect": ...}."""
        return self._request("tc_features", lambda r: dict(r["features"]), background)

    def capture_start(self, iface: str = "eth0", filter: str = "", snaplen: int | None = None, *,
                      background: bool = False) -> str:
        """Start tcpdump; returns the capture id once tcpdump is listening."""
        return self._request("capture_start", lambda r: r["id"], background, iface=iface, filter=filter,
                             snaplen=snaplen)

    def capture_stop(self, id: str, *, background: bool = False) -> bytes:
        """Stop a capture; returns the pcap file's bytes."""
        return self._request("capture_stop", lambda r: base64.b64decode(r["pcap"]), background, id=id)

    def sampler_start(self, proto: str = "tcp", port: int | None = None, sport: int | None = None,
                      dport: int | None = None, states: Sequence[str] | None = None, period_ms: float = 10.0,
                      fields: bool = False, *, background: bool = False) -> dict[str, Any]:
        """Start a socket-state sampler with `sockets`' filters (harness.sockets.sample wraps it); answers after
        its first sample: `id`, `t`, and how many `sockets` it saw. `fields` also records queue and tcp_info
        changes."""
        return self._request("sampler_start", dict, background, proto=proto, port=port, sport=sport, dport=dport,
                             states=None if states is None else list(states), period_ms=period_ms, fields=fields)

    def sampler_stop(self, id: str, *, background: bool = False) -> dict[str, Any]:
        """Stop a sampler: its `entries`, `samples`, `missed` ticks, interval/late/dump figures (ms), the thread's
        `cpu_s`, and the `error` that ended it early (None if none)."""
        return self._request("sampler_stop", dict, background, id=id)

    def reset(self, *, background: bool = False) -> dict[str, Any]:
        """Close every handle, kill workers and spawned processes, stop captures."""
        return self._request("reset", dict, background)

    def info(self, *, background: bool = False) -> dict[str, Any]:
        """pid, kernel, python and pyroute2 versions, clock {mono, real}."""
        return self._request("info", dict, background)

    @property
    def realtime_minus_monotonic(self) -> float:
        """CLOCK_REALTIME - CLOCK_MONOTONIC in the host now (maps capture timestamps to record times)."""
        clock = self.info()["clock"]
        return float(clock["real"] - clock["mono"])


class WorkerEndpoint(Endpoint):
    """A worker process of a host: the Endpoint API inside it, plus its `name`, `pid` and `signal`."""

    def __init__(self, channel: AgentChannel, host: str, name: str, pid: int, sigpipe: str) -> None:
        super().__init__(channel, host, proc=name)
        self.name = name
        self.pid = pid
        self.sigpipe = sigpipe

    def signal(self, signal: str = "SIGKILL", *, background: bool = False) -> SyscallRecord:  # type: ignore[override]
        """Signal this worker (sent by the host's main agent, so it works while the worker is stopped)."""
        future = self.channel.submit("signal", name=self.name, signal=signal)
        return _then(future, _record) if background else _record(future.result())


def _opt(options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if options is None else dict(options)
