"""The compose file is the topology source: the harness and `docker-compose up` must describe the same hosts."""

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from harness.errors import ConfigError
from harness.topology import COMPOSE_FILE, load_topology


def test_topology_has_client_and_server_with_least_privilege():
    topo = load_topology()
    assert topo.names == ["client", "server"]
    assert topo.internal
    for host in topo.hosts:
        assert host.cap_drop == ()
        assert sorted(host.cap_add) == ["NET_ADMIN", "NET_RAW"]
        assert host.init


def test_host_numbers_keep_their_place_on_another_subnet():
    topo = load_topology()
    subnet = ipaddress.IPv4Network("10.213.7.0/24")
    assert topo.host("client").addr_in(subnet) == "10.213.7.10"
    assert topo.host("server").addr_in(subnet) == "10.213.7.20"
    unused = topo.unused_host_number()
    assert unused not in {10, 20, topo.gateway_number}


def test_harness_container_config_matches_compose_file_field_by_field():
    """Drift check: every field the harness takes from the compose file equals the file's own value."""
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    topo = load_topology()
    (net_name, net), = doc["networks"].items()
    subnet = ipaddress.IPv4Network(net["ipam"]["config"][0]["subnet"])
    for spec in topo.hosts:
        svc = doc["services"][spec.name]
        assert spec.addr_in(subnet) == svc["networks"][net_name]["ipv4_address"]
        assert list(spec.cap_add) == svc["cap_add"]
        assert list(spec.cap_drop) == svc.get("cap_drop", [])
        assert spec.sysctls == {k: str(v) for k, v in svc["sysctls"].items()}
        assert list(spec.command) == svc["command"]
        assert "privileged" not in svc


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_compose_tool_accepts_the_file():
    out = subprocess.run(["docker-compose", "-f", str(COMPOSE_FILE), "config", "-q"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_unknown_host_error_names_the_hosts_and_the_file():
    with pytest.raises(ConfigError, match=r"unknown host 'db'.*client, server"):
        load_topology().host("db")


def test_bad_address_names_the_field(tmp_path: Path):
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    doc["services"]["client"]["networks"]["faultnet"]["ipv4_address"] = "192.0.2.7"
    bad = tmp_path / "compose.yml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"services.client: address 192.0.2.7 is outside the subnet"):
        load_topology(bad)
