"""A host's network configuration as its kernel reports it, to prove that healing left nothing behind.

Read with the command-line tools (`nft -j`, `tc -j`, `ip -j`), a different path from the one faults use to
make their changes (nft scripts, pyroute2 netlink in the agent). Counters, handles, lifetimes and link
statistics are left out: they change without anyone changing the configuration, and so are the rules of
Docker's embedded DNS (chains DOCKER_OUTPUT and DOCKER_POSTROUTING in `ip nat`), which Docker writes with fresh
port numbers each time a container starts.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from .endpoint import Endpoint

SECTIONS = {
    "nftables": "nft -j list ruleset",
    "qdiscs": "tc -j qdisc show",
    "links": "ip -j link show",
    "addresses": "ip -j addr show",
    "routes": "ip -j route show table all",
}
_SEPARATOR = "--netfault-section--"
_DOCKER_DNS_CHAINS = {"DOCKER_OUTPUT", "DOCKER_POSTROUTING"}
_VOLATILE = {"handle", "metainfo", "valid_life_time", "preferred_life_time", "ifindex", "link_index",
             "operstate", "refcnt"}


def _stable(value: Any) -> Any:
    """`value` without the fields that change on their own (counters' figures, handles, lifetimes)."""
    if isinstance(value, dict):
        return {key: ({} if key == "counter" else _stable(item)) for key, item in value.items()
                if key not in _VOLATILE}
    if isinstance(value, list):
        return [_stable(item) for item in value if not (isinstance(item, dict) and set(item) == {"metainfo"})]
    return value


def _not_docker_dns(item: Any) -> bool:
    return not (isinstance(item, dict) and item.get("rule", {}).get("chain") in _DOCKER_DNS_CHAINS)


def _links(links: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per interface: name, kind of link, whether it is administratively up, MTU, master."""
    return [{"ifname": link["ifname"], "link_type": link.get("link_type"), "up": "UP" in link.get("flags", ()),
             "mtu": link.get("mtu"), "master": link.get("master")} for link in links]


def snapshot(host: Endpoint) -> dict[str, Any]:
    """The host's nftables ruleset, qdiscs, links, addresses and routes (normalised JSON)."""
    script = f"; echo {_SEPARATOR}; ".join(SECTIONS.values())
    out = host.run(["sh", "-c", script], timeout=30, check=True).stdout
    parts = out.split(_SEPARATOR + "\n")
    if len(parts) != len(SECTIONS):
        raise RuntimeError(f"reading the network state of {host.name}: expected {len(SECTIONS)} sections, "
                           f"got {len(parts)}:\n{out}")
    state: dict[str, Any] = {}
    for (name, command), text in zip(SECTIONS.items(), parts):
        try:
            parsed = json.loads(text) if text.strip() else []
        except json.JSONDecodeError as exc:
            raise RuntimeError(f"{command} in {host.name} printed no JSON ({exc}):\n{text}") from None
        if name == "nftables":
            parsed = {"nftables": [item for item in parsed["nftables"] if _not_docker_dns(item)]}
        state[name] = _links(parsed) if name == "links" else _stable(parsed)
    return state


def differences(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A unified diff per section that changed (empty when the configurations are the same)."""
    out = []
    for name in SECTIONS:
        if before.get(name) != after.get(name):
            a = json.dumps(before.get(name), indent=1, sort_keys=True).splitlines()
            b = json.dumps(after.get(name), indent=1, sort_keys=True).splitlines()
            out.append(f"{name} ({SECTIONS[name]}):")
            out += [line for line in difflib.unified_diff(a, b, "before", "after", lineterm="", n=2)]
    return "\n".join(out)
