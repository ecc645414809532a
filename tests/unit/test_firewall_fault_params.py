"""Firewall faults without Docker: parameter validation, the rules and scripts they generate, and how apply
and heal drive a host (a fake host that records commands and answers like nft / iptables would)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

import pytest

from faults import Drop, FirewallError, Partition, PowerLoss, Reject
from faults.firewall import detect_backend
from harness.backends.base import Host
from harness.records import CompletedRun
from harness.topology import HostSpec

Answer = tuple[int, str, str]
OK: Answer = (0, "", "")


class FakeHost(Host):
    """A Host whose `run` records each command and answers through `respond` (default: success)."""

    def __init__(self, name: str, addr: str, respond: Callable[[list[str], str | None], Answer] | None = None,
                 tools: str = "/usr/sbin/nft\n/usr/sbin/iptables-restore\n") -> None:
        spec = HostSpec(name, int(addr.rsplit(".", 1)[1]), (), ())
        super().__init__(spec, addr, channel=None, driver=None)  # type: ignore[arg-type]
        self.commands: list[tuple[list[str], str | None]] = []
        self.respond = respond or (lambda cmd, input: OK)
        self.tools = tools
        # nft's view of the `filter` tables iptables-nft makes: family -> `nft -j list table` items.
        self.filter_tables: dict[str, list[dict]] = {}
        self.filter_commands: list[list[str]] = []

    def __repr__(self) -> str:
        return f"<FakeHost {self.name} {self.addr}>"

    def run(self, cmd: Sequence[str], timeout: float | None = None, input: str | None = None,
            check: bool = False, *, background: bool = False) -> CompletedRun:
        cmd = list(cmd)
        if cmd[:2] == ["sh", "-c"] and "command -v" in cmd[2]:
            code, out, err = 0, self.tools, ""
        elif cmd[0] == "nft" and cmd[-1] == "filter":
            code, out, err = self._filter_table(cmd)
        else:
            self.commands.append((cmd, input))
            code, out, err = self.respond(cmd, input)
        run = CompletedRun(cmd, code, None, out, err)
        return run.check() if check else run

    def _filter_table(self, cmd: list[str]) -> Answer:
        """`nft -j list table FAMILY filter` and `nft delete table FAMILY filter`."""
        self.filter_commands.append(cmd)
        family = cmd[-2]
        if family not in self.filter_tables:
            return 1, "", f"Error: No such file or directory\nlist table {family} filter\n"
        if cmd[1] == "delete":
            del self.filter_tables[family]
            return OK
        return 0, json.dumps({"nftables": [{"metainfo": {}}, *self.filter_tables[family]]}), ""


@pytest.fixture
def client() -> FakeHost:
    return FakeHost("client", "10.9.0.10")


@pytest.fixture
def server() -> FakeHost:
    return FakeHost("server", "10.9.0.20")


def fail_heal(stderr: str) -> Callable[[list[str], str | None], Answer]:
    """Answers that fail the nft heal script (it deletes the table) with `stderr`, and succeed otherwise."""
    return lambda cmd, input: (1, "", stderr + "\n") if "delete" in (input or "") else OK


def applied_script(fault) -> str:
    return fault.parts[0].applied[0]["input"]


def table_body(script: str) -> str:
    """The script without the table's random name."""
    return re.sub(r"netfault_[0-9a-f]{8}", "NAME", script)


# Parameter validation: in the constructor, before anything runs


@pytest.mark.parametrize(("make", "error", "words"), [
    (lambda h: Reject(h, "icmp-unreachable"), ValueError, ["reject_with", "icmp-host-unreachable", "tcp-reset"]),
    (lambda h: Drop(h, dport=0), ValueError, ["dport", "1..65535", "0"]),
    (lambda h: Drop(h, sport=65536), ValueError, ["sport", "1..65535"]),
    (lambda h: Drop(h, dport="80"), ValueError, ["dport", "'80'"]),
    (lambda h: Drop(h, dport=True), ValueError, ["dport"]),
    (lambda h: Drop(h, direction="inbound"), ValueError, ["direction", "in, out, both", "'inbound'"]),
    (lambda h: Drop(h, protocol="sctp"), ValueError, ["protocol", "tcp, udp, icmp, all", "'sctp'"]),
    (lambda h: Drop(h, protocol="icmp", dport=80), ValueError, ["dport/sport", "tcp, udp or all"]),
    (lambda h: Reject(h, "tcp-reset", protocol="udp"), ValueError, ["tcp-reset", "protocol 'tcp'", "'udp'"]),
    (lambda h: Reject(h, "tcp-reset", protocol="all"), ValueError, ["tcp-reset", "protocol 'tcp'"]),
    (lambda h: Drop(h, peer="10.0.0.256"), ValueError, ["peer", "Host or an IPv4 address"]),
    (lambda h: Drop(h, peer="10.0.0.0/24"), ValueError, ["peer", "IPv4 address"]),
    (lambda h: Drop(h, peer="server"), ValueError, ["peer", "IPv4 address"]),
    (lambda h: Drop(h, peer=42), TypeError, ["peer", "Host or an IPv4 address", "42"]),
    (lambda h: Drop("server"), TypeError, ["host", "Host"]),
    (lambda h: Drop(h, backend="pf"), ValueError, ["backend", "nft, iptables", "'pf'"]),
    (lambda h: PowerLoss(h, backend="legacy"), ValueError, ["backend", "nft, iptables"]),
    (lambda h: Partition(h, []), ValueError, ["b", "non-empty"]),
    (lambda h: Partition([h], [h]), ValueError, ["disjoint", "server"]),
    (lambda h: Partition([h, h], FakeHost("x", "10.9.0.99")), ValueError, ["distinct", "server is there twice"]),
    (lambda h: Partition(h, ["10.0.0.1"]), TypeError, ["b", "Host"]),
])
def test_bad_parameters_fail_in_the_constructor_naming_parameter_and_allowed_values(server, make, error, words):
    with pytest.raises(error) as raised:
        make(server)
    for word in words:
        assert word in str(raised.value), f"{word!r} not in {raised.value}"
    assert server.commands == [], "nothing ran"


def test_peer_as_host_or_address(server, client):
    assert Drop(server, peer=client).match.peers == ("10.9.0.10",)
    assert Drop(server, peer="10.9.0.10").match.peers == ("10.9.0.10",)
    assert Drop(server).match.peers == ()


def test_every_fault_instance_owns_a_different_name(server):
    names = {Drop(server).name for _ in range(50)}
    assert len(names) == 50
    assert all(re.fullmatch(r"netfault_[0-9a-f]{8}", name) for name in names)


# Generated rules


def test_drop_nft_script(server, client):
    fault = Drop(server, protocol="tcp", dport=6666, sport=40000, peer=client).apply()
    assert server.commands[0][0] == ["nft", "-f", "-"]
    assert table_body(applied_script(fault)) == (
        "table ip NAME {\n"
        "\tchain input {\n"
        "\t\ttype filter hook input priority filter; policy accept;\n"
        "\t\tip saddr 10.9.0.10 tcp dport 6666 tcp sport 40000 drop\n"
        "\t}\n"
        "}\n")


def test_drop_both_directions_all_protocols_with_a_port(server):
    fault = Drop(server, direction="both", dport=53, backend="iptables").apply()
    assert server.commands[0][0] == ["iptables-restore", "--noflush"]
    assert table_body(applied_script(fault)) == (
        "*filter\n"
        ":NAME_in - [0:0]\n"
        "-A NAME_in -p tcp -m tcp --dport 53 -j DROP\n"
        "-A NAME_in -p udp -m udp --dport 53 -j DROP\n"
        "-I INPUT 1 -j NAME_in\n"
        ":NAME_out - [0:0]\n"
        "-A NAME_out -p tcp -m tcp --dport 53 -j DROP\n"
        "-A NAME_out -p udp -m udp --dport 53 -j DROP\n"
        "-I OUTPUT 1 -j NAME_out\n"
        "COMMIT\n")


@pytest.mark.parametrize(("reject_with", "nft"), [
    ("icmp-host-unreachable", "reject with icmp type host-unreachable"),
    ("icmp-net-unreachable", "reject with icmp type net-unreachable"),
    ("icmp-port-unreachable", "reject with icmp type port-unreachable"),
    ("icmp-admin-prohibited", "reject with icmp type admin-prohibited"),
    ("icmp-host-prohibited", "reject with icmp type host-prohibited"),
    ("icmp-net-prohibited", "reject with icmp type net-prohibited"),
    ("tcp-reset", "reject with tcp reset"),
])
def test_each_reject_type(server, reject_with, nft):
    with_nft = Reject(server, reject_with, protocol="tcp", dport=6666).apply()
    with_iptables = Reject(server, reject_with, protocol="tcp", dport=6666, backend="iptables").apply()
    assert f"\t\ttcp dport 6666 {nft}\n" in applied_script(with_nft)
    assert (f"-A {with_iptables.name}_in -p tcp -m tcp --dport 6666 -j REJECT --reject-with {reject_with}\n"
            in applied_script(with_iptables))


def test_tcp_reset_defaults_to_tcp_and_other_rejects_to_all(server):
    assert Reject(server, "tcp-reset").match.protocol == "tcp"
    assert Reject(server, "icmp-host-unreachable").match.protocol == "all"
    assert Reject(server).action == "icmp-port-unreachable"


def test_reject_both_ways_lets_its_own_answers_pass(server, client):
    fault = Reject(server, "icmp-host-unreachable", direction="both", peer=client).apply()
    assert table_body(applied_script(fault)) == (
        "table ip NAME {\n"
        "\tchain input {\n"
        "\t\ttype filter hook input priority filter; policy accept;\n"
        '\t\tiifname "lo" icmp type destination-unreachable accept\n'
        "\t\tip saddr 10.9.0.10 reject with icmp type host-unreachable\n"
        "\t}\n"
        "\tchain output {\n"
        "\t\ttype filter hook output priority filter; policy accept;\n"
        "\t\ticmp type destination-unreachable accept\n"
        "\t\tip daddr 10.9.0.10 reject with icmp type host-unreachable\n"
        "\t}\n"
        "}\n")
    resets = Reject(server, "tcp-reset", direction="both", peer=client, backend="iptables").apply()
    lines = table_body(applied_script(resets)).splitlines()
    assert lines[1:3] + lines[5:7] == [
        ":NAME_in - [0:0]", "-A NAME_in -i lo -p tcp -m tcp --tcp-flags RST RST -j RETURN",
        ":NAME_out - [0:0]", "-A NAME_out -p tcp -m tcp --tcp-flags RST RST -j RETURN"]


def test_a_reject_that_cannot_match_its_answers_needs_no_exemption(server):
    fault = Reject(server, "icmp-port-unreachable", direction="both", protocol="tcp", dport=80)
    assert [rule.action for rule in fault.parts[0].ruleset.rules] == ["icmp-port-unreachable"] * 2


def test_partition_two_way_drops_in_and_out_in_every_host_of_both_groups(server, client):
    third = FakeHost("third", "10.9.0.30")
    fault = Partition([client, third], server).apply()
    scripts = {part.host.name: table_body(part.applied[0]["input"]) for part in fault.parts}
    assert scripts["server"] == (
        "table ip NAME {\n"
        "\tchain input {\n"
        "\t\ttype filter hook input priority filter; policy accept;\n"
        "\t\tip saddr { 10.9.0.10, 10.9.0.30 } drop\n"
        "\t}\n"
        "\tchain output {\n"
        "\t\ttype filter hook output priority filter; policy accept;\n"
        "\t\tip daddr { 10.9.0.10, 10.9.0.30 } drop\n"
        "\t}\n"
        "}\n")
    assert scripts["client"] == scripts["third"] == scripts["server"].replace(
        "{ 10.9.0.10, 10.9.0.30 }", "10.9.0.20")
    assert len({part.ruleset.name for part in fault.parts}) == 1
    assert "client,third <-/-> server" in fault.describe()


def test_partition_one_way(server, client):
    fault = Partition(client, server, one_way=True)
    rules = {part.host.name: [(r.hook, r.match.peers) for r in part.ruleset.rules] for part in fault.parts}
    assert rules == {"client": [("output", ("10.9.0.20",))], "server": [("input", ("10.9.0.10",))]}
    arrival = Partition(client, server, one_way=True, on_arrival=True)
    assert [(part.host.name, [r.hook for r in part.ruleset.rules]) for part in arrival.parts] == [("server", ["input"])]
    assert "client -/-> server (server still reaches client)" in fault.describe()


def test_power_loss_drops_ipv4_and_arp_both_ways(server):
    fault = PowerLoss(server).apply()
    script = table_body(applied_script(fault))
    assert "table ip NAME {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n" \
           "\t\tdrop\n" in script
    assert "table arp NAME {\n" in script
    assert script.count("\t\tdrop\n") == 4
    with_iptables = PowerLoss(server, backend="iptables").apply()
    assert [cmd for cmd, _ in server.commands[1:]] == [["iptables-restore", "--noflush"],
                                                      ["arptables-restore", "--noflush"]]
    assert table_body(with_iptables.parts[0].applied[1]["input"]) == (
        "*filter\n:NAME_in - [0:0]\n-A NAME_in -j DROP\n-I INPUT 1 -j NAME_in\n"
        ":NAME_out - [0:0]\n-A NAME_out -j DROP\n-I OUTPUT 1 -j NAME_out\nCOMMIT\n")


# Apply and heal against a host


def test_heal_removes_only_the_faults_own_table_in_one_command(server):
    fault = Drop(server, dport=6666)
    fault.heal()
    assert server.commands == [] and fault.healed_at is None, "heal before apply: nothing to undo"
    fault.apply()
    fault.heal()
    fault.heal()
    assert server.commands[1:] == [(["nft", "-f", "-"], f"add table ip {fault.name}\ndelete table ip {fault.name}\n")]
    assert fault.healed_at is not None


def test_heal_of_iptables_rules_is_one_restore_transaction(server):
    fault = Drop(server, direction="both", backend="iptables").apply()
    fault.heal()
    n = fault.name
    assert server.commands[1] == (["iptables-restore", "--noflush"], (
        f"*filter\n-D INPUT -j {n}_in\n-D OUTPUT -j {n}_out\n"
        f"-F {n}_in\n-X {n}_in\n-F {n}_out\n-X {n}_out\nCOMMIT\n"))


def test_heal_of_arptables_rules_is_one_command_per_step(server):
    """arptables-restore 1.8.9 cannot delete with --noflush: each step is an arptables command."""
    fault = PowerLoss(server, backend="iptables").apply()
    fault.heal()
    n = fault.name
    assert [cmd[0] for cmd, _ in server.commands] == ["iptables-restore", "arptables-restore", "iptables-restore", "sh"]
    assert server.commands[3][0] == ["sh", "-c", " && ".join([
        f"arptables -D INPUT -j {n}_in", f"arptables -D OUTPUT -j {n}_out",
        f"arptables -F {n}_in", f"arptables -X {n}_in", f"arptables -F {n}_out", f"arptables -X {n}_out"])]


def test_heal_of_iptables_rules_someone_else_partly_removed(server):
    """The precise removal fails; iptables-save shows what is left, and only that is removed."""
    fault = Drop(server, direction="both", backend="iptables")
    n = fault.name
    save = (f"*filter\n:INPUT ACCEPT [0:0]\n:{n}_out - [0:0]\n:other - [0:0]\n-A OUTPUT -j {n}_out\n"
            "-A INPUT -j other\nCOMMIT\n")

    def respond(cmd: list[str], input: str | None) -> Answer:
        if f"-D INPUT -j {n}_in" in (input or ""):
            return 1, "", "iptables-restore: line 2 failed: Bad rule (does a matching rule exist in that chain?).\n"
        return (0, save, "") if cmd[0] == "iptables-save" else OK

    server.respond = respond
    fault.apply()
    fault.heal()
    assert server.commands[2:] == [
        (["iptables-save", "-t", "filter"], None),
        (["iptables-restore", "--noflush"], f"*filter\n-D OUTPUT -j {n}_out\n-F {n}_out\n-X {n}_out\nCOMMIT\n")]


def test_heal_of_iptables_rules_already_gone_succeeds(server):
    fault = Drop(server, backend="iptables")
    server.respond = lambda cmd, input: (
        (1, "", "iptables-restore: line 2 failed: No chain/target/match by that name.\n") if "-D INPUT" in (input or "")
        else (0, "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n", "") if cmd[0] == "iptables-save" else OK)
    fault.apply()
    fault.heal()
    assert [cmd[0] for cmd, _ in server.commands] == ["iptables-restore", "iptables-restore", "iptables-save"]


def test_heal_failure_raises_with_host_command_and_output(server):
    fault = Drop(server, dport=6666).apply()
    server.respond = lambda cmd, input: (1, "", "netlink: Error: Could not process rule: Operation not permitted\n")
    with pytest.raises(FirewallError) as raised:
        fault.heal()
    message = str(raised.value)
    assert f"removing nft table {fault.name} on host server failed" in message
    assert "Operation not permitted" in message
    server.respond = lambda cmd, input: OK
    fault.heal()
    assert server.commands[-1][1] == f"add table ip {fault.name}\ndelete table ip {fault.name}\n", "heal can be retried"


def test_multi_host_heal_heals_every_host_then_raises_all_errors():
    failing = FakeHost("a", "10.9.0.1", fail_heal("boom a"))
    healthy = FakeHost("b", "10.9.0.2")
    also_failing = FakeHost("c", "10.9.0.3", fail_heal("boom c"))
    fault = Partition(failing, [healthy, also_failing]).apply()
    with pytest.raises(FirewallError) as raised:
        fault.heal()
    assert f"healing {fault.describe()} (one per host) failed 2 times" in str(raised.value)
    assert "boom a" in str(raised.value) and "boom c" in str(raised.value)
    assert healthy.commands[-1][1] == f"add table ip {fault.name}\ndelete table ip {fault.name}\n"


def test_one_failing_host_of_several_raises_its_own_error():
    failing = FakeHost("a", "10.9.0.1", fail_heal("boom"))
    healthy = FakeHost("b", "10.9.0.2")
    fault = Partition(failing, healthy).apply()
    with pytest.raises(FirewallError, match="on host a failed"):
        fault.heal()
    assert "delete" in healthy.commands[-1][1]


def test_failed_apply_heals_what_it_may_have_applied():
    healthy = FakeHost("a", "10.9.0.1")
    broken = FakeHost("b", "10.9.0.2",
                      lambda cmd, input: OK if "delete" in (input or "") else (1, "", "Error: syntax\n"))
    fault = Partition(healthy, broken)
    with pytest.raises(FirewallError, match="applying b"):
        fault.apply()
    assert "delete table" in healthy.commands[-1][1] and "delete table" in broken.commands[-1][1]
    assert fault.applied_at is None


def test_apply_twice_applies_once(server):
    fault = Drop(server).apply()
    fault.apply()
    assert len(server.commands) == 1


# Backend detection, describe, record


def test_detection_prefers_nft_then_iptables_and_is_cached():
    both = FakeHost("a", "10.9.0.1")
    assert detect_backend(both) == "nft"
    assert detect_backend(FakeHost("b", "10.9.0.2", tools="/usr/sbin/iptables-restore\n")) == "iptables"
    with pytest.raises(FirewallError, match="neither nft nor iptables-restore"):
        detect_backend(FakeHost("c", "10.9.0.3", tools=""))
    both.tools = ""
    assert detect_backend(both) == "nft"


def test_describe_names_host_backend_direction_match_and_action(server, client):
    fault = Reject(server, "icmp-admin-prohibited", direction="both", protocol="udp", dport=53, peer=client)
    assert fault.describe() == (f"Reject on server (auto, {fault.name}): in+out udp dport 53 peer 10.9.0.10 "
                                "-> reject with icmp-admin-prohibited")
    fault.apply()
    assert fault.describe().startswith(f"Reject on server (nft, table {fault.name}): ")
    forced = Drop(server, backend="iptables")
    assert forced.describe() == f"Drop on server (iptables, chains {forced.name}_*): in all IPv4 -> drop"
    assert PowerLoss(server).describe().endswith(": all IPv4 and ARP dropped in and out")


def test_record_includes_what_was_applied(server):
    fault = Drop(server, dport=6666).apply()
    fault.heal()
    record = fault.record()
    assert record["fault"] == "Drop" and record["describe"] == fault.describe()
    assert record["applied_at"] <= record["healed_at"]
    [host] = record["hosts"]
    assert host["host"] == "server" and host["backend"] == "nft" and host["name"] == fault.name
    assert host["rules"] == ["input tcp+udp dport 6666 drop"]
    assert host["applied"] == [{"cmd": ["nft", "-f", "-"], "input": server.commands[0][1]}]


# The filter tables iptables-nft creates: removed by the last iptables fault to heal, if it found none


def builtin(family: str, hook: str) -> dict:
    return {"chain": {"family": family, "table": "filter", "name": hook.upper(), "type": "filter", "hook": hook,
                      "prio": 0, "policy": "accept"}}


FILTER_TABLE = [{"table": {"family": "ip", "name": "filter"}}, builtin("ip", "input")]


def test_the_filter_table_iptables_created_goes_with_the_last_iptables_fault(server):
    first, second = Drop(server, backend="iptables"), Drop(server, dport=80, backend="iptables")
    first.apply()
    server.filter_tables["ip"] = list(FILTER_TABLE)  # what iptables-restore made
    second.apply()
    first.heal()
    assert "ip" in server.filter_tables, "the second fault still uses it"
    second.heal()
    assert server.filter_tables == {}
    assert server.filter_commands[-1] == ["nft", "delete", "table", "ip", "filter"]


def test_a_filter_table_that_was_there_before_stays(server):
    server.filter_tables["ip"] = list(FILTER_TABLE)
    Drop(server, backend="iptables").apply().heal()
    assert server.filter_tables == {"ip": FILTER_TABLE}


@pytest.mark.parametrize("extra", [
    {"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "expr": []}},
    {"chain": {"family": "ip", "table": "filter", "name": "mine"}},
    {**builtin("ip", "output"), "chain": {**builtin("ip", "output")["chain"], "policy": "drop"}},
], ids=["a rule", "a chain", "a drop policy"])
def test_a_filter_table_someone_else_filled_meanwhile_stays(server, extra):
    fault = Drop(server, backend="iptables").apply()
    server.filter_tables["ip"] = [*FILTER_TABLE, extra]
    fault.heal()
    assert server.filter_tables["ip"][-1] == extra
