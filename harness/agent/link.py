"""Interfaces of the host's namespace through pyroute2: link state, and the addresses and routes a down loses.

A link going down loses its routes (IPv4 keeps its addresses, IPv6 loses them too); coming back up, the
kernel re-creates only the routes it derives from addresses (proto kernel, and the local table). So
`link_show` reports the addresses and the other routes, and `link_set(..., restore=...)` re-adds the ones of
an earlier snapshot that are missing after the change.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import BadRequest
from .records import clocks

T = TypeVar("T")
STATES = ("up", "down")
FAMILIES = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}
FAMILY_NUMBERS = {name: number for number, name in FAMILIES.items()}
RTPROT_KERNEL = 2
RT_TABLE_LOCAL = 255
IFF_UP = 0x1
_ROUTE_FIELDS = ("family", "dst", "dst_len", "gateway", "prefsrc", "priority", "table", "proto", "scope", "type",
                 "tos")
_ROUTE_KEY = ("family", "dst", "dst_len", "gateway", "table", "priority", "type", "tos")
_ADDR_KEY = ("family", "address", "prefixlen")


def netlink(what: str, call: Callable[[], T]) -> T:
    """Run a pyroute2 call; a NetlinkError becomes an OSError with the kernel's errno and `what` failed."""
    from pyroute2.netlink.exceptions import NetlinkError  # pyroute2 takes seconds to import: only netlink ops pay

    try:
        return call()
    except NetlinkError as exc:
        raise OSError(exc.code, f"{what}: {os.strerror(exc.code)}") from None


def iproute() -> Any:
    from pyroute2 import IPRoute

    return IPRoute()


def index_of(ipr: Any, iface: str) -> int:
    found = ipr.link_lookup(ifname=iface)
    if not found:
        names = sorted(link.get_attr("IFLA_IFNAME") for link in ipr.get_links())
        raise BadRequest(f"no interface {iface!r} (argument 'iface'); this host has: {', '.join(names)}")
    return int(found[0])


def _addr(msg: Any) -> dict[str, Any]:
    return {"family": FAMILIES.get(msg["family"], str(msg["family"])),
            "address": msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS"), "prefixlen": msg["prefixlen"],
            "broadcast": msg.get_attr("IFA_BROADCAST"), "label": msg.get_attr("IFA_LABEL"), "scope": msg["scope"]}


def _route(msg: Any) -> dict[str, Any]:
    return {"family": FAMILIES.get(msg["family"], str(msg["family"])), "dst": msg.get_attr("RTA_DST"),
            "dst_len": msg["dst_len"], "gateway": msg.get_attr("RTA_GATEWAY"), "prefsrc": msg.get_attr("RTA_PREFSRC"),
            "priority": msg.get_attr("RTA_PRIORITY"), "table": msg.get_attr("RTA_TABLE") or msg["table"],
            "proto": msg["proto"], "scope": msg["scope"], "type": msg["type"], "tos": msg["tos"]}


def _kernel_managed(route: dict[str, Any]) -> bool:
    """Routes the kernel derives from addresses (it re-creates them when the link comes up)."""
    return route["proto"] == RTPROT_KERNEL or route["table"] == RT_TABLE_LOCAL


def _link_local(addr: dict[str, Any]) -> bool:
    """IPv6 link-local addresses: the kernel configures them itself when the link comes up."""
    return addr["family"] == "inet6" and ipaddress.IPv6Address(addr["address"]).is_link_local


def snapshot(ipr: Any, index: int) -> dict[str, Any]:
    link = ipr.get_links(index)[0]
    return {
        "ifname": link.get_attr("IFLA_IFNAME"), "index": index, "up": bool(link["flags"] & IFF_UP),
        "operstate": link.get_attr("IFLA_OPERSTATE"),
        "addrs": [_addr(msg) for msg in ipr.get_addr(index=index)],
        "routes": [r for r in (_route(msg) for msg in ipr.get_routes(oif=index)) if not _kernel_managed(r)],
        "clock": clocks(),
    }


def link_show(iface: str = "eth0") -> dict[str, Any]:
    """State of `iface`: up, operstate, addresses, and the routes through it the kernel does not derive."""
    with iproute() as ipr:
        return snapshot(ipr, index_of(ipr, iface))


def _key(entry: dict[str, Any], fields: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(entry[f] for f in fields)


def _restore(ipr: Any, index: int, wanted: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Re-add the addresses and routes of `wanted` that `index` lacks now; returns what was added."""
    have_addrs = {_key(a, _ADDR_KEY) for a in snapshot(ipr, index)["addrs"]}
    added: dict[str, list[dict[str, Any]]] = {"addrs": [], "routes": []}
    for addr in wanted["addrs"]:
        if _key(addr, _ADDR_KEY) in have_addrs or _link_local(addr):
            continue
        args = {k: v for k, v in addr.items() if v is not None and k not in ("family", "scope")}
        _add_existing_ok(f"restoring address {addr['address']}/{addr['prefixlen']}",
                         lambda: ipr.addr("add", index=index, **args))
        added["addrs"].append(addr)
    have_routes = {_key(r, _ROUTE_KEY) for r in snapshot(ipr, index)["routes"]}
    # Routes through a gateway need the route to the gateway: add direct routes first.
    for route in sorted(wanted["routes"], key=lambda r: r["gateway"] is not None):
        if _key(route, _ROUTE_KEY) in have_routes:
            continue
        args = {k: route[k] for k in _ROUTE_FIELDS if route[k] is not None}
        args["family"] = FAMILY_NUMBERS[route["family"]]
        _add_existing_ok(f"restoring route {route['dst'] or 'default'}/{route['dst_len']}",
                         lambda: ipr.route("add", oif=index, **args))
        added["routes"].append(route)
    return added


def _add_existing_ok(what: str, call: Callable[[], object]) -> None:
    """Add something; EEXIST means the kernel re-created it meanwhile, which is the state wanted."""
    try:
        netlink(what, call)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise


def link_set(iface: str, state: str, restore: dict[str, Any] | None = None) -> dict[str, Any]:
    """Set `iface` up or down; `before` is its state read just before. With `restore` (a `link_show` result),
    re-add that snapshot's addresses and routes that are missing afterwards (`restored` lists them).

    `t0`/`t1` (CLOCK_MONOTONIC) are around the netlink call: the change is in force at `t1`.
    """
    if state not in STATES:
        raise BadRequest(f"argument 'state' must be one of {', '.join(STATES)}, not {state!r}")
    with iproute() as ipr:
        index = index_of(ipr, iface)
        before = snapshot(ipr, index)
        start = clocks()
        netlink(f"setting {iface} {state}", lambda: ipr.link("set", index=index, state=state))
        end = clocks()
        restored = _restore(ipr, index, restore) if restore is not None else {"addrs": [], "routes": []}
    return {"op": "link_set", "iface": iface, "state": state, "before": before, "restored": restored,
            "t0": start["mono"], "t1": end["mono"], "t0_real": start["real"], "t1_real": end["real"]}
