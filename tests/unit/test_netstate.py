"""harness.netstate: what counts as a change of a host's network configuration, and what does not."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from harness.netstate import SECTIONS, differences, snapshot

NAT = [{"table": {"family": "ip", "name": "nat", "handle": 1}},
       {"rule": {"family": "ip", "table": "nat", "chain": "DOCKER_OUTPUT", "handle": 9,
                 "expr": [{"match": {"op": "==", "right": 46393}}, {"counter": {"packets": 3, "bytes": 180}}]}}]
OUR_TABLE = {"table": {"family": "ip", "name": "netfault_0a1b2c3d", "handle": 7}}
LINK = {"ifindex": 22, "ifname": "eth0", "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"], "mtu": 1500,
        "operstate": "UP", "link_type": "ether"}
ADDR = {**LINK, "addr_info": [{"family": "inet", "local": "10.213.0.10", "prefixlen": 24,
                               "valid_life_time": 4294967295, "preferred_life_time": 4294967295}]}
ROUTES = [{"dst": "default", "gateway": "10.213.0.1", "dev": "eth0", "flags": []}]


class FakeHost:
    """A host whose commands print the given sections, as `sh -c` would with the separators."""

    name = "client"

    def __init__(self, sections: dict[str, object]) -> None:
        self.sections = sections

    def run(self, cmd: list[str], timeout: float, check: bool) -> SimpleNamespace:
        texts = [json.dumps(self.sections[name]) + "\n" for name in SECTIONS]
        return SimpleNamespace(stdout="--netfault-section--\n".join(texts))


def sections(nft: list, link: dict = LINK, routes: list = ROUTES, qdiscs: list | None = None) -> dict[str, object]:
    qdiscs = [{"kind": "noqueue", "handle": "0:", "dev": "eth0", "root": True}] if qdiscs is None else qdiscs
    return {"nftables": {"nftables": [{"metainfo": {"version": "1.0.6"}}, *nft]}, "qdiscs": qdiscs,
            "links": [link], "addresses": [ADDR], "routes": routes}


def test_counters_handles_and_docker_dns_ports_are_not_changes():
    before = snapshot(FakeHost(sections(NAT)))
    later = json.loads(json.dumps(NAT))
    later[1]["rule"]["expr"][0]["match"]["right"] = 33775
    later[1]["rule"]["expr"][1]["counter"] = {"packets": 99, "bytes": 9999}
    later[0]["table"]["handle"] = 5
    relinked = {**LINK, "ifindex": 40, "operstate": "LOWERLAYERDOWN"}
    assert differences(before, snapshot(FakeHost(sections(later, link=relinked)))) == ""


@pytest.mark.parametrize(("changed", "section"), [
    (sections([*NAT, OUR_TABLE]), "nftables"),
    (sections(NAT, link={**LINK, "flags": ["BROADCAST", "MULTICAST"]}), "links"),
    (sections(NAT, routes=[]), "routes"),
    (sections(NAT, qdiscs=[{"kind": "netem", "handle": "8001:", "dev": "eth0", "root": True}]), "qdiscs"),
])
def test_a_left_table_link_route_or_qdisc_is_a_difference(changed, section):
    diff = differences(snapshot(FakeHost(sections(NAT))), snapshot(FakeHost(changed)))
    assert diff.startswith(f"{section} ({SECTIONS[section]}):"), diff
    assert [line for line in diff.splitlines() if line.startswith(("+ ", "- ", "+", "-"))], diff


def test_output_that_is_not_json_names_the_command():
    host = FakeHost(sections(NAT))
    host.run = lambda cmd, timeout, check: SimpleNamespace(
        stdout="--netfault-section--\n".join(['{"nftables": []}\n', "Error: something\n", "[]\n", "[]\n", "[]\n"]))
    with pytest.raises(RuntimeError, match="tc -j qdisc show in client printed no JSON"):
        snapshot(host)
