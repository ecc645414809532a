"""Programs in hosts on either backend: files put in, programs launched in the background, waited for, killed by
signal, with their exit status, stdout, stderr and times on the test's timeline."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness import evidence
from harness.channel import AgentOSError
from harness.errors import ConfigError
from harness.programs import ProgramError
from harness.timeline import Timeline

pytestmark = pytest.mark.faults

GREET = b'#!/bin/sh\necho "out $1 $GREETING $(pwd)"\necho err >&2\nexit "$2"\n'


def test_put_file_then_launch_and_wait_gives_exit_status_output_and_times(pair, tmp_path: Path):
    server = pair.server
    path = server.put_file("netfault-test/greet", GREET, 0o755)
    assert path.endswith("/netfault-test/greet") and path.startswith(server.files_dir)
    data = tmp_path / "data.txt"
    data.write_bytes(b"from a file of this machine\n")
    copied = server.put_file("netfault-test/data.txt", data)
    assert server.run(["cat", copied], check=True).stdout == "from a file of this machine\n"

    before = server.info()["clock"]["mono"]
    program = server.launch([path, "a", "3"], "greet", env={"GREETING": "hi"}, cwd="/tmp")
    result = program.wait(timeout=30)
    assert (result.returncode, result.signal, result.running) == (3, None, False), result
    assert (result.stdout, result.stderr, result.truncated) == (b"out a hi /tmp\n", b"err\n", [])
    assert before <= result.t0 <= result.t1 <= server.info()["clock"]["mono"]
    assert not program.running() and program.wait() == result

    events = [(e.host, e.t, e.text) for e in Timeline.of(evidence.current()).events if e.source == "program"]
    assert [(host, t) for host, t, _ in events] == [("server", result.t0), ("server", result.t1)]
    assert events[0][2].startswith(f"launch greet: {path} a 3") and events[1][2] == "exit   greet: exited with status 3"


def test_kill_by_signal_output_so_far_and_the_reset_ending_programs(pair):
    client = pair.client
    talker = client.launch(["sh", "-c", "echo first; exec sleep 60"], "talker")
    deadline = time.monotonic() + 30
    while (so_far := talker.output_so_far()).stdout != b"first\n" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (so_far.stdout, so_far.running, so_far.returncode, so_far.t1) == (b"first\n", True, None, None)
    assert talker.running() and talker.wait(timeout=0.2).running

    with pytest.raises(ConfigError, match="a program named 'talker' is running"):
        client.launch(["true"], "talker")
    talker.kill("SIGTERM")
    ended = talker.wait(timeout=30)
    assert (ended.returncode, ended.signal, ended.stdout) == (-15, "SIGTERM", b"first\n"), ended
    talker.kill()  # ended already: nothing to do

    left = client.launch(["sleep", "60"], "left")
    client.reset()  # what the fixture does after each test
    assert left.wait(timeout=30).signal == "SIGKILL"
    kinds = [e.text.split()[0] for e in Timeline.of(evidence.current()).events if e.host == "client"]
    assert kinds.count("pidfd_send_signal") == 2 and kinds.count("launch") == kinds.count("exit") == 2


def test_a_program_that_cannot_start_is_an_error(pair):
    with pytest.raises((ProgramError, AgentOSError), match="/nonexistent/program"):
        pair.client.launch(["/nonexistent/program"], "missing")


def test_main_program_is_the_containers_command(pair):
    server = pair.server
    if pair.testbed.backend.name == "netns":
        with pytest.raises(ConfigError, match="the netns backend has no containers: start programs with host.launch"):
            server.main_program()
        with pytest.raises(ConfigError, match="a host's files live in its files_dir"):
            server.put_file("/etc/passwd", b"")
        return
    main = server.main_program()
    assert main.argv == ("sleep", "infinity") and main.running()
    now = main.output_so_far()
    assert now.running and now.t0 is not None and now.t0 < server.info()["clock"]["mono"]
