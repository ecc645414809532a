"""Firewall faults: Drop and Reject in a host's own network namespace, in a table (nft) or chains (iptables)
the fault owns, so that healing removes exactly what the fault added and nothing else.

    with Drop(server, dport=6666):              # the server's kernel never sees SYNs to 6666
        ...
    with Reject(server, "icmp-host-unreachable", dport=6666, backend="iptables"):
        ...

Commands run in the host through its agent (`host.run`); nft scripts go in on stdin in one transaction, and
`nft -f` returns after the kernel committed it, so the rules are in force when `apply` returns.
"""

from __future__ import annotations

import json
import secrets
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from harness.backends.base import Host
from harness.errors import NetfaultError
from harness.records import CommandFailed, CompletedRun

from .base import Fault, run_all
from .rules import (BACKENDS, DIRECTIONS, REJECT_TYPES, XTABLES, Match, Rule, Ruleset, XtablesState, choice,
                    ipv4, nft_apply, nft_heal, xtables_apply, xtables_heal)

# nft and iptables take milliseconds; a loaded machine can stretch a process start to seconds.
RUN_TIMEOUT = 30.0
_HOOKS = {"in": ("input",), "out": ("output",), "both": ("input", "output")}
# Where a Reject's answers pass: out of any interface, in only from the host itself.
_IIF = {"input": "lo", "output": None}
_DETECTED: weakref.WeakKeyDictionary[Host, str] = weakref.WeakKeyDictionary()


class FirewallError(NetfaultError):
    """Rules could not be put in force or removed; the message names the host, the command and its output."""


def new_name() -> str:
    """A name no other fault uses: the nft table, and the prefix of the iptables chains."""
    return f"netfault_{secrets.token_hex(4)}"


def host_arg(parameter: str, value: object) -> Host:
    if not isinstance(value, Host):
        raise TypeError(f"{parameter} must be a Host (e.g. pair.server); got {value!r}")
    return value


def peer_addrs(parameter: str, value: object) -> tuple[str, ...]:
    """The address of a peer given as a Host or an IPv4 address string; () for None (any peer)."""
    if value is None:
        return ()
    if isinstance(value, Host):
        return (value.addr,)
    if isinstance(value, str):
        return (ipv4(parameter, value),)
    raise TypeError(f"{parameter} must be a Host or an IPv4 address like '10.1.2.3'; got {value!r}")


def detect_backend(host: Host) -> str:
    """"nft" if the host has nft, else "iptables" if it has iptables-restore (one command, then cached)."""
    if host not in _DETECTED:
        found = _run(host, ["sh", "-c", "for t in nft iptables-restore; do command -v $t || :; done"],
                     "looking for nft and iptables").stdout.split()
        tools = {path.rsplit("/", 1)[-1] for path in found}
        if "nft" in tools:
            _DETECTED[host] = "nft"
        elif "iptables-restore" in tools:
            _DETECTED[host] = "iptables"
        else:
            raise FirewallError(f"host {host.name} has neither nft nor iptables-restore on its PATH")
    return _DETECTED[host]


def _run(host: Host, cmd: list[str], what: str, input: str | None = None) -> CompletedRun:
    try:
        return host.run(cmd, input=input, timeout=RUN_TIMEOUT, check=True)
    except CommandFailed as exc:
        raise FirewallError(f"{what} on host {host.name} failed: {exc}") from None


class IptablesFilterTables:
    """iptables-nft and arptables-nft create their `filter` table (with the built-in chains) on first use and
    never remove it. Per host and family: how many netfault iptables faults are in force, and whether the first
    of them found no table; the last one to heal then deletes that table if nothing else is in it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users: dict[str, int] = {}
        self.created: dict[str, bool] = {}

    def acquire(self, host: Host, family: str) -> None:
        with self.lock:
            if not self.users.get(family):
                self.created[family] = _has_nft(host) and not _filter_table(host, family)
            self.users[family] = self.users.get(family, 0) + 1

    def release(self, host: Host, family: str) -> None:
        with self.lock:
            self.users[family] -= 1
            if self.users[family] or not self.created.pop(family, False):
                return
            listing = _filter_table(host, family)
            chains = [item["chain"] for item in listing if "chain" in item]
            holds_nothing = (not any("rule" in item for item in listing)
                             and all("hook" in chain and chain.get("policy") == "accept" for chain in chains))
            if listing and holds_nothing:
                _run(host, ["nft", "delete", "table", family, "filter"],
                     f"removing the empty {family} filter table the iptables faults created")


_XT_TABLES: weakref.WeakKeyDictionary[Host, IptablesFilterTables] = weakref.WeakKeyDictionary()
_XT_TABLES_LOCK = threading.Lock()


def iptables_filter_tables(host: Host) -> IptablesFilterTables:
    """The host's bookkeeping of iptables-nft's filter tables: `acquire` before adding iptables rules, `release`
    after removing them."""
    with _XT_TABLES_LOCK:
        return _XT_TABLES.setdefault(host, IptablesFilterTables())


def _has_nft(host: Host) -> bool:
    return host.run(["sh", "-c", "command -v nft"], timeout=RUN_TIMEOUT).returncode == 0


def _filter_table(host: Host, family: str) -> list[dict[str, Any]]:
    """The items (table, chains, rules) of nft's `<family> filter` table, from `nft -j`; [] when absent."""
    listed = host.run(["nft", "-j", "list", "table", family, "filter"], timeout=RUN_TIMEOUT)
    if listed.returncode != 0:
        if "No such file or directory" in listed.stderr:
            return []
        raise FirewallError(f"listing the {family} filter table on host {host.name} failed: {listed}")
    return [item for item in json.loads(listed.stdout)["nftables"] if "metainfo" not in item]


class HostRules:
    """One fault's `ruleset` in one host: applied and removed as a unit, with the backend given or detected."""

    def __init__(self, host: Host, ruleset: Ruleset, backend: str | None = None) -> None:
        self.host = host
        self.ruleset = ruleset
        self.backend = None if backend is None else choice("backend", backend, BACKENDS)
        self.applied: list[dict[str, Any]] = []
        self._acquired: list[str] = []
        self._pending = False

    def apply(self) -> None:
        """Put the rules in force (nothing to do when they are already)."""
        if self._pending:
            return
        self.backend = self.backend or detect_backend(self.host)
        self._pending = True
        if self.backend == "nft":
            self._put(["nft", "-f", "-"], nft_apply(self.ruleset))
            return
        for family in self.ruleset.families():
            iptables_filter_tables(self.host).acquire(self.host, family)
            self._acquired.append(family)
            self._put(list(XTABLES[family][1]), xtables_apply(self.ruleset, family))

    def heal(self) -> None:
        """Remove the rules; nothing to do when never applied or healed already; fine when they are gone."""
        if not self._pending:
            return
        if self.backend == "nft":
            _run(self.host, ["nft", "-f", "-"], f"removing nft table {self.ruleset.name}", nft_heal(self.ruleset))
        else:
            for family in self.ruleset.families():
                self._heal_xtables(family)
            while self._acquired:
                iptables_filter_tables(self.host).release(self.host, self._acquired.pop())
        self._pending = False

    def _put(self, cmd: list[str], script: str) -> None:
        _run(self.host, cmd, f"applying {self.describe()}", script)
        self.applied.append({"cmd": cmd, "input": script})

    def _heal_xtables(self, family: str) -> None:
        """Delete the jumps and chains apply made; if that fails, delete what iptables-save still shows."""
        tool, _, save = XTABLES[family]
        cmd, script = xtables_heal(XtablesState.applied(self.ruleset, family), family)
        if self.host.run(cmd, input=script, timeout=RUN_TIMEOUT).returncode == 0:
            return
        left = XtablesState.parse(_run(self.host, list(save), f"reading {tool} rules").stdout, self.ruleset)
        if not left.empty:
            cmd, script = xtables_heal(left, family)
            _run(self.host, cmd, f"removing {tool} chains {', '.join(left.chains)}", script)

    @property
    def backend_name(self) -> str:
        return self.backend or "auto"

    def describe(self) -> str:
        objects = (f"table {self.ruleset.name}" if self.backend == "nft"
                   else f"chains {self.ruleset.name}_*" if self.backend else self.ruleset.name)
        return f"{self.host.name} ({self.backend_name}, {objects})"

    def record(self) -> dict[str, Any]:
        return {"host": self.host.name, "backend": self.backend_name, "name": self.ruleset.name,
                "rules": [f"{rule.hook} {rule.match.describe(rule.hook)} {rule.action}" for rule in self.ruleset.rules],
                "arp": self.ruleset.arp, "applied": list(self.applied)}


class FirewallFault(Fault):
    """A fault made of rules in one or more hosts, each in objects named `name`.

    Healing heals every host even when one fails, then raises (one error as is, several in one FirewallError).
    """

    def __init__(self, parts: Sequence[HostRules]) -> None:
        self.parts = list(parts)

    @property
    def name(self) -> str:
        """The nft table name (iptables: the chains' prefix), the same in every host of this fault."""
        return self.parts[0].ruleset.name

    @property
    def backend(self) -> str:
        """nft or iptables (per host when they differ); "auto" before a detecting apply."""
        names = dict.fromkeys(part.backend_name for part in self.parts)
        return "/".join(names)

    def _apply(self) -> None:
        for part in self.parts:
            part.apply()

    def _heal(self) -> None:
        run_all([part.heal for part in self.parts], FirewallError, f"healing {self.describe()} (one per host)")

    def record(self) -> dict[str, Any]:
        return {**super().record(), "hosts": [part.record() for part in self.parts]}


def _rules(direction: str, match: Match, action: str) -> tuple[Rule, ...]:
    """`action` on packets matching `match` in the chains of `direction`.

    A Reject first lets its own answers pass each of its chains (nothing answers an ICMP error or a RST, so
    rejecting one only drops it): the answer to a packet rejected on input leaves through output; the answer
    to a packet rejected on output comes back to the host itself (through output, then in on lo, the RST with
    the peer's address as its source), where the fault's rules would otherwise swallow it.
    """
    hooks = _HOOKS[direction]
    exempt: list[Rule] = []
    if action == "tcp-reset":
        exempt = [Rule(hook, Match("tcp", tcp_flags="rst", iif=_IIF[hook]), "accept") for hook in hooks]
    elif action in REJECT_TYPES and match.protocol in ("all", "icmp") and not match.has_ports:
        exempt = [Rule(hook, Match("icmp", icmp_type="destination-unreachable", iif=_IIF[hook]), "accept")
                  for hook in hooks]
    return (*exempt, *(Rule(hook, match, action) for hook in hooks))


class _PacketFilter(FirewallFault):
    """`action` ("drop" or a reject type) on the packets of one host that match the parameters."""

    def __init__(self, host: Host, action: str, direction: str, protocol: str, dport: int | None,
                 sport: int | None, peer: Host | str | None, backend: str | None) -> None:
        self.host = host_arg("host", host)
        self.action = action
        self.direction = choice("direction", direction, DIRECTIONS)
        self.match = Match(protocol, dport=dport, sport=sport, peers=peer_addrs("peer", peer))
        super().__init__([HostRules(host, Ruleset(new_name(), _rules(self.direction, self.match, action)), backend)])

    def describe(self) -> str:
        direction = {"in": "in", "out": "out", "both": "in+out"}[self.direction]
        action = self.action if self.action == "drop" else f"reject with {self.action}"
        return f"{type(self).__name__} on {self.parts[0].describe()}: {direction} {self.match.describe()} -> {action}"


class Drop(_PacketFilter):
    """Drop matching packets in `host`'s namespace: the sender sees silence (no RST, no ICMP).

    direction: "in" (packets arriving at `host`), "out" (leaving it) or "both". protocol: tcp, udp, icmp or
    all; ports need tcp or udp ("all" with a port means tcp and udp). dport/sport are the packet's own
    header fields. peer: the far end, a Host or an IPv4 address (None: anyone). backend: "nft" or "iptables"
    (None: nft if the host has it). A drop on "out" makes the host's own UDP sendto() fail with EPERM (that
    is how netfilter reports a local drop); TCP ignores it and retransmits as usual.
    """

    def __init__(self, host: Host, *, direction: str = "in", protocol: str = "all", dport: int | None = None,
                 sport: int | None = None, peer: Host | str | None = None, backend: str | None = None) -> None:
        super().__init__(host, "drop", direction, protocol, dport, sport, peer, backend)


class Reject(_PacketFilter):
    """Reject matching packets in `host`'s namespace: the sender gets `reject_with`'s answer.

    reject_with: icmp-host-unreachable, icmp-net-unreachable, icmp-port-unreachable, icmp-admin-prohibited,
    icmp-host-prohibited, icmp-net-prohibited or tcp-reset. protocol defaults to "all", or "tcp" for
    tcp-reset (which needs tcp). Other parameters as for Drop. The errno each answer gives a TCP connect()
    is measured in tests/faults/test_faults_firewall.py.
    """

    def __init__(self, host: Host, reject_with: str = "icmp-port-unreachable", *, direction: str = "in",
                 protocol: str | None = None, dport: int | None = None, sport: int | None = None,
                 peer: Host | str | None = None, backend: str | None = None) -> None:
        choice("reject_with", reject_with, REJECT_TYPES)
        if protocol is None:
            protocol = "tcp" if reject_with == "tcp-reset" else "all"
        elif reject_with == "tcp-reset" and protocol != "tcp":
            raise ValueError(f"reject_with 'tcp-reset' needs protocol 'tcp' (or None); got protocol {protocol!r}")
        super().__init__(host, reject_with, direction, protocol, dport, sport, peer, backend)
