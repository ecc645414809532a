"""Firewall rules as data, and the scripts that put them in force: nft, and iptables-restore/arptables-restore.

Pure functions, no host: a `Ruleset` is what one fault puts in one host, in objects named after the fault
(an nft table `netfault_<id>`, or iptables chains `netfault_<id>_in` / `netfault_<id>_out`), so that
healing removes exactly those and nothing else.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterable
from dataclasses import dataclass

PROTOCOLS = ("tcp", "udp", "icmp", "all")
DIRECTIONS = ("in", "out", "both")
REJECT_TYPES = ("icmp-host-unreachable", "icmp-net-unreachable", "icmp-port-unreachable",
                "icmp-admin-prohibited", "icmp-host-prohibited", "icmp-net-prohibited", "tcp-reset")
BACKENDS = ("nft", "iptables")
HOOKS = ("input", "output")
# Actions: "drop", "accept" (let the packet past this fault's chain only), or a member of REJECT_TYPES.
ACTIONS = ("drop", "accept", *REJECT_TYPES)

_NFT_REJECT = {kind: f"reject with icmp type {kind.removeprefix('icmp-')}" for kind in REJECT_TYPES[:-1]}
_NFT_REJECT["tcp-reset"] = "reject with tcp reset"
_XT_HOOK = {"input": "INPUT", "output": "OUTPUT"}
_XT_SUFFIX = {"input": "in", "output": "out"}
# Per family: the tool, its restore command (adding to what is there) and its save command.
XTABLES = {"ip": ("iptables", ("iptables-restore", "--noflush"), ("iptables-save", "-t", "filter")),
           "arp": ("arptables", ("arptables-restore", "--noflush"), ("arptables-save",))}


def choice(parameter: str, value: object, allowed: Iterable[str]) -> str:
    """`value` if it is one of `allowed`, else a ValueError naming the parameter and the allowed values."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{parameter} must be one of {', '.join(allowed)}; got {value!r}")
    return str(value)


def port(parameter: str, value: object) -> int | None:
    """A port number 1..65535 (or None), else a ValueError naming the parameter."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{parameter} must be a port number in 1..65535; got {value!r}")
    return value


def ipv4(parameter: str, value: object) -> str:
    """An IPv4 address in dotted form, else a ValueError naming the parameter."""
    try:
        return str(ipaddress.IPv4Address(value))  # type: ignore[arg-type]
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise ValueError(f"{parameter} must be a Host or an IPv4 address like '10.1.2.3'; got {value!r}") from None


@dataclass(frozen=True)
class Match:
    """Which IPv4 packets a rule takes. `peers` are the far end: sources on input, destinations on output.

    Ports need tcp or udp; with protocol "all" they match both. `icmp_type` (an ICMP type name), `tcp_flags`
    (one flag, e.g. "rst", that must be set) and `iif` (input interface) serve the exemptions a Reject needs
    (firewall.Reject).
    """

    protocol: str = "all"
    dport: int | None = None
    sport: int | None = None
    peers: tuple[str, ...] = ()
    icmp_type: str | None = None
    tcp_flags: str | None = None
    iif: str | None = None

    def __post_init__(self) -> None:
        choice("protocol", self.protocol, PROTOCOLS)
        port("dport", self.dport)
        port("sport", self.sport)
        if self.has_ports and self.protocol == "icmp":
            raise ValueError("dport/sport need protocol tcp, udp or all (tcp and udp); got protocol 'icmp'")
        if self.icmp_type is not None and self.protocol != "icmp":
            raise ValueError(f"icmp_type needs protocol 'icmp'; got {self.protocol!r}")
        if self.tcp_flags is not None and self.protocol != "tcp":
            raise ValueError(f"tcp_flags needs protocol 'tcp'; got {self.protocol!r}")
        for peer in self.peers:
            ipv4("peer", peer)

    @property
    def has_ports(self) -> bool:
        return self.dport is not None or self.sport is not None

    def describe(self, hook: str | None = None) -> str:
        """E.g. "tcp dport 6666 from 10.1.2.10"; the peer word follows the hook (from/to, or peer)."""
        words = ["tcp+udp" if self.has_ports else "all IPv4"] if self.protocol == "all" else [self.protocol]
        for label, value in (("dport", self.dport), ("sport", self.sport), ("type", self.icmp_type),
                             ("flags", self.tcp_flags), ("via", self.iif)):
            if value is not None:
                words.append(f"{label} {value}")
        if self.peers:
            words.append({"input": "from", "output": "to"}.get(hook or "", "peer") + " " + ",".join(self.peers))
        return " ".join(words)

    def nft(self, hook: str) -> str:
        """The nft match expression (empty for everything)."""
        parts = [] if self.iif is None else [f'iifname "{self.iif}"']
        if self.peers:
            field = "saddr" if hook == "input" else "daddr"
            peers = self.peers[0] if len(self.peers) == 1 else "{ " + ", ".join(self.peers) + " }"
            parts.append(f"ip {field} {peers}")
        l4 = "th" if self.protocol == "all" else self.protocol
        if self.protocol == "all" and self.has_ports:
            parts.append("meta l4proto { tcp, udp }")
        elif self.protocol != "all" and not self.has_ports and self.icmp_type is None and self.tcp_flags is None:
            parts.append(f"meta l4proto {self.protocol}")
        if self.dport is not None:
            parts.append(f"{l4} dport {self.dport}")
        if self.sport is not None:
            parts.append(f"{l4} sport {self.sport}")
        if self.icmp_type is not None:
            parts.append(f"icmp type {self.icmp_type}")
        if self.tcp_flags is not None:
            parts.append(f"tcp flags & {self.tcp_flags} == {self.tcp_flags}")
        return " ".join(parts)

    def iptables(self, hook: str) -> list[str]:
        """The iptables match arguments, one string per rule (protocol "all" with ports, or several peers,
        take one rule per protocol and peer)."""
        flag = "-s" if hook == "input" else "-d"
        peers = [f"{flag} {peer}/32" for peer in self.peers] or [""]
        iif = "" if self.iif is None else f"-i {self.iif}"
        protocols = ["tcp", "udp"] if self.protocol == "all" and self.has_ports else [self.protocol]
        rules = []
        for peer in peers:
            for protocol in protocols:
                args = [] if protocol == "all" else [f"-p {protocol}"]
                if protocol in ("tcp", "udp") and (self.has_ports or self.tcp_flags):
                    args.append(f"-m {protocol}")
                if self.sport is not None:
                    args.append(f"--sport {self.sport}")
                if self.dport is not None:
                    args.append(f"--dport {self.dport}")
                if self.icmp_type is not None:
                    args.append(f"-m icmp --icmp-type {self.icmp_type}")
                if self.tcp_flags is not None:
                    args.append(f"--tcp-flags {self.tcp_flags.upper()} {self.tcp_flags.upper()}")
                rules.append(" ".join(filter(None, [iif, peer, *args])))
        return rules


@dataclass(frozen=True)
class Rule:
    """One rule in one of a fault's chains: `hook` is "input" (packets arriving) or "output" (leaving)."""

    hook: str
    match: Match
    action: str

    def __post_init__(self) -> None:
        choice("hook", self.hook, HOOKS)
        choice("action", self.action, ACTIONS)
        if self.action == "tcp-reset" and self.match.protocol != "tcp":
            raise ValueError(f"reject_with 'tcp-reset' needs protocol 'tcp'; got protocol {self.match.protocol!r}")

    def nft(self) -> str:
        action = _NFT_REJECT.get(self.action, self.action)
        return f"{self.match.nft(self.hook)} {action}".strip()

    def iptables(self, chain: str) -> list[str]:
        target = {"drop": "DROP", "accept": "RETURN"}.get(self.action, f"REJECT --reject-with {self.action}")
        return [" ".join(filter(None, ["-A", chain, match, "-j", target])) for match in self.match.iptables(self.hook)]


@dataclass(frozen=True)
class Ruleset:
    """What one fault puts in force in one host: IPv4 `rules` in input/output chains the fault owns, and
    with `arp` every ARP packet in and out dropped as well (IPv4 and ARP is all the test network carries)."""

    name: str
    rules: tuple[Rule, ...]
    arp: bool = False

    def hooks(self) -> list[str]:
        return [hook for hook in HOOKS if any(rule.hook == hook for rule in self.rules)]

    def families(self) -> list[str]:
        """The nft families of this ruleset's tables."""
        return ["ip", "arp"] if self.arp else ["ip"]

    def chain(self, hook: str) -> str:
        """The iptables/arptables chain of `hook`."""
        return f"{self.name}_{_XT_SUFFIX[hook]}"


def nft_apply(ruleset: Ruleset) -> str:
    """The `nft -f -` script that creates the fault's table(s); one transaction."""
    lines = [f"table ip {ruleset.name} {{"]
    for hook in ruleset.hooks():
        lines += [f"\tchain {hook} {{", f"\t\ttype filter hook {hook} priority filter; policy accept;"]
        lines += [f"\t\t{rule.nft()}" for rule in ruleset.rules if rule.hook == hook]
        lines.append("\t}")
    lines.append("}")
    if ruleset.arp:
        lines.append(f"table arp {ruleset.name} {{")
        for hook in HOOKS:
            lines += [f"\tchain {hook} {{", f"\t\ttype filter hook {hook} priority filter; policy accept;",
                      "\t\tdrop", "\t}"]
        lines.append("}")
    return "\n".join(lines) + "\n"


def nft_heal(ruleset: Ruleset) -> str:
    """The `nft -f -` script that removes the fault's table(s): adding a table that exists is a no-op, so
    add-then-delete succeeds whether or not the table is still there, in one transaction."""
    return "".join(f"add table {family} {ruleset.name}\ndelete table {family} {ruleset.name}\n"
                   for family in ruleset.families())


def _xt_hooks(ruleset: Ruleset, family: str) -> list[str]:
    return ruleset.hooks() if family == "ip" else list(HOOKS)


def xtables_apply(ruleset: Ruleset, family: str) -> str:
    """The `iptables-restore --noflush` (family "ip") or `arptables-restore --noflush` ("arp") input that
    creates the fault's chains and jumps to them first thing from INPUT/OUTPUT."""
    lines = ["*filter"]
    for hook in _xt_hooks(ruleset, family):
        chain = ruleset.chain(hook)
        lines.append(f":{chain} - [0:0]")
        if family == "ip":
            lines += [line for rule in ruleset.rules if rule.hook == hook for line in rule.iptables(chain)]
        else:
            lines.append(f"-A {chain} -j DROP")
        lines.append(f"-I {_XT_HOOK[hook]} 1 -j {chain}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class XtablesState:
    """Which of a fault's chains exist in a host's iptables (or arptables) filter table, and the jumps to
    them from the built-in chains (once per jump rule)."""

    chains: tuple[str, ...]
    jumps: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, save: str, ruleset: Ruleset) -> XtablesState:
        """From iptables-save / arptables-save output."""
        ours = {ruleset.chain(hook) for hook in HOOKS}
        chains, jumps = [], []
        for line in save.splitlines():
            words = line.split()
            if line.startswith(":") and words[0][1:] in ours:
                chains.append(words[0][1:])
            elif len(words) == 4 and words[0] == "-A" and words[2] == "-j" and words[3] in ours:
                jumps.append((words[1], words[3]))
        return cls(tuple(chains), tuple(jumps))

    @property
    def empty(self) -> bool:
        return not self.chains and not self.jumps

    @classmethod
    def applied(cls, ruleset: Ruleset, family: str) -> XtablesState:
        """The state `xtables_apply` leaves."""
        hooks = _xt_hooks(ruleset, family)
        return cls(tuple(ruleset.chain(h) for h in hooks), tuple((_XT_HOOK[h], ruleset.chain(h)) for h in hooks))


def xtables_heal(state: XtablesState, family: str) -> tuple[list[str], str | None]:
    """The command (and its stdin) that removes the jumps and chains of `state`.

    iptables: one restore transaction. arptables: one command per step in one shell, since arptables-restore
    1.8.9 with --noflush cannot delete (it does not load the existing chains).
    """
    steps = [["-D", builtin, "-j", chain] for builtin, chain in state.jumps]
    for chain in state.chains:
        steps += [["-F", chain], ["-X", chain]]
    tool, restore, _ = XTABLES[family]
    if family == "ip":
        return list(restore), "*filter\n" + "".join(" ".join(step) + "\n" for step in steps) + "COMMIT\n"
    return ["sh", "-c", " && ".join(shlex.join([tool, *step]) for step in steps)], None
