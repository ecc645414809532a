"""Hosts from images without the agent (issue 8): a FROM scratch image holding only a static C program
(examples/c/tcpprobe.c) is faulted and observed through its agent sidecar exactly like a peer host; images
built with extra Debian packages run their programs; sidecars and foreign containers are cleaned up and reaped."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from faults import Reject
from harness import evidence
from harness.backends import open_backend
from harness.backends import base
from harness.capture import capture
from harness.images import REPO_ROOT, build_scratch_image, compile_static, ensure_peer_image
from harness.programs import ProgramError
from harness.pytest_plugin import RUN_KEY
from harness.reaper import reap
from harness.runinfo import LABEL_ROLE, LABEL_RUN, RunInfo, new_run_id
from harness.timeline import Timeline
from harness.topology import HostSpec, Topology

pytestmark = [pytest.mark.faults, pytest.mark.backend("docker", "images and sidecars are containers")]

PORT, PEER_PORT = 7000, 7001
TCPPROBE = REPO_ROOT / "examples" / "c" / "tcpprobe.c"
CAP_NET_ADMIN, CAP_NET_RAW = 12, 13


@pytest.fixture(scope="module")
def scratch_image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """tcpprobe built static and alone in a FROM scratch image."""
    client = request.getfixturevalue("netfault_testbed").backend.client
    binary = compile_static(TCPPROBE, tmp_path_factory.mktemp("bin") / "tcpprobe", client=client,
                            progress=lambda line: None)
    return build_scratch_image(client, binary, progress=lambda line: None)


def _topology(scratch_image: str) -> Topology:
    return Topology.of([HostSpec("probe", 30, image=scratch_image, command=("/tcpprobe", "serve", str(PORT))),
                        HostSpec("peer", 10)], source=__name__)


@pytest.fixture(scope="module")
def foreign(request: pytest.FixtureRequest, scratch_image: str) -> Iterator[base.Testbed]:
    """A test bed of its own: the scratch host `probe` (tcpprobe serving PORT) and a peer-image host `peer`."""
    session = request.getfixturevalue("netfault_testbed").backend
    backend = open_backend("docker", _topology(scratch_image), request.config.stash[RUN_KEY], image=session.image)
    try:
        yield backend.create(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-foreign")
    finally:
        backend.destroy()


@pytest.fixture
def collected() -> Iterator[evidence.Evidence]:
    """This test's evidence (the foreign test bed is not the pair fixture's, which opens one)."""
    with evidence.collecting() as kept:
        yield kept


def _caps(client, container_id: str) -> int:
    pid = client.api.inspect_container(container_id)["State"]["Pid"]
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), 16)


def test_a_scratch_host_has_only_its_program_and_an_agent_sidecar_with_the_capabilities(foreign: base.Testbed,
                                                                                       scratch_image: str):
    probe = foreign["probe"]
    client = foreign.backend.client
    assert len(client.api.inspect_image(scratch_image)["RootFS"]["Layers"]) == 1
    with pytest.raises(ProgramError, match=r"cannot start /bin/sh -c true: .*no such file or directory"):
        probe.launch(["/bin/sh", "-c", "true"], "shell")
    assert probe.main_program().argv == ("/tcpprobe", "serve", str(PORT)) and probe.main_program().running()
    driver = probe.driver
    assert not driver.agent_inside and foreign["peer"].driver.agent_inside
    program_caps = _caps(client, driver.container_id)
    sidecar_caps = _caps(client, driver._agent_sidecar.id)
    assert not program_caps & (1 << CAP_NET_ADMIN), f"Docker's defaults only: {program_caps:#x}"
    assert sidecar_caps & (1 << CAP_NET_ADMIN) and sidecar_caps & (1 << CAP_NET_RAW), f"{sidecar_caps:#x}"
    assert probe.info()["name"] == "probe"  # the sidecar's agent answers for the host


def test_a_reject_on_the_scratch_host_is_applied_captured_and_seen_by_its_program(foreign: base.Testbed, collected):
    probe, peer = foreign["probe"], foreign["peer"]
    listening = probe.sockets(port=PORT, states=["LISTEN"])
    assert [(s["src"], s["handle"]) for s in listening] == [("0.0.0.0", None)]  # the program's, not the agent's

    accepted = peer.connect(probe.addr, PORT)
    assert accepted.ok, accepted
    established = probe.sockets(port=PORT, states=["ESTABLISHED"])
    assert [(s["src"], s["dst"]) for s in established] == [(probe.addr, peer.addr)]
    peer.close(accepted.handle)

    with Reject(probe, "tcp-reset", dport=PORT), capture(probe, f"tcp port {PORT}") as wire:
        refused = peer.connect(probe.addr, PORT)
    assert refused.errname == "ECONNREFUSED", refused
    flags = [(p.src, "R" in p.flags, "S" in p.flags) for p in wire]
    assert (peer.addr, False, True) in flags and (probe.addr, True, False) in flags, wire

    listener = peer.listen(PEER_PORT)
    with Reject(probe, "tcp-reset", direction="out", dport=PEER_PORT):
        result = probe.launch(["/tcpprobe", "connect", peer.addr, str(PEER_PORT), "hello"], "client").wait(30)
    assert result.returncode == 1, result
    assert f"connect(3, {peer.addr}:{PEER_PORT}) = -1 ECONNREFUSED (Connection refused)" in result.stdout.decode()
    peer.close(listener.handle)

    served = probe.main_program().output_so_far().stdout.decode()
    assert f"peer: {peer.addr}:" in served and "accept(3) = 4" in served
    sources = {(e.host, e.source) for e in Timeline.of(collected).events}
    assert {("probe", "fault"), ("probe", "packet"), ("probe", "program"), ("peer", "syscall")} <= sources


def test_a_killed_scratch_host_boots_with_a_new_sidecar_and_its_program_running(foreign: base.Testbed):
    probe, peer = foreign["probe"], foreign["peer"]
    first = probe.driver._agent_sidecar.id
    sleeper = probe.launch(["/tcpprobe", "sleep"], "sleeper")
    probe.kill()
    assert probe.state() == "exited" and sleeper.wait(30).signal == "SIGKILL"
    started = time.monotonic()
    probe.start()
    assert probe.driver._agent_sidecar.id != first, "the sidecar is replaced after a boot"
    assert time.monotonic() - started < 60
    assert probe.main_program().running() and peer.connect(probe.addr, PORT).ok
    assert [s["state"] for s in probe.sockets(port=PORT, states=["LISTEN"])] == ["LISTEN"]
    probe.reset()
    peer.reset()


def test_sidecars_and_foreign_containers_carry_the_run_labels_and_are_reaped(request, scratch_image: str):
    """A run whose process died leaves a scratch host, its sidecar and a network: the reaper removes them all."""
    session = request.getfixturevalue("netfault_testbed").backend
    dead = RunInfo(run_id=new_run_id(), pid=2 ** 22 + 1, pid_start="1", machine=socket.gethostname())
    backend = open_backend("docker", _topology(scratch_image), dead, image=session.image)
    try:
        backend.create("reaped")
        label = {"label": f"{LABEL_RUN}={dead.run_id}"}
        roles = sorted(c["Labels"][LABEL_ROLE] for c in session.client.api.containers(all=True, filters=label))
        assert roles == ["agent-sidecar", "host", "host"]
        report = reap(session.client)
        assert sorted(report.containers) == sorted(f"netfault-{dead.run_id}-reaped-{name}"
                                                   for name in ("probe", "probe-agent", "peer"))
        assert not session.client.api.containers(all=True, filters=label)
        assert not session.client.api.networks(filters=label)
    finally:
        backend.destroy()


def test_an_image_with_extra_packages_runs_their_programs_and_compiles_a_static_binary(request, tmp_path):
    session = request.getfixturevalue("netfault_testbed").backend
    image = ensure_peer_image(session.client, extra_packages=["curl", "gcc", "libc6-dev"], progress=lambda line: None)
    assert image.startswith("netfault/peer-")
    assert ensure_peer_image(session.client, extra_packages=["libc6-dev", "gcc", "curl"],
                             progress=lambda line: None) == image
    backend = open_backend("docker", Topology.of([HostSpec("tools", 40, image=image)], source=__name__),
                           request.config.stash[RUN_KEY], image=session.image)
    try:
        tools = backend.create(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-extras")["tools"]
        assert tools.driver.agent_inside  # built on the peer image, so the agent is inside
        version = tools.launch(["curl", "--version"], "curl").wait(30)
        assert version.returncode == 0 and version.stdout.startswith(b"curl "), version
    finally:
        backend.destroy()
    binary = compile_static(TCPPROBE, tmp_path / "tcpprobe", client=session.client, image=image,
                            progress=lambda line: None)
    assert binary.read_bytes()[:4] == b"\x7fELF"
