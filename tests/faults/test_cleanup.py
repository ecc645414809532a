"""Nothing is left behind: after a failing run, a Ctrl-C'd run, a terminated run, and (via the reaper) a
killed run, nothing of the run remains: no container or network labelled with its id (docker backend), no
network namespace named after it (netns backend)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pyroute2 import netns

from harness.backends.netns import LABELS_DIR, list_namespaces
from harness.docker_client import connect_docker
from harness.runinfo import LABEL_MACHINE, LABEL_PID, LABEL_PID_START, LABEL_ROLE, LABEL_RUN, new_run_id

pytestmark = pytest.mark.faults

HOLD = """
import os, pathlib, time

def test_hold(pair):
    pathlib.Path(os.environ["NETFAULT_READY_FILE"]).write_text(pair.client.addr)
    time.sleep(300)
"""
FAIL = """
def test_fails(pair):
    assert pair.client.connect(addr=pair.server.addr, port=6666).errname == "ETIMEDOUT"
"""
PASS = """
def test_passes(pair):
    assert pair.client.info()["name"] == "client"
"""
# Hosts of an inner session come up in seconds; a busy 2-core machine can take far longer.
HOSTS_UP = 180


@pytest.fixture
def leftovers(pair) -> Callable[[str], list[str]]:
    """What is left of a run id on this session's backend."""
    if pair.testbed.backend.name == "netns":
        return lambda run_id: [f"namespace {name}" for name in list_namespaces() if name.startswith(f"nf-{run_id}-")]
    engine = connect_docker()

    def docker_leftovers(run_id: str) -> list[str]:
        label = {"label": f"{LABEL_RUN}={run_id}"}
        return ([f"container {c.name}" for c in engine.containers.list(all=True, filters=label)]
                + [f"network {n.name}" for n in engine.networks.list(filters=label)])
    return docker_leftovers


def _inner(tmp_path: Path, name: str, body: str, run_id: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """A separate pytest session running `body` with the netfault plugin, as a user would."""
    test_file = tmp_path / f"test_{name}.py"
    test_file.write_text(body)
    env = {**env, "NETFAULT_RUN_ID": run_id, "NETFAULT_READY_FILE": str(tmp_path / f"{name}.ready")}
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--rootdir", str(tmp_path), str(test_file)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _wait_ready(proc: subprocess.Popen[str], ready: Path) -> None:
    deadline = time.monotonic() + HOSTS_UP
    while not ready.exists():
        if proc.poll() is not None:
            pytest.fail(f"inner pytest ended before its hosts were up:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"inner pytest's hosts not up after {HOSTS_UP} s:\n{proc.communicate()[0]}")
        time.sleep(0.1)


def test_failing_run_leaves_nothing(tmp_path, leftovers, inner_env):
    run_id = new_run_id()
    out, _ = _inner(tmp_path, "fails", FAIL, run_id, inner_env).communicate(timeout=HOSTS_UP)
    assert "1 failed" in out, out
    assert leftovers(run_id) == [], out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_run_leaves_nothing(tmp_path, leftovers, inner_env, sig):
    run_id = new_run_id()
    proc = _inner(tmp_path, "hold", HOLD, run_id, inner_env)
    _wait_ready(proc, tmp_path / "hold.ready")
    assert leftovers(run_id), "the inner session's hosts should exist while it runs"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=HOSTS_UP)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert leftovers(run_id) == [], out


def test_killed_run_is_reaped_by_the_next_session(tmp_path, leftovers, inner_env):
    killed_run = new_run_id()
    proc = _inner(tmp_path, "hold", HOLD, killed_run, inner_env)
    _wait_ready(proc, tmp_path / "hold.ready")
    proc.kill()
    proc.communicate()
    assert leftovers(killed_run), "SIGKILL leaves the hosts behind: nothing could remove them"

    next_run = new_run_id()
    out, _ = _inner(tmp_path, "passes", PASS, next_run, inner_env).communicate(timeout=HOSTS_UP)
    assert "1 passed" in out, out
    assert leftovers(killed_run) == [], out
    assert leftovers(next_run) == [], out


@pytest.mark.backend("docker", "it creates labelled Docker networks")
def test_netfault_reap_removes_dead_runs_and_keeps_live_ones(leftovers):
    engine = connect_docker()
    dead_run, live_run = new_run_id(), new_run_id()
    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait()
    base = {LABEL_MACHINE: socket.gethostname(), LABEL_ROLE: "network"}
    engine.networks.create(f"netfault-{dead_run}-reaptest", internal=True, labels={
        **base, LABEL_RUN: dead_run, LABEL_PID: str(dead_pid.pid), LABEL_PID_START: "1"})
    live = engine.networks.create(f"netfault-{live_run}-reaptest", internal=True, labels={
        **base, LABEL_RUN: live_run, LABEL_PID: str(os.getpid()),
        LABEL_PID_START: Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19]})
    try:
        out = subprocess.run([sys.executable, "-m", "harness.cli", "reap"], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        # Another session starting on this machine at the same time reaps dead runs too, so the end state is
        # asserted, and the summary line; alone (as in CI) the output names the network.
        assert "removed " in out.stderr and "kept " in out.stderr, out.stderr
        assert leftovers(dead_run) == []
        assert leftovers(live_run) == [f"network {live.name}"], "a live run's resources must be kept"
    finally:
        for run_id in (dead_run, live_run):
            for net in engine.networks.list(filters={"label": f"{LABEL_RUN}={run_id}"}):
                net.remove()


def _labels(run_id: str, pid: int, pid_start: str) -> str:
    return json.dumps({LABEL_MACHINE: socket.gethostname(), LABEL_ROLE: "host", LABEL_RUN: run_id,
                       LABEL_PID: str(pid), LABEL_PID_START: pid_start})


@pytest.mark.backend("netns", "it creates labelled network namespaces")
def test_netfault_reap_removes_dead_namespaces_with_their_processes_and_keeps_live_ones(leftovers):
    dead_run, live_run, unlabelled_run = new_run_id(), new_run_id(), new_run_id()
    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait()
    names = {run: f"nf-{run}-reaptest" for run in (dead_run, live_run, unlabelled_run)}
    LABELS_DIR.mkdir(parents=True, exist_ok=True)
    (LABELS_DIR / names[dead_run]).write_text(_labels(dead_run, dead_pid.pid, "1"))
    (LABELS_DIR / names[live_run]).write_text(
        _labels(live_run, os.getpid(), Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19]))
    for name in names.values():
        netns.create(name)
    sleeper = subprocess.Popen(["ip", "netns", "exec", names[dead_run], "sleep", "300"])
    try:
        out = subprocess.run([sys.executable, "-m", "harness.cli", "reap", "--backend", "netns"], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "removed " in out.stderr and "kept " in out.stderr, out.stderr
        assert leftovers(dead_run) == [] and leftovers(unlabelled_run) == [], out.stderr
        assert sleeper.wait(timeout=10) == -signal.SIGKILL, "the dead run's processes are killed with it"
        assert leftovers(live_run) == [f"namespace {names[live_run]}"], "a live run's namespace must be kept"
    finally:
        sleeper.kill()
        subprocess.run([sys.executable, "-m", "harness.cli", "reap", "--backend", "netns", "--run", live_run],
                       capture_output=True, timeout=120, check=True)
