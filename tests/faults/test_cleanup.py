"""Nothing is left behind: after a failing run, a Ctrl-C'd run, a terminated run, and (via the reaper) a
killed run, no container or network labelled with the run's id remains."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

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


@pytest.fixture(scope="module")
def engine() -> docker.DockerClient:
    return connect_docker()


def _leftovers(engine: docker.DockerClient, run_id: str) -> list[str]:
    label = {"label": f"{LABEL_RUN}={run_id}"}
    return ([f"container {c.name}" for c in engine.containers.list(all=True, filters=label)]
            + [f"network {n.name}" for n in engine.networks.list(filters=label)])


def _inner(tmp_path: Path, name: str, body: str, run_id: str, image: str) -> subprocess.Popen[str]:
    """A separate pytest session running `body` with the netfault plugin, as a user would."""
    test_file = tmp_path / f"test_{name}.py"
    test_file.write_text(body)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "NETFAULT_"))}
    env.update(NETFAULT_RUN_ID=run_id, NETFAULT_IMAGE=image, NETFAULT_READY_FILE=str(tmp_path / f"{name}.ready"))
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


@pytest.fixture
def image(pair) -> str:
    """The image of this session's hosts, so inner sessions need no build."""
    return pair.testbed.backend.image


def test_failing_run_leaves_nothing(tmp_path, engine, image):
    run_id = new_run_id()
    out, _ = _inner(tmp_path, "fails", FAIL, run_id, image).communicate(timeout=HOSTS_UP)
    assert "1 failed" in out, out
    assert _leftovers(engine, run_id) == [], out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_run_leaves_nothing(tmp_path, engine, image, sig):
    run_id = new_run_id()
    proc = _inner(tmp_path, "hold", HOLD, run_id, image)
    _wait_ready(proc, tmp_path / "hold.ready")
    assert _leftovers(engine, run_id), "the inner session's hosts should exist while it runs"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=HOSTS_UP)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert _leftovers(engine, run_id) == [], out


def test_killed_run_is_reaped_by_the_next_session(tmp_path, engine, image):
    killed_run = new_run_id()
    proc = _inner(tmp_path, "hold", HOLD, killed_run, image)
    _wait_ready(proc, tmp_path / "hold.ready")
    proc.kill()
    proc.communicate()
    assert _leftovers(engine, killed_run), "SIGKILL leaves the hosts behind: nothing could remove them"

    next_run = new_run_id()
    out, _ = _inner(tmp_path, "passes", PASS, next_run, image).communicate(timeout=HOSTS_UP)
    assert "1 passed" in out, out
    assert _leftovers(engine, killed_run) == [], out
    assert _leftovers(engine, next_run) == [], out


def test_netfault_reap_removes_dead_runs_and_keeps_live_ones(engine):
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
        assert _leftovers(engine, dead_run) == []
        assert _leftovers(engine, live_run) == [f"network {live.name}"], "a live run's resources must be kept"
    finally:
        for run_id in (dead_run, live_run):
            for net in engine.networks.list(filters={"label": f"{LABEL_RUN}={run_id}"}):
                net.remove()
