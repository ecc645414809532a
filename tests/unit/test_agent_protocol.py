"""The protocol around the ops: bad requests, raw lines, the agent's exit, the channel when it dies."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
from agent_helpers import wait_until

from harness.channel import AgentChannel, BadRequest, ChannelClosed, PipeTransport
from harness.endpoint import Endpoint


@pytest.mark.parametrize("op, args, message", [
    ("frobnicate", {}, r"unknown op 'frobnicate' \(argument 'op'\); ops: accept, accepted, bind"),
    ("recv", {"handle": "s99"}, r"unknown handle 's99' \(argument 'handle'\); open handles: none"),
    ("socket", {"options": {"keepalivez": 1}}, r"unknown socket option 'keepalivez' \(argument 'options'\); "
                                               r"known: keepalive, keepcnt"),
    ("socket", {"options": {"linger": 5}}, r"option 'linger' takes \[onoff, seconds\], not 5"),
    ("connect", {"addr": "127.0.0.1", "port": "80"}, r"argument 'port' of op 'connect' must be int, not str"),
    ("connect", {"addr": "localhost", "port": 80}, r"argument 'addr' must be an IPv4 address"),
    ("connect", {"port": 80}, r"op 'connect' needs argument 'addr'"),
    ("listen", {"port": 1, "colour": "red"}, r"op 'listen' has no argument 'colour'; its arguments: port, addr"),
    ("shutdown", {"handle": "s1", "how": "BOTH"}, r"unknown handle 's1'"),
    ("send", {"handle": "s1"}, r"unknown handle 's1'"),
    ("signal", {"name": "x", "signal": "SIGNOPE"}, r"unknown process 'x' \(argument 'name'\)"),
    ("run", {"cmd": []}, r"argument 'cmd' must be a non-empty argv list"),
    ("sysctl_get", {"keys": ["net.ipv4.no_such_key"]},
     r"unknown sysctl 'net.ipv4.no_such_key': /proc/sys/net/ipv4/no_such_key does not exist"),
])
def test_bad_requests_name_the_argument(agent: Endpoint, op: str, args: dict, message: str) -> None:
    with pytest.raises(BadRequest, match=message) as raised:
        agent.channel.call(op, **args)
    assert str(raised.value).startswith(f"local: {op}: BadRequest: ")
    assert agent.info()["pid"] > 0  # the loop goes on


def test_bad_values_on_a_real_socket(agent: Endpoint) -> None:
    handle = agent.socket().handle
    with pytest.raises(BadRequest, match="argument 'how' must be one of SHUT_RD, SHUT_WR, SHUT_RDWR"):
        agent.shutdown(handle, how="BOTH")
    with pytest.raises(BadRequest, match="give exactly one of 'size'"):
        agent.send(handle)
    with pytest.raises(BadRequest, match="argument 'flags' must be one of MSG_NOSIGNAL"):
        agent.send(handle, size=1, flags=["MSG_FAST"])
    with pytest.raises(BadRequest, match="unknown socket option 'mtu' \\(argument 'name'\\); readable: keepalive"):
        agent.getsockopt(handle, "mtu")
    with pytest.raises(BadRequest, match="not a listener with accept=true"):
        agent.accepted(handle)


def test_raw_lines_that_are_not_requests_get_error_answers() -> None:
    transport = PipeTransport()
    try:
        transport.write(b'not json\n[1, 2]\n{"id": 5, "op": 7}\n{"id": 6, "op": "info", "args": []}\n'
                        b'{"id": 7, "op": "info"}\n')
        buffer = b""
        for chunk in transport.chunks():
            buffer += chunk
            if buffer.count(b"\n") == 5:
                break
        answers = {json.loads(line)["id"]: json.loads(line) for line in buffer.splitlines()
                   if json.loads(line)["id"] is not None}
        errors = [json.loads(line)["error"]["message"] for line in buffer.splitlines()
                  if json.loads(line)["id"] is None]
    finally:
        transport.close()
    assert sorted(errors) == ["a request must be a JSON object, not list",
                              "a request must be one JSON object per line: Expecting value: line 1 column 1 (char 0)"]
    assert answers[5]["error"] == {"type": "BadRequest", "message": "argument 'op' is missing or not a string"}
    assert answers[6]["error"]["message"] == "argument 'args' must be an object"
    assert answers[7]["ok"] is True
    assert transport.popen.returncode == 0


def pid_gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


def test_stdin_eof_makes_the_agent_exit_without_children() -> None:
    transport = PipeTransport()
    channel = AgentChannel(transport, "eof")
    agent = Endpoint(channel, "eof")
    worker = agent.spawn_worker("w")
    sleeper = agent.spawn(["sleep", "60"], name="sleeper")
    grandchild = worker.spawn(["sleep", "60"], name="sleeper")

    started = time.monotonic()
    channel.close()

    assert transport.popen.returncode == 0
    assert time.monotonic() - started < 8
    assert pid_gone(worker.pid) and pid_gone(sleeper) and pid_gone(grandchild)
    with pytest.raises(ChannelClosed, match="eof: info: channel closed"):
        agent.info()


def test_killed_agent_fails_pending_calls_and_its_worker_exits() -> None:
    transport = PipeTransport()
    channel = AgentChannel(transport, "victim")
    agent = Endpoint(channel, "victim")
    worker = agent.spawn_worker("w")
    pending = agent.run(["sleep", "60"], background=True)

    transport.popen.kill()

    with pytest.raises(ChannelClosed, match="victim: run: channel closed: the agent's output ended"):
        pending.result(timeout=10)
    with pytest.raises(ChannelClosed):
        worker.info()
    wait_until(lambda: pid_gone(worker.pid), timeout=10, what="the orphaned worker exiting on stdin EOF")
    channel.close()


def test_errors_carry_the_agent_stderr_tail() -> None:
    script = "import sys; sys.stderr.write('agent could not start: no pyroute2\\n'); sys.exit(3)"
    channel = AgentChannel(PipeTransport([sys.executable, "-c", script]), "broken")
    try:
        with pytest.raises(ChannelClosed) as raised:
            channel.call("info", timeout=10)
    finally:
        channel.close()
    assert "broken: info: channel closed" in str(raised.value)
    assert str(raised.value).endswith("--- agent stderr (last lines) ---\nagent could not start: no pyroute2")
