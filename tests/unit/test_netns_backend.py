"""The netns backend's pure parts: prerequisites, MAC addresses, reaping decisions (no namespaces made)."""

from __future__ import annotations

import json

import pytest

from harness import reaper
from harness.backends import netns, open_backend
from harness.errors import ConfigError, EngineUnavailable
from harness.runinfo import RunInfo
from harness.topology import HostSpec, Topology


def test_mac_is_dockers_for_the_address_so_a_reboot_keeps_it():
    assert netns._mac("10.213.0.10") == "02:42:0a:d5:00:0a"
    assert netns._mac("10.213.0.20") == "02:42:0a:d5:00:14"


def test_missing_tools_are_named_with_the_packages_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns.shutil, "which", lambda tool: None if tool in ("tcpdump", "nft") else f"/usr/bin/{tool}")
    with pytest.raises(EngineUnavailable, match=r"missing: nft, tcpdump: apt-get install nftables tcpdump"):
        netns.check_prerequisites()


def test_not_root_is_refused_with_the_alternative(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    with pytest.raises(EngineUnavailable, match="needs root .* --netfault-backend docker"):
        netns.check_prerequisites()


def test_reap_removes_unlabelled_and_dead_namespaces_and_keeps_live_and_foreign_ones(
        monkeypatch: pytest.MonkeyPatch, tmp_path):
    labels = {
        "nf-dead-a": {"netfault.run": "dead", "netfault.pid": "999999999", "netfault.pid-start": "1",
                      "netfault.machine": reaper.socket.gethostname()},
        "nf-foreign-a": {"netfault.run": "foreign", "netfault.pid": "1", "netfault.machine": "elsewhere"},
        "nf-live-a": {"netfault.run": "live", "netfault.pid": str(netns.os.getpid()),
                      "netfault.machine": reaper.socket.gethostname()},
    }
    monkeypatch.setattr(netns, "LABELS_DIR", tmp_path)
    monkeypatch.setattr(netns, "FILES_DIR", tmp_path / "files")
    for name, value in labels.items():
        (tmp_path / name).write_text(json.dumps(value))
        (tmp_path / "files" / name).mkdir(parents=True)
    monkeypatch.setattr(netns, "list_namespaces", lambda: sorted([*labels, "nf-unlabelled-a"]))
    killed: list[str] = []
    monkeypatch.setattr(netns, "kill_namespace", killed.append)
    report = reaper.reap_namespaces()
    assert killed == report.namespaces == ["nf-dead-a", "nf-unlabelled-a"]
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == ["nf-foreign-a", "nf-live-a"]  # host files
    assert report.kept_runs == {"live"} and report.foreign_runs == {"foreign"}
    assert report.summary().startswith("removed 2 network namespace(s); kept 1 live run(s): live")


def test_an_image_is_refused_naming_the_host_and_the_backend(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)  # refused before the prerequisites are looked at
    topology = Topology.of([HostSpec("client", 10), HostSpec("db", 30, image="redis:7")], source="db.yaml")
    with pytest.raises(ConfigError, match=r"host db \(db.yaml\): image redis:7 needs the docker backend"):
        netns.NetnsBackend(topology, RunInfo.current())


def test_open_backend_names_the_known_backends():
    with pytest.raises(ConfigError, match=r"unknown backend 'qemu' \(known: docker, netns\)"):
        open_backend("qemu", Topology.of([HostSpec("a", 10)]), RunInfo.current())
