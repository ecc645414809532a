"""netem: the capability check agrees with iproute2, a real netem qdisc is verified with `tc -j` (on kernels
that have sch_netem: the kernel matrix), and a failed apply leaves nothing behind."""

from __future__ import annotations

import errno
import json
import re

import pytest

from faults import Netem, netem_missing, require_netem
from harness.channel import AgentOSError

pytestmark = pytest.mark.faults

NETEM_REASON = "kernel lacks sch_netem: modprobe sch_netem or run it under the kernel matrix"


def _qdiscs(host, dev: str = "eth0") -> list[dict]:
    return json.loads(host.run(["tc", "-j", "qdisc", "show", "dev", dev], check=True).stdout)


def _links(host) -> list[str]:
    return [link["ifname"] for link in json.loads(host.run(["ip", "-j", "link", "show"], check=True).stdout)]


def _iproute2_knows_netem(host) -> bool:
    """Ask the kernel through iproute2 instead of the agent: a netem qdisc on a veth pair made for it."""
    host.run(["ip", "link", "add", "nfchk0", "type", "veth", "peer", "name", "nfchk1"], check=True)
    try:
        added = host.run(["tc", "qdisc", "add", "dev", "nfchk0", "root", "netem", "delay", "1ms"])
    finally:
        host.run(["ip", "link", "del", "nfchk0"], check=True)
    assert added.returncode == 0 or "Specified qdisc kind is unknown" in added.stderr, added
    return added.returncode == 0


def test_capability_check_agrees_with_iproute2(pair):
    """On this CI kernel (CONFIG_NET_SCH_NETEM unset) the check reports exactly why netem faults skip."""
    server = pair.server
    expected = None if _iproute2_knows_netem(server) else NETEM_REASON
    assert netem_missing(server) == expected, f"kernel {server.kernel_release}"
    assert netem_missing(server, "ingress") == expected, f"kernel {server.kernel_release}"
    assert _links(server) == ["lo", "eth0"], "the probes' throwaway devices are gone"


def test_netem_egress_in_force_and_healed(pair):
    """delay 100ms 10ms 25% loss 1% on the server's eth0: `tc -j` shows it; heal removes only it."""
    server = pair.server
    require_netem(server)
    fault = Netem(server, delay_ms=100, jitter_ms=10, correlation=25, loss_pct=1, limit=500)
    with fault:
        during = _qdiscs(server)
        ping = pair.client.run(["ping", "-c", "5", "-i", "0.2", "-q", server.addr])
    fault.heal()
    after = _qdiscs(server)
    evidence = f"\n{fault.record()}\nduring {during}\nafter {after}\n{ping.stdout}"

    netem = [q for q in during if q["kind"] == "netem"]
    assert len(netem) == 1 and netem[0]["root"] and netem[0]["handle"] == fault.added["handle_name"], evidence
    options = netem[0]["options"]
    assert options["limit"] == 500, evidence
    assert options["delay"] == pytest.approx({"delay": 0.1, "jitter": 0.01, "correlation": 0.25}), evidence
    assert options["loss-random"]["loss"] == pytest.approx(0.01), evidence
    assert not [q for q in after if q["kind"] == "netem"], evidence
    rtt = re.search(r"rtt min/avg/max/mdev = ([\d.]+)/", ping.stdout)
    assert rtt and float(rtt.group(1)) >= 90, "replies leave the server 100 +- 10 ms late" + evidence


def test_netem_ingress_through_ifb(pair):
    """Ingress netem: the server's eth0 ingress redirected to an ifb of the fault's own, netem its root.

    Without require_netem: on a kernel without sch_netem the fault itself raises NetemUnavailable, which the
    plugin reports as a skip with the same reason.
    """
    server = pair.server
    with Netem(server, direction="ingress", delay_ms=50) as fault:
        ifb = fault.added["ifb"]
        during = _qdiscs(server, ifb)
        ingress = _qdiscs(server)
    after_links = _links(server)
    evidence = f"\n{fault.record()}\nifb {during}\neth0 {ingress}\nlinks after {after_links}"
    assert [q["kind"] for q in during if q["root"]] == ["netem"], evidence
    assert "ingress" in [q["kind"] for q in ingress], evidence
    assert ifb not in after_links and "ingress" not in [q["kind"] for q in _qdiscs(server)], evidence


def test_failed_apply_leaves_nothing(pair):
    """On a kernel without sch_netem the agent's netem_add fails with ENOENT after building the ingress path
    (ifb, ingress qdisc, redirect): every step is undone before the error answers."""
    server = pair.server
    if netem_missing(server) is None:
        pytest.skip("this kernel has sch_netem: the failure path needs one without")
    links, qdiscs = _links(server), _qdiscs(server)
    for direction in ("egress", "ingress"):
        with pytest.raises(AgentOSError) as raised:
            server.netem_add("eth0", {"delay_ms": 10}, direction)
        assert raised.value.errno == errno.ENOENT and "lacks sch_netem" in str(raised.value), raised.value
    assert _links(server) == links and _qdiscs(server) == qdiscs, "nothing left after the failed attempts"
