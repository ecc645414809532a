"""The hosts themselves: least privilege, the private network, per-test sysctls, and a control channel that does
not depend on the network under test."""

import ipaddress
import json
import os
import subprocess

import pytest

from faults import LinkDown
from harness.errors import SysctlError
from harness.topology import load_topology

pytestmark = pytest.mark.faults

CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN, CAP_SYS_MODULE = 12, 13, 21, 16


def _caps(host) -> int:
    status = host.run(["cat", "/proc/self/status"], check=True).stdout
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), 16)


def test_hosts_have_net_admin_and_net_raw_and_are_not_privileged(pair):
    for host in (pair.client, pair.server):
        caps = _caps(host)
        assert caps & (1 << CAP_NET_ADMIN) and caps & (1 << CAP_NET_RAW), f"{host.name}: CapEff {caps:#x}"
        assert not caps & (1 << CAP_SYS_ADMIN) and not caps & (1 << CAP_SYS_MODULE), f"{host.name}: CapEff {caps:#x}"


def test_hosts_sit_on_a_private_internal_network_at_the_compose_host_numbers(pair):
    topo = load_topology()
    subnet = pair.testbed.subnet
    gateway = str(subnet.network_address + topo.gateway_number)
    for host in (pair.client, pair.server):
        assert host.addr == topo.host(host.name).addr_in(subnet)
        routes = json.loads(host.run(["ip", "-j", "-4", "route"], check=True).stdout)
        assert {r["dst"] for r in routes} <= {str(subnet), "default"}, routes
        # Docker keeps a default route via the bridge; on an internal network the engine drops whatever
        # would leave the subnet through it.
        assert {r.get("gateway") for r in routes if r["dst"] == "default"} <= {gateway}, routes
    backend = pair.testbed.backend
    if backend.name == "docker":
        ours = [n for n in backend.client.networks.list(filters={"label": f"netfault.run={backend.run.run_id}"})
                if [c["Subnet"] for c in n.attrs["IPAM"]["Config"]] == [str(subnet)]]
        assert [n.attrs["Internal"] for n in ours] == [True], [n.attrs for n in ours]
    else:
        # The bridge sits in a namespace of its own that forwards nothing; this machine's namespace has no
        # address on the test network.
        bridge = backend.bridges[os.environ.get("PYTEST_XDIST_WORKER", "main")]
        forwarding = subprocess.run(["ip", "netns", "exec", bridge, "sysctl", "-n", "net.ipv4.ip_forward"],
                                    capture_output=True, text=True, check=True).stdout.strip()
        links = json.loads(subprocess.run(["ip", "-n", bridge, "-j", "link", "show"], capture_output=True,
                                          text=True, check=True).stdout)
        assert forwarding == "0" and {link["ifname"] for link in links} == {"lo", "br0", "v10", "v20"}, links
        here = json.loads(subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True,
                                         check=True).stdout)
        assert not [a for link in here for a in link["addr_info"] if a["local"] in (gateway, pair.client.addr, pair.server.addr)], here
    assert ipaddress.IPv4Address(pair.unused_addr) in subnet
    assert pair.unused_addr not in (pair.client.addr, pair.server.addr, gateway)


@pytest.mark.sysctls(client={"net.ipv4.tcp_syn_retries": 2}, server={"net.ipv4.tcp_fin_timeout": 7})
def test_sysctls_marker_sets_values_in_each_host_only(pair):
    def read(host, key):
        return host.run(["cat", "/proc/sys/" + key.replace(".", "/")], check=True).stdout.strip()
    assert read(pair.client, "net.ipv4.tcp_syn_retries") == "2"
    assert read(pair.server, "net.ipv4.tcp_syn_retries") != "2"
    assert read(pair.server, "net.ipv4.tcp_fin_timeout") == "7"
    assert read(pair.client, "net.ipv4.tcp_fin_timeout") != "7"


def test_sysctls_of_the_previous_test_were_restored(pair):
    """Runs after the marker test (pytest keeps file order): its values must be gone."""
    assert pair.client.sysctl_get(["net.ipv4.tcp_syn_retries"]) != {"net.ipv4.tcp_syn_retries": "2"}
    assert pair.server.sysctl_get(["net.ipv4.tcp_fin_timeout"]) != {"net.ipv4.tcp_fin_timeout": "7"}


def test_a_sysctl_the_kernel_does_not_have_is_one_clear_error(pair):
    with pytest.raises(SysctlError, match=r"host client: unknown sysctl 'net.ipv4.no_such_knob': "
                                          r"/proc/sys/net/ipv4/no_such_knob does not exist \(kernel "):
        pair.client.set_sysctls({"net.ipv4.no_such_knob": 1})
    with pytest.raises(SysctlError, match=r"only net.\* sysctls belong to a host's network namespace"):
        pair.client.set_sysctls({"kernel.panic": 1})


def test_control_channel_survives_the_test_network_going_down(pair):
    client = pair.client
    with LinkDown(client):
        assert client.info()["name"] == "client"
        refused = client.connect(addr=pair.server.addr, port=6666)
        assert refused.errname == "ENETUNREACH", refused
    assert client.connect(addr=pair.server.addr, port=6666).errname == "ECONNREFUSED"
