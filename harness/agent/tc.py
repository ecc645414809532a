"""netem qdiscs through pyroute2, each owned by the fault that added it, and a probe of the kernel's tc features.

Egress: a root netem qdisc on the interface with a handle of its own. Ingress: an ifb device of its own,
the interface's ingress qdisc with a u32 filter redirecting every packet to that ifb, and netem as the ifb's
root. Deleting checks ownership: a root qdisc is deleted by its handle (the kernel refuses another handle),
the ifb by name, the ingress qdisc only if the fault created it.
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable
from typing import Any

from .errors import BadRequest
from .link import index_of, iproute, netlink
from .netem import NetemParamError, NetemParams, distribution_table, encode_options, tick_in_usec
from .records import clocks

DIRECTIONS = ("egress", "ingress")
TC_H_ROOT = 0xFFFFFFFF
INGRESS_HANDLE = 0xFFFF0000
ETH_P_ALL = 0x0003
PSCHED = "/proc/net/psched"
FEATURES = ("sch_netem", "ifb", "ingress_redirect")


def _tcmsg_class() -> type:
    """pyroute2's tcmsg whose TCA_OPTIONS are bytes given as they are (see netem.encode_options)."""
    from pyroute2.netlink.rtnl.tcmsg import tcmsg

    class raw_tcmsg(tcmsg):  # noqa: N801 - pyroute2's naming
        nla_map = tuple(("TCA_OPTIONS", "cdata") if name == "TCA_OPTIONS" else (name, kind)
                        for name, kind in tcmsg.nla_map)
        # pyroute2 compiles nla_map once per class and looks the flag up through the class: without this, a
        # subclass made after tcmsg was compiled (any qdisc listed before) used tcmsg's map, which encoded
        # our options as zeros (netem "limit 0": every packet dropped).
        _nlmsg_base__compiled_nla = False

    return raw_tcmsg


def _add_netem(ipr: Any, index: int, handle: int, options: bytes) -> None:
    from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
    from pyroute2.netlink.rtnl import RTM_NEWQDISC

    msg = _tcmsg_class()()
    msg["index"], msg["handle"], msg["parent"] = index, handle, TC_H_ROOT
    msg["attrs"] = [["TCA_KIND", "netem"], ["TCA_OPTIONS", options]]
    ipr.nlm_request(msg, msg_type=RTM_NEWQDISC, msg_flags=NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)


def _qdiscs(ipr: Any, index: int) -> list[dict[str, Any]]:
    return [{"kind": q.get_attr("TCA_KIND"), "handle": q["handle"], "parent": q["parent"]}
            for q in ipr.get_qdiscs(index=index)]


def _root(ipr: Any, index: int) -> dict[str, Any] | None:
    return next((q for q in _qdiscs(ipr, index) if q["parent"] == TC_H_ROOT), None)


def _has_ingress(ipr: Any, index: int) -> bool:
    return any(q["handle"] == INGRESS_HANDLE for q in _qdiscs(ipr, index))


def _name(handle: int) -> str:
    return f"{handle >> 16:x}:"


def _free_handle(ipr: Any) -> int:
    """A qdisc handle no device of the namespace uses."""
    used = {q["handle"] >> 16 for link in ipr.get_links() for q in _qdiscs(ipr, link["index"])}
    return random.choice([major for major in range(0x1000, 0x8000) if major not in used]) << 16


def _options(params: dict[str, Any]) -> tuple[NetemParams, bytes]:
    try:
        netem = NetemParams.from_dict(params)
    except NetemParamError as exc:
        raise BadRequest(f"argument 'params': {exc}") from None
    with open(PSCHED) as file:
        per_usec = tick_in_usec(file.read())
    table = distribution_table(netem.distribution) if netem.distribution else None
    return netem, encode_options(netem, per_usec, table)


def _netem_unknown(exc: OSError) -> OSError:
    if exc.errno == errno.ENOENT:
        return OSError(errno.ENOENT, "the kernel lacks sch_netem (qdisc kind 'netem' is unknown to it)")
    return exc


class _Undo:
    """Steps taken so far, undone in reverse if a later step fails."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, undo: Callable[[], object]) -> None:
        self.steps.append((what, undo))

    def run(self) -> None:
        for what, undo in reversed(self.steps):
            netlink(f"undoing {what}", undo)


def netem_add(iface: str, params: dict[str, Any], direction: str = "egress") -> dict[str, Any]:
    """Add a netem qdisc this call owns on `iface` (egress) or on an ifb fed by `iface`'s ingress.

    Returns what `netem_del` needs (`handle`, `ifb`, `txqlen`) and `t0`/`t1` around the change; the impairment is in
    force at `t1`. If a step fails, the earlier ones are undone before the error answers. An interface with
    an ingress qdisc already, or a root qdisc someone added, is refused (EEXIST).
    """
    if direction not in DIRECTIONS:
        raise BadRequest(f"argument 'direction' must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
    netem, options = _options(params)
    undo = _Undo()
    with iproute() as ipr:
        index = index_of(ipr, iface)
        handle = _free_handle(ipr)
        ifb = txqlen = None
        start = clocks()
        try:
            target = index
            if direction == "ingress":
                ifb, target, txqlen = _ingress_redirect(ipr, index, handle, undo)
            existing = _root(ipr, target)
            # The kernel's default root qdiscs have handle 0; any other was added by someone.
            if existing is not None and existing["handle"] != 0:
                raise OSError(errno.EEXIST, f"{iface} has a root qdisc already ({existing['kind']} "
                                            f"{_name(existing['handle'])}): another fault's?")
            try:
                netlink(f"adding netem on {ifb or iface}", lambda: _add_netem(ipr, target, handle, options))
            except OSError as exc:
                raise _netem_unknown(exc) from None
        except BaseException:
            undo.run()
            raise
        end = clocks()
    return {"op": "netem_add", "iface": iface, "direction": direction, "handle": handle,
            "handle_name": _name(handle), "ifb": ifb, "txqlen": txqlen, "params": netem.to_dict(),
            "t0": start["mono"], "t1": end["mono"], "t0_real": start["real"], "t1_real": end["real"]}


def _ingress_redirect(ipr: Any, index: int, handle: int, undo: _Undo) -> tuple[str, int, int]:
    """An ifb of our own, and `index`'s ingress (ours too) redirected to it; returns the ifb's name and index,
    and the interface's txqlen before."""
    if _has_ingress(ipr, index):
        raise OSError(errno.EEXIST, "the interface has an ingress qdisc already: another fault's?")
    ifb = f"nfifb{handle >> 16:x}"
    netlink(f"creating {ifb}", lambda: ipr.link("add", ifname=ifb, kind="ifb"))
    ifb_index = index_of(ipr, ifb)
    undo.push(f"creating {ifb}", lambda: ipr.link("del", index=ifb_index))
    netlink(f"setting {ifb} up", lambda: ipr.link("set", index=ifb_index, state="up"))
    # An ingress qdisc sets a queueless device's (a veth's) txqlen 0 to 1000: put it back after deleting ours.
    txqlen = _txqlen(ipr, index)
    undo.push("the ingress qdisc's change of txqlen", lambda: ipr.link("set", index=index, txqlen=txqlen))
    netlink("adding the ingress qdisc", lambda: ipr.tc("add", "ingress", index, INGRESS_HANDLE))
    undo.push("adding the ingress qdisc", lambda: ipr.tc("del", "ingress", index, INGRESS_HANDLE))
    # u32 matching every packet (pyroute2 needs a classid, which a redirecting action ignores).
    netlink(f"redirecting ingress to {ifb}", lambda: ipr.tc(
        "add-filter", "u32", index, parent=INGRESS_HANDLE, protocol=ETH_P_ALL, prio=1, keys=["0x0/0x0+0"],
        target=0x10001, action=[{"kind": "mirred", "direction": "egress", "action": "redirect",
                                 "ifindex": ifb_index}]))
    return ifb, ifb_index, txqlen


def _txqlen(ipr: Any, index: int) -> int:
    return int(ipr.get_links(index)[0].get_attr("IFLA_TXQLEN"))


def netem_del(iface: str, handle: int, ifb: str | None = None, txqlen: int | None = None) -> dict[str, Any]:
    """Delete what `netem_add` created, if it is still there; returns what was deleted.

    With `ifb` (ingress), the interface's ingress qdisc is deleted too (`netem_add` refuses to share one) and
    its txqlen set back to `txqlen`, the value `netem_add` found.
    """
    deleted: list[str] = []
    with iproute() as ipr:
        index = index_of(ipr, iface)
        if ifb is None:
            root = _root(ipr, index)
            if root is not None and root["handle"] == handle:
                netlink(f"deleting netem {_name(handle)} on {iface}",
                        lambda: ipr.tc("del", index=index, parent=TC_H_ROOT, handle=handle))
                deleted.append(f"netem {_name(handle)} on {iface}")
            return {"deleted": deleted}
        if _has_ingress(ipr, index):
            netlink(f"deleting the ingress qdisc of {iface}", lambda: ipr.tc("del", "ingress", index, INGRESS_HANDLE))
            deleted.append(f"ingress qdisc on {iface}")
        if txqlen is not None and _txqlen(ipr, index) != txqlen:
            netlink(f"setting the txqlen of {iface} back to {txqlen}", lambda: ipr.link("set", index=index, txqlen=txqlen))
            deleted.append(f"txqlen change on {iface}")
        found = ipr.link_lookup(ifname=ifb)
        if found:
            netlink(f"deleting {ifb}", lambda: ipr.link("del", index=found[0]))
            deleted.append(f"{ifb} (and its netem)")
    return {"deleted": deleted}


def tc_features() -> dict[str, Any]:
    """Which tc features netfault's faults use the kernel has: {feature: None if present, else why not}.

    Probed on a throwaway veth pair (created and deleted here): a netem qdisc (`sch_netem`), an ifb device
    (`ifb`), an ingress qdisc with a u32 filter and a mirred redirect to that ifb (`ingress_redirect`).
    """
    suffix = f"{os.getpid() % 0x10000:x}{random.randrange(0x1000):x}"
    probe, peer, ifb = f"nfp{suffix}", f"nfq{suffix}", f"nfi{suffix}"
    found: dict[str, str | None] = {}
    with iproute() as ipr:
        netlink("creating a probe veth pair", lambda: ipr.link("add", ifname=probe, kind="veth", peer=peer))
        index = index_of(ipr, probe)
        try:
            found["sch_netem"] = _why_not(lambda: _add_netem(ipr, index, 0x10000, encode_options(NetemParams(), 1.0)))
            found["ifb"] = _why_not(lambda: ipr.link("add", ifname=ifb, kind="ifb"))
            if found["ifb"] is None:
                ifb_index = index_of(ipr, ifb)
                found["ingress_redirect"] = _why_not(lambda: _probe_redirect(ipr, index, ifb_index))
                netlink(f"deleting {ifb}", lambda: ipr.link("del", index=ifb_index))
            else:
                found["ingress_redirect"] = f"needs ifb ({found['ifb']})"
        finally:
            netlink(f"deleting {probe}", lambda: ipr.link("del", index=index))
    return {"features": found, "clock": clocks()}


def _probe_redirect(ipr: Any, index: int, ifb_index: int) -> None:
    ipr.tc("add", "ingress", index, INGRESS_HANDLE)
    ipr.tc("add-filter", "u32", index, parent=INGRESS_HANDLE, protocol=ETH_P_ALL, prio=1, keys=["0x0/0x0+0"],
           target=0x10001, action=[{"kind": "mirred", "direction": "egress", "action": "redirect",
                                    "ifindex": ifb_index}])


def _why_not(call: Callable[[], object]) -> str | None:
    """None if `call` works; the kernel's errno and message if it fails."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        call()
    except NetlinkError as exc:
        return f"{errno.errorcode.get(exc.code, exc.code)}: {os.strerror(exc.code)}"
    return None
