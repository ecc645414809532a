"""The compose file is the topology source: the harness and `docker-compose up` must describe the same hosts."""

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from harness.errors import ConfigError
from harness.topology import COMPOSE_FILE, HostSpec, Topology, load_topology


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


def test_a_topology_made_in_code_keeps_its_hosts_and_defaults():
    topo = Topology.of([HostSpec("db", 30, image="redis:7", environment={"A": "1"}), HostSpec("client", 10)],
                       source="scenario x.yaml")
    assert topo.names == ["db", "client"] and topo.internal and topo.source == "scenario x.yaml"
    assert topo.host("db").addr_in(ipaddress.IPv4Network("10.213.9.0/24")) == "10.213.9.30"
    client = topo.host("client")
    assert (client.image, client.agent, client.command, client.cap_add) == (None, "auto", None, ("NET_ADMIN", "NET_RAW"))
    assert topo.unused_host_number() not in (10, 30, 1)


@pytest.mark.parametrize("hosts, kwargs, message", [
    ([("a", 10), ("a", 20)], {}, r"x\.yaml: host 'a': defined twice"),
    ([("a", 10), ("b", 10)], {}, r"x\.yaml: host 'b': host number 10 \(10\.213\.0\.10\) is taken by host 'a'"),
    ([("a", 1)], {}, r"x\.yaml: host 'a': host number 1 \(10\.213\.0\.1\) is taken by the gateway"),
    ([("a", 255)], {}, r"x\.yaml: host 'a': host number 255 is outside 10\.213\.0\.0/24 \(1-254\)"),
    ([("a", 10)], {"subnet": "10.213.0.0/28"}, None),
    ([("a", 20)], {"subnet": "10.213.0.0/28"}, r"host number 20 is outside 10\.213\.0\.0/28 \(1-14\)"),
    ([("a b", 10)], {}, r"x\.yaml: host 'a b': a host name is 1-31 letters, digits and '-'"),
    ([], {}, r"x\.yaml: no hosts"),
    ([("a", 10)], {"subnet": "10.213.0.1/24"}, r"x\.yaml: subnet '10\.213\.0\.1/24': .*host bits set"),
    ([("a", 10)], {"gateway_number": 0}, r"x\.yaml: gateway number 0 is outside"),
])
def test_topology_of_checks_names_and_host_numbers_naming_the_source(hosts, kwargs, message):
    specs = [HostSpec(name, number) for name, number in hosts]
    if message is None:
        assert Topology.of(specs, source="x.yaml", **kwargs).subnet.prefixlen == 28
        return
    with pytest.raises(ConfigError, match=message):
        Topology.of(specs, source="x.yaml", **kwargs)


def test_topology_of_refuses_an_unknown_agent_mode():
    with pytest.raises(ConfigError, match=r"code: host 'a': agent 'inside': expected one of auto, sidecar"):
        Topology.of([HostSpec("a", 10, agent="inside")])
