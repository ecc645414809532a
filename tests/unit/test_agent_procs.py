"""Spawned commands, run-to-completion, and sysctls (written only inside a private network namespace)."""

from __future__ import annotations

import base64
import os
import signal
import sys
import time
from collections.abc import Iterator

import pytest
from agent_helpers import unshare_argv, wait_until

from harness.channel import AgentChannel, AgentOSError, BadRequest, PipeTransport
from harness.endpoint import Endpoint
from harness.records import CommandFailed

AGENT = [sys.executable, "-m", "harness.agent"]


def test_spawn_signal_wait_with_captured_output(agent: Endpoint) -> None:
    pid = agent.spawn(["sh", "-c", "echo started; echo oops >&2; exec sleep 60"], name="sleeper")
    assert pid > 0
    still = agent.wait("sleeper", timeout=0.2)
    assert (still.timed_out, still.returncode) == (True, None)

    with pytest.raises(BadRequest, match="argument 'signal' must be a signal name"):
        agent.signal("sleeper", "SIGNOPE")
    record = agent.signal("sleeper", "SIGTERM")
    assert (record.ok, record.extra["target_pid"], record.extra["signal"]) == (True, pid, "SIGTERM")
    done = agent.wait("sleeper", timeout=10)
    assert (done.returncode, done.signal, done.timed_out) == (-15, "SIGTERM", False)
    assert (done.stdout, done.stderr) == ("started\n", "oops\n")
    with pytest.raises(BadRequest, match="unknown process 'sleeper'"):
        agent.wait("sleeper")  # forgotten once waited for


def test_run_returns_output_and_check_raises(agent: Endpoint) -> None:
    ok = agent.run(["sh", "-c", "cat; echo err >&2"], input="in put")
    assert (ok.returncode, ok.stdout, ok.stderr, ok.timed_out) == (0, "in put", "err\n", False)
    with pytest.raises(CommandFailed, match="exited with status 3\n--- stdout ---\nx\n"):
        agent.run(["sh", "-c", "echo x; exit 3"], check=True)
    slow = agent.run(["sleep", "30"], timeout=0.3)
    assert (slow.timed_out, slow.signal) == (True, "SIGKILL")
    with pytest.raises(AgentOSError) as missing:
        agent.run(["/nonexistent/tool"])
    assert missing.value.errname == "ENOENT"


def test_sysctl_get_reads_proc_sys(agent: Endpoint) -> None:
    key = "net.ipv4.tcp_syn_retries"
    with open("/proc/sys/net/ipv4/tcp_syn_retries") as file:
        expected = file.read().strip()
    assert agent.sysctl_get([key]) == {key: expected}
    assert agent.sysctl_get(["net.ipv4.tcp_rmem"])["net.ipv4.tcp_rmem"].count("\t") == 2


@pytest.fixture
def netns_agent() -> Iterator[Endpoint]:
    """An agent in its own network namespace: its net.* sysctls are its own."""
    channel = AgentChannel(PipeTransport([*unshare_argv(), *AGENT]), "netns")
    try:
        yield Endpoint(channel, "netns")
    finally:
        channel.close()


def test_sysctl_set_returns_previous_values_and_rolls_back_on_failure(netns_agent: Endpoint) -> None:
    key, other = "net.ipv4.tcp_syn_retries", "net.ipv4.tcp_fin_timeout"
    before = netns_agent.sysctl_get([key, other])

    assert netns_agent.sysctl_set({key: 2, other: "7"}) == before
    assert netns_agent.sysctl_get([key, other]) == {key: "2", other: "7"}

    with pytest.raises(AgentOSError) as invalid:
        netns_agent.sysctl_set({key: 3, other: "not a number"})
    assert invalid.value.errname == "EINVAL" and "net.ipv4.tcp_fin_timeout" in str(invalid.value)
    assert netns_agent.sysctl_get([key, other]) == {key: "2", other: "7"}  # the first write was undone


def test_read_only_proc_sys_is_an_oserror_with_erofs() -> None:
    remount = 'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$@"'
    argv = [*unshare_argv(), "sh", "-c", remount, "sh", *AGENT]
    channel = AgentChannel(PipeTransport(argv), "ro")
    try:
        with pytest.raises(AgentOSError) as raised:
            Endpoint(channel, "ro").sysctl_set({"net.ipv4.tcp_syn_retries": 2})
    finally:
        channel.close()
    assert (raised.value.errname, raised.value.errno) == ("EROFS", 30)
    assert "cannot write sysctl net.ipv4.tcp_syn_retries (/proc/sys/net/ipv4/tcp_syn_retries)" in str(raised.value)


def test_spawn_with_env_and_cwd_and_binary_output_tails_and_times(agent: Endpoint, tmp_path) -> None:
    """What Host.launch uses on the netns backend: env added to the agent's, a cwd, the last bytes of each
    stream with the sizes written in all, and the start and end on CLOCK_MONOTONIC."""
    script = "printf '%s %s' \"$GREETING\" \"$PWD\"; head -c 3000 /dev/zero >&2; exit 4"
    started = agent.channel.call("spawn", cmd=["sh", "-c", script], name="p", env={"GREETING": "hi"},
                                 cwd=str(tmp_path))
    assert started["t0"] > 0 and started["pid"] > 0
    done = agent.channel.call("wait", name="p", timeout=10, tail=1000)
    assert base64.b64decode(done["stdout"]) == f"hi {tmp_path}".encode()
    assert (len(base64.b64decode(done["stderr"])), done["stderr_size"]) == (1000, 3000)
    assert (done["returncode"], done["timed_out"]) == (4, False)
    assert started["t0"] <= done["t0"] < done["t1"]


def test_output_reports_a_running_child_without_forgetting_it(agent: Endpoint) -> None:
    agent.channel.call("spawn", cmd=["sh", "-c", "echo up; exec sleep 60"], name="s")
    seen = wait_until(lambda: (o := agent.channel.call("output", name="s", tail=100)) and o["stdout"] and o,
                      what="the child's first line")
    assert (seen["running"], base64.b64decode(seen["stdout"]), seen["t1"]) == (True, b"up\n", None)
    agent.signal("s", "SIGKILL")
    assert agent.wait("s", timeout=10).signal == "SIGKILL"


def test_signal_marked_signals_the_process_with_the_marker_but_not_its_children(agent: Endpoint) -> None:
    """How a docker exec'd program is signalled: by a marker in its environment that its children inherit."""
    token = f"test-{os.getpid()}-{time.monotonic_ns()}"
    shell = agent.channel.call("spawn", cmd=["sh", "-c", "sleep 60 & echo $!; wait"], name="tree",
                               env={"NETFAULT_LAUNCH": token})["pid"]
    child = int(wait_until(lambda: agent.channel.call("output", name="tree")["stdout"], what="the child's pid"))
    try:
        answer = agent.channel.call("signal_marked", marker=f"NETFAULT_LAUNCH={token}", signal="SIGTERM")
        assert [(r["target_pid"], r["signal"]) for r in answer["records"]] == [(shell, "SIGTERM")]
        assert agent.wait("tree", timeout=10).signal == "SIGTERM"
        assert agent.channel.call("signal_marked", marker="NETFAULT_LAUNCH=nobody")["records"] == []
    finally:
        os.kill(child, signal.SIGKILL)
