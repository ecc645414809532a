"""Partitions and power loss: every packet between groups of hosts, or in and out of one host, dropped
in the hosts' own namespaces (built on firewall.HostRules: each host's rules in a table the fault owns).
"""

from __future__ import annotations

from collections.abc import Sequence

from harness.backends.base import Host

from .firewall import FirewallFault, HostRules, host_arg, new_name
from .rules import Match, Rule, Ruleset


def _side(parameter: str, value: Host | Sequence[Host]) -> list[Host]:
    single = isinstance(value, (Host, str)) or not isinstance(value, Sequence)
    hosts = [value] if single else list(value)
    if not hosts:
        raise ValueError(f"{parameter} must be a Host or a non-empty sequence of Hosts; got {value!r}")
    return [host_arg(parameter, host) for host in hosts]


class Partition(FirewallFault):
    """Hosts of `a` and hosts of `b` stop hearing each other; each side a Host or a sequence of Hosts.

    Every IPv4 packet between the sides is dropped where it leaves and where it arrives, so the receiving
    side's capture shows nothing (and neither does the sender's: netfilter output runs before the capture
    tap; a UDP sendto() across the partition fails with EPERM in the sender).

    one_way=True: only `a`'s packets to `b` are lost; `a` still hears `b`.
    on_arrival=True: drop only where packets arrive: they cross the wire and show on both hosts' captures
    (so retransmission schedules stay observable) and the senders see no local error, but the receiving
    stack never sees them. backend: "nft" or "iptables" (None: nft where the host has it). ARP still works:
    the hosts are up, a firewall separates them (see PowerLoss for a host that is gone).
    """

    def __init__(self, a: Host | Sequence[Host], b: Host | Sequence[Host], *, one_way: bool = False,
                 on_arrival: bool = False, backend: str | None = None) -> None:
        self.a, self.b = _side("a", a), _side("b", b)
        names = [host.name for host in self.a + self.b]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"a and b must be disjoint groups of distinct hosts; {', '.join(repeated)} is there twice")
        self.one_way = one_way
        self.on_arrival = on_arrival
        name = new_name()
        lost = [(self.a, self.b)] if one_way else [(self.a, self.b), (self.b, self.a)]
        rules: dict[str, list[Rule]] = {}
        for senders, receivers in lost:
            for receiver in receivers:
                rules.setdefault(receiver.name, []).append(Rule("input", _peers(senders), "drop"))
            if not on_arrival:
                for sender in senders:
                    rules.setdefault(sender.name, []).append(Rule("output", _peers(receivers), "drop"))
        hosts = [host for host in self.a + self.b if host.name in rules]
        super().__init__([HostRules(host, Ruleset(name, tuple(rules[host.name])), backend) for host in hosts])

    def describe(self) -> str:
        a, b = ",".join(host.name for host in self.a), ",".join(host.name for host in self.b)
        cut = f"{a} -/-> {b} ({b} still reaches {a})" if self.one_way else f"{a} <-/-> {b}"
        where = "on arrival" if self.on_arrival else "on leaving and on arrival"
        return f"Partition {cut}: all IPv4 dropped {where} ({self.backend}, {self.name} in each host)"


def _peers(hosts: list[Host]) -> Match:
    return Match(peers=tuple(host.addr for host in hosts))


class PowerLoss(FirewallFault):
    """`host` drops everything in and out, as if it lost power: no RST, no FIN, no ARP answers.

    Its processes keep running (TCP retransmits into the void, a UDP sendto() fails with EPERM) but no IPv4
    or ARP packet crosses its interface; peers see silence, and once their ARP entries expire, EHOSTUNREACH as
    for a dead host on the LAN. The host's own capture still shows what arrives (the tap runs before the
    firewall). backend: "nft" or "iptables" (iptables + arptables).
    """

    def __init__(self, host: Host, *, backend: str | None = None) -> None:
        self.host = host_arg("host", host)
        rules = (Rule("input", Match(), "drop"), Rule("output", Match(), "drop"))
        super().__init__([HostRules(host, Ruleset(new_name(), rules, arp=True), backend)])

    def describe(self) -> str:
        return f"PowerLoss of {self.parts[0].describe()}: all IPv4 and ARP dropped in and out"
